"""Ray actors as emulated instances (KV over sockets), by the local backend's own tests: a
live role switch under load loses no request (``tests/serve/test_role_switch.py``)."""

from __future__ import annotations

import pytest
from local_checks import role_switch

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

server = role_switch.server
test_emulated_mode_serves_openai_client = role_switch.test_emulated_mode_serves_openai_client
test_live_switch_under_load_loses_nothing = role_switch.test_live_switch_under_load_loses_nothing
test_admin_switch_rejects_bad_requests = role_switch.test_admin_switch_rejects_bad_requests

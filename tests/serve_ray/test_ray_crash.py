"""A killed instance, here a Ray actor, fails or retries only the requests it held and comes
back in its role: the local backend's own test (``tests/serve/test_crash_and_policy.py``) on
Ray. Its own module, so that no other server holds the cluster's CPUs meanwhile."""

from __future__ import annotations

import pytest
from local_checks import crash_and_policy

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

test_worker_crash_only_hits_its_requests = crash_and_policy.test_worker_crash_only_hits_its_requests

"""User-facing errors.

Every error caused by bad input (unknown model, malformed trace, invalid option) is raised as a
:class:`DopdError` with a one-line message naming the problem. The CLI prints it and exits with
code 2; the HTTP front end maps it to a 4xx response. Anything else is a bug.
"""

from __future__ import annotations


class DopdError(ValueError):
    """Bad input or configuration, described in one line for the user."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`DopdError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise DopdError(message)

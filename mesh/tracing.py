"""W3C trace context: one trace id follows a request across every agent it reaches."""

from __future__ import annotations

import re
from random import getrandbits

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-([0-9a-f]{2})")


def new_traceparent() -> str:
    return f"00-{getrandbits(128):032x}-{getrandbits(64):016x}-01"


def child_traceparent(parent: str | None) -> str:
    """A new span in the parent's trace, or a new trace when there is no valid parent."""
    if parent is None or _TRACEPARENT.fullmatch(parent) is None:
        return new_traceparent()
    return f"{parent[:36]}{getrandbits(64):016x}{parent[52:]}"


def trace_id(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.fullmatch(traceparent or "")
    return match.group(1) if match else None

"""Start-up check of the nats-py internals behind the seam's shortcuts, with public fallbacks.

Two measured shortcuts reach past nats-py's public API (see `outbox` and `inbox`); a third, the
header parser (`headers`), checks itself on sample blocks and warns through `give_up`:

- the outbox appends PUB commands to a connection's outgoing buffer itself
  (`_pending`, `_pending_data_size`, `_max_pending_size`, `_flush_queue`, `_flusher_task`, `stats`);
- the reply inbox swaps its subscription's message queue for one that resolves the waiting request
  at once (`_pending_queue`, `_pending_size`).

They were written against nats-py 2.16 (pinned `<2.17` in pyproject.toml). Each connection the seam
makes, and each reply subscription, is checked for those attributes with the expected types before
a shortcut is used. If one is missing, ONE warning is logged (per process and shortcut) and that
shortcut is switched off for the process: publishes go through `await nc.publish`, replies through
the subscription's ordinary callback. Slower, still correct.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("mesh.nats")

CONNECTION: dict[str, type | tuple[type, ...]] = {
    "_pending": list,
    "_pending_data_size": int,
    "_max_pending_size": int,
    "_flush_queue": asyncio.Queue,
    "_flusher_task": asyncio.Task,
    "stats": dict,
}
"""The `nats.aio.client.Client` attributes `outbox.publish_now` uses, with their types once connected."""

SUBSCRIPTION: dict[str, type | tuple[type, ...]] = {
    "_pending_queue": asyncio.Queue,
    "_pending_size": int,
}
"""The `nats.aio.subscription.Subscription` attributes the reply inbox's handoff uses."""

STATS = ("out_msgs", "out_bytes")


@dataclass
class Shortcuts:
    """Which shortcuts this process may use: None until checked, False once a check failed."""

    outbox: bool | None = None
    handoff: bool | None = None
    warned: set[str] = field(default_factory=set)


state = Shortcuts()


def check_connection(nc: Any) -> bool:
    """True if the outbox may write into `nc`'s buffer; the first failure warns and sticks."""
    if state.outbox is False:
        return False
    missing = _mismatches(nc, CONNECTION)
    if not missing and not all(isinstance(nc.stats.get(key), int) for key in STATS):
        missing.append("stats[out_msgs|out_bytes]")
    if missing:
        give_up("outbox", missing, "messages are published with `await nc.publish` instead")
        state.outbox = False
        return False
    state.outbox = True
    return True


def check_subscription(sub: Any) -> bool:
    """True if the reply inbox may replace `sub`'s message queue; the first failure warns and sticks."""
    if state.handoff is False:
        return False
    missing = _mismatches(sub, SUBSCRIPTION)
    if missing:
        give_up("handoff", missing, "replies go through the subscription's own task instead")
        state.handoff = False
        return False
    state.handoff = True
    return True


def _mismatches(obj: Any, expected: dict[str, type | tuple[type, ...]]) -> list[str]:
    found = []
    for name, kind in expected.items():
        if not hasattr(obj, name):
            found.append(f"{name} (missing)")
        elif not isinstance(getattr(obj, name), kind):
            found.append(f"{name} (a {type(getattr(obj, name)).__name__})")
    return found


def give_up(shortcut: str, missing: list[str], fallback: str) -> None:
    """Log that `shortcut` is off and why, once per process (the header parser's check uses it too)."""
    if shortcut in state.warned:
        return
    state.warned.add(shortcut)
    log.warning(
        "nats.shortcut_disabled",
        shortcut=shortcut,
        nats_py=_nats_version(),
        unexpected=missing,
        fallback=fallback,
    )


def _nats_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nats-py")
    except PackageNotFoundError:
        return "?"

"""Durable messages handed straight to an instance's mailbox, in process, and their outcomes.

Durable delivery (`mesh.delivery`) puts the messages of an instance this worker owns into its
mailbox itself, with no NATS request: their envelopes carry a reply id under `LOCAL_REPLY`, not a
subject, and the mailbox (`mesh.activation`) hands each outcome back through `answer`, to the
callback delivery registered with `expect`.

Order: once one of these messages fails, the instance's later ones must not run before it is
retried, so the mailbox refuses them unrun (`NOT_RUN`), and those it would forward to another
worker (`MOVED_HERE`); delivery then sends them again, in stored order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from mesh.turns import Outcome

LOCAL_REPLY = "@durable."
NOT_RUN = "held back behind an earlier durable message of this instance that did not take effect"
MOVED_HERE = "the instance is owned by another worker; the durable message did not run here"

_ids = itertools.count(1)
_waiting: dict[str, Callable[[Outcome], None]] = {}


def is_local(reply: str | None) -> bool:
    return reply is not None and reply.startswith(LOCAL_REPLY)


def expect(callback: Callable[[Outcome], None]) -> str:
    """A new reply id whose outcome goes to `callback` (once)."""
    reply = f"{LOCAL_REPLY}{next(_ids)}"
    _waiting[reply] = callback
    return reply


def forget(reply: str) -> None:
    _waiting.pop(reply, None)


def answer(outcome: Outcome) -> None:
    """Hand a turn's outcome back to whoever handed its message over (nothing if it gave up)."""
    callback = _waiting.pop(outcome.envelope.reply or "", None)
    if callback is not None:
        callback(outcome)

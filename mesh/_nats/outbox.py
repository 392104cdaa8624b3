"""Publishing by writing NATS protocol straight into a connection's outgoing buffer.

nats-py's `publish` is a coroutine that validates the subject, encodes headers through a regex
and a translate per value, builds the command in several copies and may flush: several
microseconds of Python for each message. A turn publishes a few (its state write, its reply, its
flight-recorder events), so the mesh writes those itself. The bytes are the same PUB/HPUB
commands, appended to the same buffer that nats-py's flusher writes (and keeps across a
reconnect), so they go out in order with everything else, usually in one socket write per loop.

`publish_now` takes the shortcut only when nats-py itself would not wait: when the buffer would go
over nats-py's pending limit while connected (nats-py then awaits a flush) or the flusher task is
gone (nats-py then writes inline), it queues nothing and returns False, and the caller awaits
`publish`, which is nats-py's own `publish`. Nothing is reordered: both append to the one buffer.
"""

from __future__ import annotations

import asyncio
import re

from mesh._nats import selfcheck
from mesh._nats.connection import Connection
from mesh._nats.errors import map_errors
from mesh.errors import ConnectionFailed, NameInvalid, PayloadTooLarge, RequestError, Unavailable

_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII without ':' (RFC 7230 token, loosely)
_GOOD_NAMES: set[str] = set()  # header names already checked: a handful, sent on every message
_MAX_GOOD_NAMES = 256


def publish_now(nc: Connection, subject: str, payload: bytes, headers: dict[str, str] | None = None, reply: str = "") -> bool:
    """Queue one message for sending without awaiting anything; False if the caller must await
    `publish` instead (nothing was queued then).

    Raises what `publish` would, as mesh errors: `ConnectionFailed` (closed or draining),
    `PayloadTooLarge` (over `max_payload`), `Unavailable` (reconnecting with a full buffer),
    `NameInvalid` (an empty subject, or one with white space or control characters) and `RequestError` (a header name that
    is not a token, or a value with a line break: refused rather than rewritten, unlike nats-py).
    """
    if nc.is_closed:
        raise ConnectionFailed("the NATS connection is closed")
    if nc.is_draining_pubs:
        raise ConnectionFailed("the NATS connection is draining")
    if len(payload) > nc.max_payload:
        raise PayloadTooLarge(f"a message of {len(payload)} bytes is over NATS max_payload ({nc.max_payload})")
    command = _command(subject, reply, payload, headers)
    if not selfcheck.state.outbox and not selfcheck.check_connection(nc):
        return False
    size = nc._pending_data_size + len(command)
    connected = nc.is_connected
    if connected:
        flusher = nc._flusher_task
        if size > nc._max_pending_size or flusher is None or flusher.done():
            return False  # nats-py would wait for (or do) a flush here: let the caller await it
    elif size > nc._max_pending_size:
        raise Unavailable("NATS is reconnecting and the outgoing buffer is full")
    nc._pending.append(command)
    nc._pending_data_size = size
    stats = nc.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += len(payload)
    if connected:
        flushes = nc._flush_queue
        if flushes is not None and flushes.empty():
            flushes.put_nowait(asyncio.get_running_loop().create_future())  # wake the flusher, as publish does
    return True


async def publish(nc: Connection, subject: str, payload: bytes, headers: dict[str, str] | None = None, reply: str = "") -> None:
    """Publish one message: at once if `publish_now` can, else through nats-py's `publish`, which
    waits for the flusher when the buffer is over its limit (backpressure). Raises as `publish_now`."""
    if publish_now(nc, subject, payload, headers, reply):
        return
    with map_errors(f"publish on {subject[:200]}", timeout=Unavailable):
        await nc.publish(subject, payload, reply=reply, headers=headers)


def _command(subject: str, reply: str, payload: bytes, headers: dict[str, str] | None) -> bytes:
    if reply:
        target = f"{subject} {reply}"
        valid = subject and target.count(" ") == 1 and target.isprintable()
    else:
        target = subject
        valid = subject and " " not in subject and subject.isprintable()
    if not valid:  # white space or a line break would end the subject or inject protocol
        raise NameInvalid(f"not a valid NATS subject: {subject[:200]!r} (reply {reply[:200]!r})")
    if not headers:
        return b"PUB %s %d\r\n%s\r\n" % (target.encode(), len(payload), payload)
    lines = []
    for name, value in headers.items():
        if name not in _GOOD_NAMES:
            if _HEADER_NAME.fullmatch(name) is None:
                raise RequestError(f"header {name[:100]!r} cannot be sent over NATS (not a token)")
            if len(_GOOD_NAMES) >= _MAX_GOOD_NAMES:
                _GOOD_NAMES.clear()
            _GOOD_NAMES.add(name)
        if "\n" in value or "\r" in value:
            raise RequestError(f"header {name[:100]!r} cannot be sent over NATS (a line break in its value)")
        lines.append(f"{name}: {value}\r\n")
    block = b"NATS/1.0\r\n" + "".join(lines).encode() + b"\r\n"
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (target.encode(), len(block), len(block) + len(payload), block, payload)

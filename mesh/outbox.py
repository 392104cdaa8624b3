"""Publishing by writing NATS protocol straight into a connection's outgoing buffer.

nats-py's `publish` is a coroutine that validates the subject, encodes headers through a regex
and a translate per value, builds the command in several copies and may flush: several
microseconds of Python for each message. A turn publishes a few (its state write, its reply, its
flight-recorder events), so the mesh writes those itself. The bytes are the same PUB/HPUB
commands, appended to the same buffer that nats-py's flusher writes (and keeps across a
reconnect), so they go out in order with everything else, usually in one socket write per loop.
"""

from __future__ import annotations

import asyncio
import re

import nats.errors
from nats.aio.client import Client

_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII without ':' (RFC 7230 token, loosely)


def publish_now(nc: Client, subject: str, payload: bytes, headers: dict[str, str] | None = None, reply: str = "") -> None:
    """Queue one message for sending, without awaiting anything.

    Raises what `publish` would: `ConnectionClosedError`, `ConnectionDrainingError`,
    `MaxPayloadError`, `OutboundBufferLimitError` (reconnecting with a full buffer) and
    `BadHeaderError` (a header name that is not a token, or a value with a line break).
    `subject` and `reply` must be valid subjects: the mesh's own, or ones the server delivered.
    """
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise nats.errors.ConnectionDrainingError
    if len(payload) > nc.max_payload:
        raise nats.errors.MaxPayloadError
    command = _command(subject, reply, payload, headers)
    connected = nc.is_connected
    if not connected and nc._pending_data_size + len(command) > nc._max_pending_size:
        raise nats.errors.OutboundBufferLimitError
    nc._pending.append(command)
    nc._pending_data_size += len(command)
    nc.stats["out_msgs"] += 1
    flushes = nc._flush_queue
    if connected and flushes is not None and flushes.empty():
        flushes.put_nowait(asyncio.get_running_loop().create_future())  # wake the flusher, as publish does


def _command(subject: str, reply: str, payload: bytes, headers: dict[str, str] | None) -> bytes:
    target = f"{subject} {reply}".encode() if reply else subject.encode()
    if not headers:
        return b"PUB %s %d\r\n%s\r\n" % (target, len(payload), payload)
    lines = []
    for name, value in headers.items():
        if _HEADER_NAME.fullmatch(name) is None or "\n" in value or "\r" in value:
            raise nats.errors.BadHeaderError(name)
        lines.append(f"{name}: {value}\r\n")
    block = b"NATS/1.0\r\n" + "".join(lines).encode() + b"\r\n"
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (target, len(block), len(block) + len(payload), block, payload)

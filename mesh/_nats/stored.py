"""A JetStream publish through the connection's one reply inbox (`mesh._nats.inbox`).

nats-py's `JetStream.publish` waits for the PubAck with `Client.request`, which makes a future and an
`asyncio.wait_for` timer per message; durable sends are the mesh's most frequent JetStream publish,
so they go through the shared reply inbox instead (a table of futures swept for deadlines), and
the PubAck is parsed here. Errors are mapped as nats-py's would be (`map_error`).
"""

from __future__ import annotations

import nats.js.errors as jse
import orjson

from mesh._nats.connection import Connection
from mesh._nats.errors import map_error
from mesh._nats.inbox import request
from mesh._nats.streams import Ack
from mesh.errors import MeshTimeout, Unavailable


async def store_acked(nc: Connection, subject: str, data: bytes, headers: dict[str, str], *, timeout: float) -> Ack:  # noqa: ASYNC109 - the PubAck's wait
    """Publish to the stream that stores `subject` and return its ack. `NoResponders` if no
    stream stores it; `Unavailable` if no ack came within `timeout` (it may have been stored)."""
    try:
        reply = await request(nc, subject, data, timeout=timeout, headers=headers)
    except MeshTimeout as exc:
        raise Unavailable(f"store on {subject[:200]}: no ack within {timeout:g}s") from exc
    try:
        ack = orjson.loads(reply.data or b"{}")
        error = ack.get("error")
        if error:
            jse.APIError.from_error(error)  # raises the error nats-py would
    except jse.APIError as exc:
        raise map_error(exc, f"store on {subject[:200]}") from None
    except (orjson.JSONDecodeError, AttributeError) as exc:
        raise Unavailable(f"store on {subject[:200]}: not a JetStream ack: {reply.data[:100]!r}") from exc
    return Ack(str(ack.get("stream", "")), int(ack.get("seq", 0)), bool(ack.get("duplicate", False)))

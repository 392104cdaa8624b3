"""Dead letters: durable messages that kept failing, kept in MESH_DEAD with their last error.

A dead letter is stored on `dead.<type>.<token>` with the original payload and headers plus
`Mesh-Error-Code`, `Nats-Service-Error` (the message), `Mesh-Attempts` and `Mesh-Msg-Id`. Re-driving
one publishes it to the instance's durable subject again (with a new message id, since the old one
may still be in the stream's duplicate window) and removes it from MESH_DEAD.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from mesh import subjects, wire
from mesh._nats import Ack, JetStream, Message, delete_stored, get_stored
from mesh.durable import publish_retrying
from mesh.errors import MeshError, NotStored

# Headers of the failed delivery that are not carried over (the server sets or owns them).
_DROP = ("Nats-", "Status")


class DeadLetter(BaseModel):
    """One dead letter as `mesh dead-letters` shows it."""

    seq: int
    agent_type: str
    name: str
    error_code: str
    error: str
    attempts: int
    msg_id: str
    method: str | None
    payload: str
    time: datetime | None


def _carried(headers: dict[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (headers or {}).items() if not k.startswith(_DROP)}


async def bury(
    js: JetStream,
    msg: Message,
    agent_type: str,
    token: str,
    msg_id: str,
    error: MeshError,
    attempts: int,
    replicas: int = 1,
) -> Ack:
    """Store a failed durable message in MESH_DEAD (the caller acks the original afterwards)."""
    headers = _carried(msg.headers)
    headers.update(wire.error_headers(error))
    headers[subjects.HEADER_ATTEMPTS] = str(attempts)
    headers[subjects.HEADER_MSG_ID] = msg_id
    headers[subjects.HEADER_NATS_MSG_ID] = f"dead:{msg_id}"
    return await publish_retrying(js, subjects.dead_subject(agent_type, token), msg.data, headers, replicas=replicas)


async def list_dead(js: JetStream, *, limit: int = 1000) -> list[DeadLetter]:
    """The dead letters in stored order (at most `limit`; none if MESH_DEAD does not exist)."""
    found: list[DeadLetter] = []
    seq = 1
    while len(found) < limit:
        raw = await get_stored(js, subjects.DEAD_STREAM, seq=seq, subject="dead.>", next=True)
        if raw is None:
            break
        seq = raw.seq + 1
        found.append(_letter(raw.seq, raw.subject, raw.headers, raw.data, raw.time))
    return found


def _letter(seq: int, subject: str, headers: dict[str, str], data: bytes, time: datetime | None) -> DeadLetter:
    _, agent_type, token = subject.split(".", 2)
    err = wire.error_of(headers, b"")
    return DeadLetter(
        seq=seq,
        agent_type=agent_type,
        name=subjects.decode_name(token),
        error_code=headers.get(subjects.HEADER_MESH_ERROR, "mesh_error"),
        error=err.message if err else "",
        attempts=int(headers.get(subjects.HEADER_ATTEMPTS, "0") or 0),
        msg_id=headers.get(subjects.HEADER_MSG_ID, ""),
        method=headers.get(subjects.HEADER_METHOD),
        payload=data.decode(errors="replace"),
        time=time,
    )


async def redrive(js: JetStream, seq: int, *, replicas: int = 1) -> Ack:
    """Send dead letter `seq` to its instance again and remove it from MESH_DEAD."""
    raw = await get_stored(js, subjects.DEAD_STREAM, seq=seq)
    if raw is None:
        raise NotStored(f"there is no dead letter {seq}")
    headers = {
        k: v
        for k, v in _carried(raw.headers).items()
        if k
        not in (
            subjects.HEADER_ERROR,
            subjects.HEADER_ERROR_CODE,
            subjects.HEADER_MESH_ERROR,
            subjects.HEADER_ATTEMPTS,
            subjects.HEADER_MSG_ID,
        )
    }
    original = raw.headers.get(subjects.HEADER_MSG_ID, "")
    headers[subjects.HEADER_NATS_MSG_ID] = f"redrive:{seq}:{original}"[:256]
    _, agent_type, token = raw.subject.split(".", 2)
    ack = await publish_retrying(js, f"durable.{agent_type}.{token}", raw.data, headers, replicas=replicas)
    await delete_stored(js, subjects.DEAD_STREAM, seq)
    return ack


async def drop(js: JetStream, seq: int) -> bool:
    """Delete dead letter `seq` without re-driving it; False if there was none."""
    return await delete_stored(js, subjects.DEAD_STREAM, seq)

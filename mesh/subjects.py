"""Addresses: how an agent `(type, name)` becomes a NATS subject token and a KV key.

This module is the executable twin of `subjects.md`; a test keeps the two in agreement.

Instance names are arbitrary strings (e-mail addresses, ids with dots, spaces, Unicode). A name is
encoded into exactly one subject token that is also a valid KV key: ASCII letters, digits, `-` and
`_` stay as they are; every other character becomes `=XX` per UTF-8 byte (upper-case hex), `=`
included. The encoding is injective and reversible, and `decode_name` accepts only the canonical
form, so two different subjects can never reach the same instance and no name can spell `.`, `*`,
`>` or whitespace.
"""

from __future__ import annotations

import functools
import re
from typing import Final

from mesh.errors import NameInvalid

MAX_NAME_LENGTH: Final = 256
TYPE_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_TOKEN_PATTERN: Final = re.compile(r"^(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+$")
_PLAIN_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_SAFE: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_ESCAPES: Final = [chr(b) if b in _SAFE else f"={b:02X}" for b in range(256)]

# Buckets and streams the runtime creates.
STATE_BUCKET: Final = "mesh_state"
DIRECTORY_BUCKET: Final = "mesh_dir"
WORKERS_BUCKET: Final = "mesh_workers"
EVENTS_STREAM: Final = "mesh_events"  # keeps `events.>` so live views can resume (created by the HTTP bridge)
IDEMPOTENCY_BUCKET: Final = "mesh_http_idem"  # HTTP bridge: responses by Idempotency-Key
HTTP_RUNS_BUCKET: Final = "mesh_http_runs"  # HTTP bridge: results of `Prefer: respond-async` requests
DURABLE_STREAM: Final = "MESH_DURABLE"
DEAD_STREAM: Final = "MESH_DEAD"
# Durable messages are spread over this many partitions per agent type by the stream's subject
# transform; each partition is one consumer with one message in flight (see subjects.md).
DURABLE_PARTITIONS: Final = 8
MAIL_INBOUND_STREAM: Final = "mesh_mail_in"  # accepted raw mail, until processed (work queue)
MAIL_OUTBOX_STREAM: Final = "mesh_mail_out"  # replies waiting for the relay (work queue)
MAIL_BUCKET: Final = "mesh_mail"  # dedupe records, sent/failed outbox records, reply rate windows
MAIL_OBJECTS: Final = "mesh_mail_raw"  # object store for raw mail too large for one stream message
MAIL_INBOUND_SUBJECT: Final = "mesh_mail.in"
MAIL_OUTBOX_SUBJECT: Final = "mesh_mail.out"
MEMORY_STREAM: Final = "mesh_memory"  # LLM conversation memory, one subject per instance
RUNS_BUCKET: Final = "mesh_runs"  # object store: paused LLM runs (serialized RunState)
CONNECTIONS_BUCKET: Final = "mesh_conns"  # connections held by bridges: records, bridge leases (mesh.connections)

# Headers the mesh reads or writes.
HEADER_ERROR_CODE: Final = "Nats-Service-Error-Code"
HEADER_ERROR: Final = "Nats-Service-Error"
HEADER_MESH_ERROR: Final = "Mesh-Error-Code"
HEADER_TRACEPARENT: Final = "traceparent"
HEADER_TIMEOUT: Final = "Mesh-Timeout-Ms"
DEFAULT_TIMEOUT_MS: Final = 30_000  # what a request without Mesh-Timeout-Ms is given
HEADER_DEADLINE: Final = "Mesh-Deadline"  # unix epoch milliseconds (the caller's clock) when it stops waiting
HEADER_CHAIN: Final = "Mesh-Call-Chain"
HEADER_HOPS: Final = "Mesh-Hops"
HEADER_OWNER: Final = "Mesh-Owner"  # a reply from an instance's owner: its worker id, for direct routing
HEADER_MSG_ID: Final = "Mesh-Msg-Id"
HEADER_APPLIED: Final = "Mesh-Applied"
HEADER_METHOD: Final = "Mesh-Method"
HEADER_SCHEDULE_ID: Final = "Mesh-Schedule-Id"
HEADER_ATTEMPTS: Final = "Mesh-Attempts"
HEADER_NATS_MSG_ID: Final = "Nats-Msg-Id"
HEADER_NATS_SCHEDULE: Final = "Nats-Schedule"
HEADER_NATS_SCHEDULE_TARGET: Final = "Nats-Schedule-Target"
HEADER_NATS_SCHEDULER: Final = "Nats-Scheduler"
HEADER_MAIL: Final = "Mesh-Mail"
HEADER_MAIL_ENVELOPE: Final = "Mesh-Mail-Envelope"
HEADER_MAIL_OBJECT: Final = "Mesh-Mail-Object"
HEADER_CONNECTION: Final = "Mesh-Connection"
HEADER_CONNECTION_EVENT: Final = "Mesh-Connection-Event"
HEADER_BRIDGE: Final = "Mesh-Bridge"
HEADER_FRAME: Final = "Mesh-Frame"
HEADER_REQUEST_ID: Final = "Mesh-Request-Id"  # a retried request takes effect at most once (mesh.request_ids)
HEADER_WRITE: Final = "Mesh-Write"  # the id of a state write, to settle a write whose ack was lost
HEADER_REQUESTS: Final = "Mesh-Requests"  # replies by request id, saved with the state (mesh.request_ids)
HEADER_REQUESTS_UNTIL: Final = "Mesh-Requests-Until"  # unix ms until which spilled request records count
REQUEST_RECORDS: Final = "_r"  # state bucket keys `_r.<type>.<token>.<spill>`: replies by request id

HEADERS: Final = (
    HEADER_ERROR_CODE,
    HEADER_ERROR,
    HEADER_MESH_ERROR,
    HEADER_TRACEPARENT,
    HEADER_TIMEOUT,
    HEADER_DEADLINE,
    HEADER_CHAIN,
    HEADER_HOPS,
    HEADER_OWNER,
    HEADER_MSG_ID,
    HEADER_APPLIED,
    HEADER_METHOD,
    HEADER_SCHEDULE_ID,
    HEADER_ATTEMPTS,
    HEADER_NATS_MSG_ID,
    HEADER_NATS_SCHEDULE,
    HEADER_NATS_SCHEDULE_TARGET,
    HEADER_NATS_SCHEDULER,
    HEADER_MAIL,
    HEADER_MAIL_ENVELOPE,
    HEADER_MAIL_OBJECT,
    HEADER_CONNECTION,
    HEADER_CONNECTION_EVENT,
    HEADER_BRIDGE,
    HEADER_FRAME,
    HEADER_REQUEST_ID,
    HEADER_WRITE,
    HEADER_REQUESTS,
    HEADER_REQUESTS_UNTIL,
)

SUBJECT_PATTERNS: Final = (
    "agents.<type>.<name>",
    "_mesh.w.<worker>.<type>.<name>",
    "events.<type>.<name>.<kind>",
    "$SRV.PING|INFO|STATS[.<type>[.<id>]]",
    "$KV.mesh_state.<type>.<name>",
    "$KV.mesh_state._r.<type>.<name>.<spill>",
    "$KV.mesh_dir.<type>.<name>",
    "$KV.mesh_workers.<worker>",
    "$KV.mesh_http_idem.<hash>",
    "$KV.mesh_http_runs.<run>",
    "durable.<type>.<name>",
    "durable.<type>.<partition>.<name>",
    "schedules.<type>.<name>.<id>",
    "dead.<type>.<name>",
    "mesh_mail.in",
    "mesh_mail.out",
    "$KV.mesh_mail.<kind>.<id>",
    "$O.mesh_mail_raw.C|M.>",
    "mesh_memory.<type>.<name>",
    "$O.mesh_runs.C|M.>",
    "_mesh.conn.<bridge>.<conn>",
    "$KV.mesh_conns.<kind>.<key>",
)


def encode_name(name: str) -> str:
    """The subject token (and KV key part) for an instance name."""
    if not isinstance(name, str) or not name:
        raise NameInvalid("instance name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise NameInvalid(f"instance name is {len(name)} characters; the limit is {MAX_NAME_LENGTH}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NameInvalid("instance name is not valid Unicode text") from exc
    return "".join([_ESCAPES[b] for b in raw])


def decode_name(token: str) -> str:
    """The instance name a subject token stands for; rejects tokens `encode_name` never makes."""
    if _PLAIN_PATTERN.match(token) and len(token) <= MAX_NAME_LENGTH:
        return token  # nothing escaped: the token is the name
    if not _TOKEN_PATTERN.match(token):
        raise NameInvalid(f"subject token {token[:80]!r} is not an encoded instance name")
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "=":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    try:
        name = out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NameInvalid(f"subject token {token[:80]!r} is not UTF-8") from exc
    if encode_name(name) != token:
        raise NameInvalid(f"subject token {token[:80]!r} is not in canonical form")
    return name


def check_type(agent_type: str) -> str:
    """Return `agent_type` if it is a valid agent type name, else raise `NameInvalid`."""
    if not isinstance(agent_type, str) or not TYPE_PATTERN.match(agent_type):
        raise NameInvalid(f"agent type {str(agent_type)[:80]!r} must match {TYPE_PATTERN.pattern}")
    return agent_type


def instance_key(agent_type: str, name: str) -> str:
    """`<type>.<token>`: the instance's key in the state and directory buckets."""
    return f"{check_type(agent_type)}.{encode_name(name)}"


@functools.lru_cache(maxsize=4096)
def agent_subject(agent_type: str, name: str) -> str:
    return f"agents.{instance_key(agent_type, name)}"


def agent_wildcard(agent_type: str) -> str:
    return f"agents.{check_type(agent_type)}.*"


def worker_subject(worker_id: str, key: str) -> str:
    """Subject on which a worker receives requests forwarded to an instance it owns."""
    return f"_mesh.w.{worker_id}.{key}"


def worker_wildcard(worker_id: str) -> str:
    return f"_mesh.w.{worker_id}.>"


def connection_subject(bridge_id: str, conn_id: str) -> str:
    """Where an instance sends frames for one of its connections: the bridge holding it listens there."""
    return f"_mesh.conn.{bridge_id}.{conn_id}"


def connection_wildcard(bridge_id: str) -> str:
    return f"_mesh.conn.{bridge_id}.*"


def event_subject(agent_type: str, name: str, kind: str) -> str:
    if not TYPE_PATTERN.match(kind):
        raise NameInvalid(f"event kind {kind[:80]!r} must match {TYPE_PATTERN.pattern}")
    return f"events.{instance_key(agent_type, name)}.{kind}"


def memory_subject(agent_type: str, name: str) -> str:
    """Subject of an LLM instance's conversation items in the `mesh_memory` stream."""
    return f"{MEMORY_STREAM}.{instance_key(agent_type, name)}"


def event_wildcard(agent_type: str, name: str) -> str:
    """Every event of one instance: `events.<type>.<token>.>`."""
    return f"events.{instance_key(agent_type, name)}.>"


def parse_address(address: str) -> tuple[str, str]:
    """Split the CLI form `TYPE/NAME` (the name may itself contain `/`)."""
    agent_type, sep, name = address.partition("/")
    if not sep:
        raise NameInvalid(f"address {address[:80]!r} must look like TYPE/NAME")
    check_type(agent_type)
    encode_name(name)
    return agent_type, name


SCHEDULE_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def durable_subject(agent_type: str, name: str) -> str:
    """Where a durable message to an instance is published; the stream files it under a partition."""
    return f"durable.{instance_key(agent_type, name)}"


def durable_partition_filter(agent_type: str, partition: int) -> str:
    return f"durable.{check_type(agent_type)}.{partition}.*"


def schedule_subject(agent_type: str, name: str, schedule_id: str) -> str:
    """The one subject a schedule lives on: publishing to it again replaces the schedule."""
    return f"schedules.{instance_key(agent_type, name)}.{check_schedule_id(schedule_id)}"


def dead_subject(agent_type: str, token: str) -> str:
    return f"dead.{check_type(agent_type)}.{token}"


def check_schedule_id(schedule_id: str) -> str:
    if not isinstance(schedule_id, str) or not SCHEDULE_ID_PATTERN.match(schedule_id):
        raise NameInvalid(f"schedule id {str(schedule_id)[:80]!r} must match {SCHEDULE_ID_PATTERN.pattern}")
    return schedule_id

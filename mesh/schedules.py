"""Schedules: nats-server message schedules that deliver a payload to an instance later or repeatedly.

A schedule is one message on `schedules.<type>.<token>.<id>` in MESH_DURABLE with the header
`Nats-Schedule` (`@at <RFC 3339 UTC>`, `@every <duration>` or a cron expression) and
`Nats-Schedule-Target: durable.<type>.<token>`. The server stores each firing under the target
subject, so it is delivered like a durable send (in order, acked after save, retried, dead-lettered).
Because a schedule is identified by its subject and the server keeps only the latest schedule message
per subject, publishing the same id again *replaces* the schedule: registering it in `on_activate`
on every activation never duplicates it. Cancelling purges the subject. Schedules live in the
stream, so they survive restarts of every worker and of the nats-server.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from mesh import subjects, wire
from mesh._nats import JetStream, last_stored, purge, stream_subjects
from mesh.durable import publish_retrying
from mesh.errors import NameInvalid, RequestError

_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$")


class ScheduleInfo(BaseModel):
    """A registered schedule as `mesh schedule ls` shows it."""

    agent_type: str
    name: str
    id: str
    spec: str
    method: str | None
    payload: str


def schedule_spec(
    *,
    at: datetime | None = None,
    delay: float | None = None,
    every: float | str | None = None,
    cron: str | None = None,
) -> str:
    """The `Nats-Schedule` value for exactly one of `at`, `delay` (seconds), `every` or `cron`."""
    given = [x for x in (at, delay, every, cron) if x is not None]
    if len(given) != 1:
        raise RequestError("give exactly one of at, delay, every or cron")
    if delay is not None:
        at = datetime.now(UTC) + timedelta(seconds=max(1.0, float(delay)))
    if at is not None:
        if at.tzinfo is None:
            raise RequestError("a schedule time must carry a time zone (use UTC)")
        return "@at " + at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if every is not None:
        if isinstance(every, str):
            text = every
        elif float(every).is_integer():
            text = f"{int(every)}s"
        else:
            text = f"{int(round(float(every) * 1000))}ms"
        if not _DURATION.match(text) or _seconds(text) < 1:
            raise RequestError(f"interval {text!r} must be a duration of at least 1s, like 30s, 5m or 1h30m")
        return f"@every {text}"
    assert cron is not None
    fields = cron.split()
    if not (cron.startswith("@") or len(fields) == 6):
        raise RequestError("a cron expression has 6 fields (seconds first), or is @hourly, @daily, ...")
    return cron


def _seconds(duration: str) -> float:
    unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * unit[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ns|us|ms|s|m|h)", duration))


async def put_schedule(
    js: JetStream,
    agent_type: str,
    name: str,
    schedule_id: str,
    spec: str,
    payload: Any = None,
    *,
    method: str | None = None,
    replicas: int = 1,
) -> int:
    """Register (or replace) schedule `schedule_id` of `(agent_type, name)`; returns its stream sequence."""
    data = payload if isinstance(payload, bytes) else wire.dumps(payload)
    headers = {
        subjects.HEADER_NATS_SCHEDULE: spec,
        subjects.HEADER_NATS_SCHEDULE_TARGET: subjects.durable_subject(agent_type, name),
        subjects.HEADER_SCHEDULE_ID: schedule_id,
    }
    if method:
        if not method.isidentifier():
            raise NameInvalid(f"method {method[:80]!r} is not an identifier")
        headers[subjects.HEADER_METHOD] = method
    subject = subjects.schedule_subject(agent_type, name, schedule_id)
    ack = await publish_retrying(js, subject, data, headers, replicas=replicas)
    return ack.seq


async def cancel_schedule(js: JetStream, agent_type: str, name: str, schedule_id: str) -> bool:
    """Remove the schedule; False if there was none (never registered, cancelled, or a fired `@at`)."""
    subject = subjects.schedule_subject(agent_type, name, schedule_id)
    if await last_stored(js, subjects.DURABLE_STREAM, subject) is None:
        return False
    await purge(js, subjects.DURABLE_STREAM, subject)
    return True


async def list_schedules(js: JetStream, agent_type: str | None = None, name: str | None = None) -> list[ScheduleInfo]:
    """The registered schedules, optionally of one type or one instance."""
    if agent_type is None:
        pattern = "schedules.>"
    elif name is None:
        pattern = f"schedules.{subjects.check_type(agent_type)}.>"
    else:
        pattern = f"schedules.{subjects.instance_key(agent_type, name)}.*"
    found = []
    for subject in sorted(await stream_subjects(js, subjects.DURABLE_STREAM, pattern)):
        raw = await last_stored(js, subjects.DURABLE_STREAM, subject)
        if raw is None:
            continue
        _, type_, token, schedule_id = subject.split(".")
        headers = raw.headers
        found.append(
            ScheduleInfo(
                agent_type=type_,
                name=subjects.decode_name(token),
                id=schedule_id,
                spec=headers.get(subjects.HEADER_NATS_SCHEDULE, ""),
                method=headers.get(subjects.HEADER_METHOD),
                payload=raw.data.decode(errors="replace"),
            )
        )
    return found

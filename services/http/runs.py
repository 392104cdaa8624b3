"""`Prefer: respond-async`: answer 202 at once and keep the result in KV for any replica to serve.

A run record is `pending` from the moment the 202 is sent until the agent replies (or the async
deadline passes); then it holds the reply or the problem. Records expire with the bucket's TTL.
If the bridge that started a run dies, the record stays `pending` until it expires.
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import orjson
import structlog

from mesh.bus import Bucket
from mesh.errors import MeshError
from services.http.errors import NotFound
from services.http.problems import problem_body

log = structlog.get_logger("services.http")


def new_run_id() -> str:
    return base64.b32encode(os.urandom(10)).decode().lower()


class RunStore:
    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    async def create(self, run_id: str, agent_type: str, name: str) -> dict[str, Any]:
        record = {
            "id": run_id,
            "status": "pending",
            "agent": {"type": agent_type, "name": name},
            "created_at": time.time(),
        }
        await self.bucket.create(run_id, orjson.dumps(record))
        return record

    async def finish(self, record: dict[str, Any], reply: bytes | None, error: MeshError | None) -> None:
        done = {**record, "finished_at": time.time()}
        if error is None:
            done["status"] = "succeeded"
            done["result"] = orjson.loads(reply or b"null")
        else:
            done["status"] = "failed"
            done["problem"] = problem_body(error)
        await self.bucket.put(record["id"], orjson.dumps(done))

    async def get(self, run_id: str) -> dict[str, Any]:
        if not run_id.isalnum() or len(run_id) > 64:
            raise NotFound(f"no run {run_id[:80]!r}")
        found = await self.bucket.get(run_id)
        if found is None:
            raise NotFound(f"no run {run_id!r} (unknown, or its result expired)")
        record: dict[str, Any] = orjson.loads(found[0])
        return record

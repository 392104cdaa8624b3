"""`Idempotency-Key`: a retried POST gets the first response back and never runs twice.

The key is claimed with a KV *create* before the request is sent, so two bridge replicas racing on
the same key cannot both send it; the finished response replaces the claim (compare-and-set on
the claim's revision) and expires with the bucket's TTL. A claim is released only when the
request certainly did not run (503: no responders, worker unavailable), so the retry can run it.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import orjson
from starlette.responses import Response

from mesh.bus import Bucket
from mesh.errors import RequestError, StateConflict
from services.http.errors import IdempotencyInProgress, IdempotencyKeyReused

MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"
KEPT_HEADERS = ("location", "preference-applied", "retry-after", "content-type")


@dataclass
class Claim:
    key: str
    revision: int
    fingerprint: str


def check_key(value: str) -> str:
    if not 1 <= len(value) <= MAX_KEY_LENGTH or not value.isprintable():
        raise RequestError(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters")
    return value


class IdempotencyStore:
    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    @staticmethod
    def storage_key(principal: str, method: str, path: str, key: str) -> str:
        raw = "\n".join((principal, method, path, check_key(key))).encode()
        return hashlib.sha256(raw).hexdigest()

    async def claim(self, key: str, fingerprint: str) -> Claim | Response:
        """Claim `key` for this request, or return the stored response of the first one."""
        record = orjson.dumps({"state": "pending", "fingerprint": fingerprint})
        try:
            return Claim(key, await self.bucket.create(key, record), fingerprint)
        except StateConflict:
            pass
        found = await self.bucket.get(key)
        if found is None:  # expired between the two calls: claim again
            return Claim(key, await self.bucket.create(key, record), fingerprint)
        stored = orjson.loads(found[0])
        if stored.get("fingerprint") != fingerprint:
            raise IdempotencyKeyReused("this Idempotency-Key was used with a different request body")
        if stored.get("state") != "done":
            raise IdempotencyInProgress("the first request with this Idempotency-Key has not finished; retry")
        headers = {k: v for k, v in stored["headers"].items() if k != "content-type"}
        headers[REPLAYED_HEADER] = "true"
        return Response(
            base64.b64decode(stored["body"]),
            status_code=stored["status"],
            media_type=stored["headers"].get("content-type"),
            headers=headers,
        )

    async def finish(self, claim: Claim, response: Response) -> None:
        if response.status_code == 503:
            await self.release(claim)
            return
        body = bytes(response.body)
        record = {
            "state": "done",
            "fingerprint": claim.fingerprint,
            "status": response.status_code,
            "headers": {k: v for k, v in response.headers.items() if k in KEPT_HEADERS},
            "body": base64.b64encode(body).decode(),
        }
        await self.bucket.write(claim.key, orjson.dumps(record), claim.revision)

    async def release(self, claim: Claim) -> None:
        await self.bucket.delete(claim.key, last=claim.revision)  # False: it had moved on already


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()

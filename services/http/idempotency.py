"""`Idempotency-Key`: a retried POST gets the first response back and never runs twice.

The key is claimed with a KV *create* before the request is sent, so two bridge replicas racing on
the same key cannot both send it; the finished response replaces the claim (compare-and-set on
the claim's revision) and expires with the bucket's TTL.

The request goes to the mesh with a request id derived from the key (`request_id`), so the mesh
itself runs it at most once. That is what makes an unknown outcome resolvable: when the answer
says the request may have run (`outcome_unknown`, `timeout`, or a bridge stopped mid-request) the
claim is kept, marked `unknown`, and a later retry of the same key sends the request again with
the same request id: the mesh answers the original reply if it ran, or runs it now, once. A claim
still `pending` after its request's deadline (its bridge died) is resolved the same way. The mesh
remembers request ids for two minutes, so this works within `RESOLVE_WITHIN_MS` of the first send;
after that the unknown answer is what a retry gets. A claim is released only when the request
certainly did not run (`unavailable`, `no_responders`, `connection_failed`, `conflict`), so the
retry runs it; once a send's outcome was unknown, a later send that did not run leaves it unknown.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass

import orjson
from starlette.responses import Response

from mesh.bus import Bucket
from mesh.errors import (
    ConnectionFailed,
    MeshError,
    MeshTimeout,
    NoResponders,
    OutcomeUnknown,
    RequestError,
    StateConflict,
    Unavailable,
)
from services.http.errors import IdempotencyInProgress, IdempotencyKeyReused
from services.http.problems import problem

MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"
KEPT_HEADERS = ("location", "preference-applied", "retry-after", "content-type")
RESOLVE_WITHIN_MS = 100_000  # inside the mesh's two-minute memory of request ids, with room for clock skew
PENDING_MARGIN_MS = 5_000  # a claim is stale this long after its request's deadline
DID_NOT_RUN = (Unavailable, NoResponders, ConnectionFailed, StateConflict)
MAY_HAVE_RUN = (OutcomeUnknown, MeshTimeout)


@dataclass
class Claim:
    key: str
    revision: int
    fingerprint: str
    sent_at: int  # unix ms when the request was first sent: resolving is possible for a while after
    resolving: bool = False  # an earlier send may have run: no later answer can release the key


def check_key(value: str) -> str:
    if not 1 <= len(value) <= MAX_KEY_LENGTH or not value.isprintable():
        raise RequestError(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters")
    return value


def request_id(storage_key: str) -> str:
    """The mesh request id of every send of the request claimed under `storage_key`."""
    return f"http-idem-{storage_key}"


class IdempotencyStore:
    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    @staticmethod
    def storage_key(principal: str, method: str, path: str, key: str) -> str:
        raw = "\n".join((principal, method, path, check_key(key))).encode()
        return hashlib.sha256(raw).hexdigest()

    async def claim(self, key: str, fingerprint: str, wait: float) -> Claim | Response:
        """Claim `key` for a request that waits at most `wait` seconds, or return the response a
        retry gets: the first request's stored response, or a problem (in progress, reused key)."""
        now = _now_ms()
        record = _pending(fingerprint, now, now, wait)
        try:
            return Claim(key, await self.bucket.create(key, record), fingerprint, now)
        except StateConflict:
            pass
        found = await self.bucket.get(key)
        if found is None:  # expired between the two calls: claim again
            return Claim(key, await self.bucket.create(key, record), fingerprint, now)
        stored, revision = orjson.loads(found[0]), found[1]
        if stored.get("fingerprint") != fingerprint:
            raise IdempotencyKeyReused("this Idempotency-Key was used with a different request body")
        state = stored.get("state")
        if state == "done":
            return _replay(stored)
        if state == "pending" and ("until" not in stored or now < int(stored["until"])):
            raise IdempotencyInProgress("the first request with this Idempotency-Key has not finished; retry")
        # Its outcome is unknown (or its bridge went away mid-request): send it again, same request id.
        sent_at = int(stored.get("sent_at", now))
        if now - sent_at > RESOLVE_WITHIN_MS:
            if "body" in stored:
                return _replay(stored)
            err = OutcomeUnknown("the first request with this Idempotency-Key may have run; it can no longer be found out")
            return problem(err)
        try:
            revision = await self.bucket.write(key, _pending(fingerprint, sent_at, now, wait), revision)
        except StateConflict:  # another retry took it over first
            raise IdempotencyInProgress("a retry of this Idempotency-Key is being resolved; retry") from None
        return Claim(key, revision, fingerprint, sent_at, resolving=True)

    async def finish(self, claim: Claim, response: Response, error: MeshError | None = None) -> None:
        """Store the response (`error`: the mesh error it reports, if any). A request that did not
        run releases the key; one that may have run keeps it, resolvable by a retry."""
        if isinstance(error, DID_NOT_RUN):
            if not claim.resolving:
                await self.release(claim)
                return
            # A resend that did not run says nothing of an earlier send: the outcome stays unknown.
            detail = f"an earlier send of this request may have run; the last one did not ({error.code}: {error.message})"
            response = problem(OutcomeUnknown(detail))
        state = "unknown" if isinstance(error, (*MAY_HAVE_RUN, *DID_NOT_RUN)) else "done"
        await self.bucket.write(claim.key, _record(state, claim, response), claim.revision)

    async def release(self, claim: Claim) -> None:
        await self.bucket.delete(claim.key, last=claim.revision)  # False: it had moved on already


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _pending(fingerprint: str, sent_at: int, now: int, wait: float) -> bytes:
    until = now + int(wait * 1000) + PENDING_MARGIN_MS
    return orjson.dumps({"state": "pending", "fingerprint": fingerprint, "sent_at": sent_at, "until": until})


def _record(state: str, claim: Claim, response: Response) -> bytes:
    return orjson.dumps(
        {
            "state": state,
            "fingerprint": claim.fingerprint,
            "sent_at": claim.sent_at,
            "status": response.status_code,
            "headers": {k: v for k, v in response.headers.items() if k in KEPT_HEADERS},
            "body": base64.b64encode(bytes(response.body)).decode(),
        }
    )


def _replay(stored: dict[str, object]) -> Response:
    kept = stored.get("headers")
    kept = kept if isinstance(kept, dict) else {}
    headers = {str(k): str(v) for k, v in kept.items() if k != "content-type"}
    headers[REPLAYED_HEADER] = "true"
    media_type = kept.get("content-type")
    return Response(
        base64.b64decode(str(stored["body"])),
        status_code=int(str(stored["status"])),
        media_type=str(media_type) if media_type else None,
        headers=headers,
    )

"""KV buckets and object stores with the mesh's error mapping: misses are None, conflicts `StateConflict`.

A JetStream API call that does not answer in time (a leader election, a restarting server) is
`Unavailable`, not `MeshTimeout`: the caller should retry, nobody's deadline passed.

State writes (`Bucket.save`) tell the truth about their outcome. A write whose acknowledgement
does not come may have been stored, so it is never reported as "not written": it is settled by
sending the same write again, with the same expected revision and the same write id
(`Mesh-Write`). TCP keeps the order of one connection, so an original still in flight lands
first. The resend's success means this write is stored now; its conflict means something was
stored at that revision, and reading the key back says what: our write id (stored), or another
write made on the same base revision (definitely not stored). Anything else, or no answer within
`SETTLE_WITHIN`, is `OutcomeUnknown`. A resend is the same compare-and-set, so it can land only if
nothing was written since: it never overwrites anyone's state.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from dataclasses import dataclass

import nats.errors
import nats.js.errors as jse
import orjson
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from mesh._nats.connection import Connection, JetStream, Message
from mesh._nats.errors import map_errors
from mesh._nats.healing import healer_of
from mesh._nats.inbox import ReplyInbox, inbox_of
from mesh.errors import MeshError, MeshTimeout, NoResponders, OutcomeUnknown, StateConflict, Unavailable
from mesh.subjects import HEADER_WRITE

EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_GONE = ("DEL", "PURGE")
SETTLE_WITHIN = 3.0  # seconds a write whose ack never came is resent and read back before it is unknown
SETTLE_ATTEMPT = 1.0  # seconds one resend waits for its ack
_CONFLICT = (10071, 10164)
LAST_VALUES_BATCH = 1000  # keys one `Bucket.values` direct get returns at most (more: it watches)
LAST_VALUES_WITHIN = 1.0  # seconds that direct get may take before the bucket watches instead, for good
_END_OF_BATCH, _NOT_FOUND = "204", "404"
_writes = itertools.count(1)


class _NoAck(Exception):
    """A write was sent and nothing came back in time: it may or may not be stored."""


def write_id(writer: str, base: int) -> str:
    """A state write's id (`Mesh-Write`): `<writer>.<base revision>.<n>`, unique per write.

    Two writes made on the same base revision can never both be stored (compare-and-set), so a
    stored write with our base but not our id proves that ours was not stored."""
    return f"{writer}.{base}.{next(_writes)}"


def write_base(write: str | None) -> int | None:
    """The base revision a write id names (None if it is not one)."""
    if not write:
        return None
    parts = write.rsplit(".", 2)
    try:
        return int(parts[-2]) if len(parts) == 3 else None
    except ValueError:
        return None


async def bind_bucket(nc: Connection, name: str, *, timeout: float = 5.0) -> Bucket | None:  # noqa: ASYNC109 - the bucket's per-operation timeout
    """Bind an existing KV bucket, or None: readers (the CLI, clients) never create buckets, so
    none is ever created with another replica count than the workers'."""
    with map_errors(f"KV bucket {name} (JetStream leader election?)", timeout=Unavailable):
        try:
            return Bucket(nc, await nc.jetstream().key_value(name), name, timeout=timeout)
        except jse.BucketNotFoundError:
            return None


async def open_bucket(
    nc: Connection,
    name: str,
    *,
    history: int = 1,
    replicas: int = 1,
    ttl: float | None = None,
    timeout: float = 5.0,  # noqa: ASYNC109 - the bucket's per-operation timeout
) -> Bucket:
    """Bind a KV bucket, creating it (file storage, direct gets, `replicas` copies, entries expiring
    after `ttl` seconds if given) the first time.

    An existing bucket is bound as it is: its replica count is fixed when it is first created, so
    on a cluster the first worker must already run with `replicas=3`.
    """
    again = functools.partial(open_bucket, nc, name, history=history, replicas=replicas, ttl=ttl, timeout=timeout)
    healer_of(nc).remember_stream(f"KV_{name}", again)  # made again if a server restarts without it
    found = await bind_bucket(nc, name, timeout=timeout)
    if found is not None:
        return found
    js = nc.jetstream()
    config = KeyValueConfig(bucket=name, history=history, storage=StorageType.FILE, direct=True, replicas=replicas)
    if ttl is not None:
        config.ttl = ttl
    with map_errors(f"KV bucket {name}", timeout=Unavailable):
        try:
            kv = await js.create_key_value(config)
        except jse.BadRequestError:
            kv = await js.key_value(name)  # another process created it with the same name first
    return Bucket(nc, kv, name, timeout=timeout)


@dataclass(frozen=True)
class Change:
    """One state of a watched key: its revision and value (None once deleted or purged)."""

    revision: int
    value: bytes | None


class Bucket:
    """A KV bucket with the mesh's error mapping: conflicts are `StateConflict`, misses are None."""

    def __init__(self, nc: Connection, kv: KeyValue, name: str, *, timeout: float = 5.0) -> None:
        self._nc = nc
        self._kv = kv
        self._js = nc.jetstream(timeout=timeout)
        self.name = name
        self._timeout = timeout
        self._replies: ReplyInbox | None = None  # the connection's reply inbox, looked up once
        self._batched_gets = True  # False once a batched direct get went unanswered (see `_last_values`)

    @property
    def _inbox(self) -> ReplyInbox:
        replies = self._replies
        if replies is None:
            replies = self._replies = inbox_of(self._nc)
        return replies

    async def get(self, key: str) -> tuple[bytes, int] | None:
        with map_errors(f"KV {self.name}", timeout=Unavailable):
            try:
                entry = await self._kv.get(key)
            except jse.KeyNotFoundError:
                return None
        if entry.value is None or entry.revision is None:
            return None  # an expiry marker (see NOTES 1.5) counts as absent
        return entry.value, entry.revision

    async def write(
        self, key: str, value: bytes, last: int, headers: dict[str, str] | None = None, *, fresh: bool = False
    ) -> int:
        """Compare-and-set: `last=0` means the key must not exist (or is deleted; with `fresh`, the
        key must never have been written at all). Returns the new revision.

        `headers` are stored in the same message as the value, so atomically with it. This is the
        hot path of every turn: one JetStream publish through the reply inbox whose ack is parsed
        with orjson, skipping nats-py's key regex, PubAck dataclass and stdlib-json parsing.
        """
        subject = f"$KV.{self.name}.{key}"
        try:
            return await self._publish_expecting(subject, value, last, headers)
        except StateConflict:
            if last != 0 or fresh:
                raise
            # "Must not exist" also accepts a delete tombstone, as KeyValue.create does.
            tombstone = await self._tombstone_revision(subject)
            if tombstone is None:
                raise
            return await self._publish_expecting(subject, value, tombstone, headers)

    async def save(
        self,
        key: str,
        value: bytes,
        last: int,
        headers: dict[str, str] | None = None,
        *,
        write: str,
    ) -> int:
        """Compare-and-set `key` from revision `last` (0: it must not exist), telling the truth
        about the outcome; returns the new revision.

        Raises `StateConflict` when the key had moved on (definitely not written), `Unavailable` when
        JetStream refused the write or it could not be sent (definitely not written), and
        `OutcomeUnknown` when the write was sent and could not be settled (see the module doc).
        `write` is this write's id (`write_id`), stored with the value (`Mesh-Write`).
        """
        subject = f"$KV.{self.name}.{key}"
        sent = dict(headers) if headers else {}
        sent[HEADER_WRITE] = write
        sent[EXPECTED_LAST] = str(last)
        try:
            return await self._send(subject, value, sent, self._timeout)
        except StateConflict:
            if last != 0:
                raise
            # "Must not exist" also accepts a delete tombstone, as KeyValue.create does.
            tombstone = await self._tombstone_revision(subject)
            if tombstone is None:
                raise
            return await self.save(key, value, tombstone, headers, write=write)
        except _NoAck:
            return await self._settle(key, subject, value, sent, write, last)

    async def _send(
        self,
        subject: str,
        value: bytes,
        headers: dict[str, str],
        timeout: float,  # noqa: ASYNC109 - the ack's own wait
    ) -> int:
        """Send one write and read its ack; `_NoAck` if none came in time."""
        try:
            msg = await self._inbox.request(subject, value, timeout=timeout, headers=headers)
        except MeshTimeout as exc:
            raise _NoAck(exc.message) from exc
        except NoResponders as exc:  # nobody stores this subject: the bucket's stream is gone
            raise Unavailable(f"KV {self.name} has no stream to store the write: {exc.message}") from exc
        ack = orjson.loads(msg.data)
        error = ack.get("error")
        if error is None:
            return int(ack["seq"])
        code = error.get("err_code")
        if code in _CONFLICT:
            raise StateConflict(f"{self.name}: {subject} changed since revision {headers[EXPECTED_LAST]}")
        raise Unavailable(f"KV {self.name} refused the write: {error.get('description')}")

    async def _settle(
        self,
        key: str,
        subject: str,
        value: bytes,
        headers: dict[str, str],
        write: str,
        last: int,
    ) -> int:
        """Find out whether a write whose ack never came was stored (see the module doc)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + SETTLE_WITHIN
        conflicted = False
        while (left := until - loop.time()) > 0:
            try:
                if not conflicted:
                    return await self._send(subject, value, headers, min(SETTLE_ATTEMPT, left))
                async with asyncio.timeout(left):
                    found = await self.get_with_headers(key)
            except StateConflict:
                conflicted = True  # something is stored at that revision: read it back
                continue
            except (_NoAck, TimeoutError):
                continue
            except MeshError:  # no answer now (reconnecting, leader election): nothing learned
                await asyncio.sleep(min(0.1, max(0.0, until - loop.time())))
                continue
            stored = None if found is None else found[2].get(HEADER_WRITE)
            if found is not None and stored == write:
                return found[1]  # ours: the first send was stored
            if write_base(stored) == write_base(write):
                raise StateConflict(f"{self.name}: another write at revision {last} of {key} came first")
            break  # another writer's value on top, or none: ours may have been stored before it
        raise OutcomeUnknown(
            f"KV {self.name}: the write of {key} at revision {last} was sent, but whether it was stored "
            f"could not be found out within {SETTLE_WITHIN:g}s"
        )

    async def values(self, prefix: str) -> list[bytes]:
        """The values of every key under `prefix` (which ends with `.`), in stream order.

        Asked with one batched direct get (`_last_values`) when the server answers those: a new
        owner reads an instance's spilled request records on activation, and after a failover it
        does so for every instance it takes over at once, where a watch costs a consumer each.
        """
        last = await self._last_values(prefix) if self._batched_gets else None
        if last is not None:
            return last
        found: list[bytes] = []
        with map_errors(f"KV {self.name}", timeout=Unavailable):
            watcher = await self._kv.watch(f"{prefix}>", ignore_deletes=True)
            try:
                async for entry in watcher:
                    if entry is None:
                        break
                    if entry.value:
                        found.append(entry.value)
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]
        return found

    async def _last_values(self, prefix: str) -> list[bytes] | None:
        """The last value of each key under `prefix`, in stream order, from one `multi_last` direct
        get (nats-server 2.11+: the messages, then an end-of-batch status); None when the answer is
        anything else (an older server, a bucket without direct gets, more keys than one batch),
        and the caller watches instead. No answer within `LAST_VALUES_WITHIN` (a user allowed only
        `$JS.API.DIRECT.GET.<stream>.<subject>`, whose request the server refuses without a reply)
        turns these gets off for the bucket."""
        nc = self._nc
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[bytes] | None] = loop.create_future()
        found: list[bytes] = []

        async def on_message(msg: Message) -> None:
            headers = msg.headers or {}
            status = headers.get("Status")
            if answer.done():
                return
            if status is None:
                if msg.data and headers.get("KV-Operation") not in _GONE and "Nats-Marker-Reason" not in headers:
                    found.append(msg.data)
            elif status == _END_OF_BATCH:
                answer.set_result(found if headers.get("Nats-Num-Pending", "0") == "0" else None)
            else:  # 404: no key under the prefix; anything else: ask another way
                answer.set_result([] if status == _NOT_FOUND else None)

        request = orjson.dumps({"multi_last": [f"$KV.{self.name}.{prefix}>"], "batch": LAST_VALUES_BATCH})
        with map_errors(f"KV {self.name}", timeout=Unavailable):
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, cb=on_message)
            try:
                await nc.publish(f"$JS.API.DIRECT.GET.KV_{self.name}", request, reply=inbox)
                async with asyncio.timeout(min(self._timeout, LAST_VALUES_WITHIN)):
                    return await answer
            except TimeoutError:
                self._batched_gets = False
                return None
            finally:
                await sub.unsubscribe()

    async def create(self, key: str, value: bytes) -> int:
        """Write `key` only if it does not exist (or was deleted); `StateConflict` if it does."""
        return await self.write(key, value, 0)

    async def put(self, key: str, value: bytes) -> int:
        """Write `key` whatever it holds; returns the new revision."""
        with map_errors(f"KV {self.name}", timeout=Unavailable):
            return await self._kv.put(key, value)

    async def _publish_expecting(self, subject: str, value: bytes, last: int, headers: dict[str, str] | None) -> int:
        expected = {EXPECTED_LAST: str(last)}
        try:
            msg = await self._inbox.request(
                subject, value, timeout=self._timeout, headers={**headers, **expected} if headers else expected
            )
        except (MeshTimeout, NoResponders) as exc:
            raise Unavailable(f"KV {self.name} did not confirm the write: {exc.message}") from exc
        ack = orjson.loads(msg.data)
        error = ack.get("error")
        if error is None:
            return int(ack["seq"])
        if error.get("err_code") in (10071, 10164):
            raise StateConflict(f"{self.name}: {subject} changed since revision {last}")
        raise Unavailable(f"KV {self.name} refused the write: {error.get('description')}")

    async def _tombstone_revision(self, subject: str) -> int | None:
        with map_errors(f"KV {self.name}", timeout=Unavailable):
            try:
                msg = await self._js.get_msg(f"KV_{self.name}", subject=subject, direct=True)
            except jse.NotFoundError:
                return None
        headers = msg.headers or {}
        if headers.get("KV-Operation") not in _GONE and "Nats-Marker-Reason" not in headers:
            return None
        return msg.seq

    async def get_with_headers(self, key: str) -> tuple[bytes, int, dict[str, str]] | None:
        """Like `get`, plus the headers stored with the value (e.g. the processed-ids record)."""
        stream, subject = f"KV_{self.name}", f"$KV.{self.name}.{key}"
        with map_errors(f"KV {self.name}", timeout=Unavailable):
            try:
                try:
                    msg = await self._js.get_msg(stream, subject=subject, direct=True)
                except nats.errors.NoRespondersError:  # a bucket created without direct gets
                    msg = await self._js.get_msg(stream, subject=subject)
            except jse.NotFoundError:
                return None
        headers = dict(msg.headers or {})
        if headers.get("KV-Operation") in _GONE or "Nats-Marker-Reason" in headers or msg.seq is None:
            return None
        return msg.data or b"", msg.seq, headers

    async def write_with_headers(self, key: str, value: bytes, last: int, headers: dict[str, str]) -> int:
        """Compare-and-set like `write`, storing `headers` in the same message (so atomically)."""
        return await self.write(key, value, last, headers)

    async def put_with_ttl(self, key: str, value: bytes, ttl_seconds: int) -> int:
        with map_errors(f"KV {self.name}", timeout=Unavailable):
            ack = await self._js.publish(f"$KV.{self.name}.{key}", value, msg_ttl=ttl_seconds)
        return ack.seq

    async def delete(self, key: str, last: int | None = None) -> bool:
        """Delete, with compare-and-set when `last` is given; False when the key had moved on."""
        try:
            with map_errors(f"KV {self.name}", timeout=Unavailable):
                await self._kv.delete(key, last=last)
        except StateConflict:  # nats-py reports it as a plain BadRequestError (err_code 10071)
            return False
        return True

    async def keys(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        with map_errors(f"KV {self.name}", timeout=Unavailable):
            watcher = await self._kv.watch(f"{prefix}>" if prefix else ">", meta_only=True, ignore_deletes=True)
            try:
                async for entry in watcher:
                    if entry is None:
                        break
                    found.append(entry.key)
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]
        return found

    async def watch(self, key: str) -> Watch:
        """Follow `key`: its current state (if any), then None, then every later change."""
        with map_errors(f"KV {self.name}", timeout=Unavailable):
            return Watch(await self._kv.watch(key), self.name)


class Watch:
    """`async for change in watch`: `Change`s of one key, with None after the initial state; `stop()`."""

    def __init__(self, watcher: KeyValue.KeyWatcher, name: str) -> None:
        self._watcher = watcher
        self._name = name

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Change | None:
        entry = await self._watcher.__anext__()  # type: ignore[no-untyped-call]  # StopAsyncIteration once stopped
        if entry is None:
            return None
        gone = entry.operation is not None or entry.value is None
        return Change(entry.revision or 0, None if gone else entry.value)

    async def stop(self) -> None:
        with map_errors(f"KV {self._name}", timeout=Unavailable):
            await self._watcher.stop()  # type: ignore[no-untyped-call]


class Objects:
    """An object store bucket (large values, chunked) with the mesh's error mapping."""

    def __init__(self, store: ObjectStore, name: str) -> None:
        self._store = store
        self.name = name

    async def put(self, key: str, data: bytes) -> None:
        with map_errors(f"object store {self.name}", timeout=Unavailable):
            await self._store.put(key, data)

    async def get(self, key: str) -> bytes | None:
        with map_errors(f"object store {self.name}", timeout=Unavailable):
            try:
                result = await self._store.get(key)
            except jse.NotFoundError:
                return None
        return bytes(result.data or b"")

    async def delete(self, key: str) -> bool:
        """Remove `key`; False if there was none."""
        with map_errors(f"object store {self.name}", timeout=Unavailable):
            try:
                await self._store.delete(key)
            except jse.NotFoundError:
                return False
        return True


async def open_objects(js: JetStream, name: str, *, description: str | None = None) -> Objects:
    """Bind an object store bucket, creating it (file storage) the first time."""
    if isinstance(nc := getattr(js, "_nc", None), Connection):
        healer_of(nc).remember_stream(f"OBJ_{name}", functools.partial(open_objects, js, name, description=description))
    with map_errors(f"object store {name}", timeout=Unavailable):
        try:
            return Objects(await js.object_store(name), name)
        except jse.NotFoundError:  # BucketNotFoundError, or a stream lookup's plain 404
            pass
        config = ObjectStoreConfig(bucket=name, storage=StorageType.FILE, description=description)
        try:
            # nats-py overwrites config.bucket with the `bucket` argument, so pass both.
            return Objects(await js.create_object_store(bucket=name, config=config), name)
        except jse.BadRequestError:
            return Objects(await js.object_store(name), name)  # another process created it first

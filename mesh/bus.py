"""The one seam to nats-py: connecting, requests and KV, with NATS exceptions mapped to mesh ones."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors as jse
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue

from mesh.errors import ConnectionFailed, MeshTimeout, NoResponders, StateConflict, Unavailable
from mesh.inbox import NoReply, inbox_of


@dataclass(frozen=True)
class NatsOptions:
    """How to reach NATS: servers plus optional credentials (all plain values, read at the edge)."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    name: str = "agent-mesh"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    tls_ca_file: str | None = None  # trust this CA (otherwise the system's) for tls:// servers
    tls_cert_file: str | None = None  # client certificate, for servers that verify clients
    tls_key_file: str | None = None
    tls_hostname: str | None = None  # name to check in the server certificate, if not the URL's host
    connect_timeout: float = 2.0

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context these options ask for, or None to let nats-py decide from the URL scheme."""
        if not (self.tls_ca_file or self.tls_cert_file):
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca_file)
        if self.tls_cert_file:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context

    def __repr__(self) -> str:  # never show secrets, even in a traceback's locals
        return f"NatsOptions(servers={redact_servers(self.servers)!r}, name={self.name!r})"

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> NatsOptions:
        servers = tuple(u.strip() for u in url.split(",") if u.strip())
        return cls(servers=servers, **kwargs)


async def connect(options: NatsOptions, *, reconnect: bool = True) -> Client:
    """Connect with unlimited reconnects; a server that cannot be reached at all is a clear error."""
    kwargs: dict[str, Any] = {
        "servers": list(options.servers),
        "name": options.name,
        "connect_timeout": options.connect_timeout,
        # nats-py uses this bound for the first connect too; unbounded would retry a wrong URL forever.
        "max_reconnect_attempts": 2,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": reconnect,
    }
    if options.user:
        kwargs["user"] = options.user
        kwargs["password"] = options.password or ""
    if options.token:
        kwargs["token"] = options.token
    if options.creds_file:
        kwargs["user_credentials"] = options.creds_file
    if options.nkey_seed_file:
        kwargs["nkeys_seed"] = options.nkey_seed_file
    if (context := options.ssl_context()) is not None:
        kwargs["tls"] = context
    if options.tls_hostname:
        kwargs["tls_hostname"] = options.tls_hostname

    async def _quiet(_: Exception) -> None:
        return None

    kwargs["error_cb"] = _quiet
    where = ", ".join(redact_servers(options.servers))
    try:
        nc = await nats.connect(**kwargs)
    except (TimeoutError, nats.errors.NoServersError, OSError) as exc:
        raise ConnectionFailed(
            f"cannot connect to NATS at {where}: {_redact(str(exc)) or type(exc).__name__} "
            "(is a nats-server running there? `mesh up` starts one)"
        ) from None
    except Exception as exc:  # nats-py raises a variety of auth and protocol errors here
        raise ConnectionFailed(f"cannot connect to NATS at {where}: {_redact(str(exc))}") from None
    if reconnect:
        nc.options["max_reconnect_attempts"] = -1  # once connected, ride out any outage
    return nc


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def _redact(text: str) -> str:
    return _USERINFO.sub("***@", text)


def redact_servers(servers: tuple[str, ...] | list[str]) -> list[str]:
    """Server URLs fit for logs and error messages: `nats://user:pw@host` becomes `nats://***@host`."""
    return [_redact(s) for s in servers]


async def request(nc: Client, subject: str, data: bytes, *, timeout: float, headers: dict[str, str] | None = None) -> Msg:
    try:
        return await inbox_of(nc).request(subject, data, timeout=timeout, headers=headers)
    except NoReply as exc:
        raise NoResponders(f"no worker serves {subject}") from exc
    except TimeoutError as exc:
        raise MeshTimeout(f"no reply on {subject} within {timeout:.3g}s") from exc
    except nats.errors.ConnectionClosedError as exc:
        raise ConnectionFailed("NATS connection is closed") from exc


async def bind_bucket(js: JetStreamContext, bucket: str) -> KeyValue | None:
    """Bind an existing KV bucket, or None: readers (the CLI, clients) never create buckets, so
    none is ever created with another replica count than the workers'."""
    try:
        return await js.key_value(bucket)
    except jse.BucketNotFoundError:
        return None


async def open_bucket(js: JetStreamContext, bucket: str, *, history: int = 1, replicas: int = 1) -> KeyValue:
    """Bind a KV bucket, creating it (file storage, direct gets, `replicas` copies) the first time.

    An existing bucket is bound as it is: its replica count is fixed when it is first created, so
    on a cluster the first worker must already run with `replicas=3`.
    """
    try:
        return await js.key_value(bucket)
    except jse.BucketNotFoundError:
        pass
    except (nats.errors.TimeoutError, jse.ServiceUnavailableError) as exc:
        raise Unavailable(f"KV bucket {bucket} did not answer (JetStream leader election?): {exc}") from exc
    config = KeyValueConfig(bucket=bucket, history=history, storage=StorageType.FILE, direct=True, replicas=replicas)
    try:
        return await js.create_key_value(config)
    except jse.BadRequestError:
        return await js.key_value(bucket)  # another process created it with the same name first


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create a stream if it is missing; an existing one (maybe configured by an operator) is kept."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
        return
    except jse.NotFoundError:
        pass
    try:
        await js.add_stream(config)
    except jse.BadRequestError:
        await js.stream_info(config.name)  # another process created it first


_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"


class Bucket:
    """A KV bucket with the mesh's error mapping: conflicts are `StateConflict`, misses are None."""

    def __init__(self, kv: KeyValue, js: JetStreamContext, name: str, *, timeout: float = 5.0) -> None:
        self._kv = kv
        self._js = js
        self.name = name
        self._timeout = timeout

    async def get(self, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await self._kv.get(key)
        except jse.KeyNotFoundError:
            return None
        except (nats.errors.TimeoutError, jse.ServiceUnavailableError) as exc:
            raise Unavailable(f"KV {self.name} did not answer: {exc}") from exc
        if entry.value is None or entry.revision is None:
            return None  # an expiry marker (see NOTES 1.5) counts as absent
        return entry.value, entry.revision

    async def write(
        self, key: str, value: bytes, last: int, headers: dict[str, str] | None = None, *, fresh: bool = False
    ) -> int:
        """Compare-and-set: `last=0` means the key must not exist (or is deleted; with `fresh`, the
        key must never have been written at all). Returns the new revision.

        `headers` are stored in the same message as the value, so atomically with it. This is the
        hot path of every turn: one JetStream publish whose ack is parsed with orjson, skipping
        nats-py's key regex, PubAck dataclass and stdlib-json parsing.
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

    async def _publish_expecting(self, subject: str, value: bytes, last: int, headers: dict[str, str] | None) -> int:
        expected = {_EXPECTED_LAST: str(last)}
        try:
            msg = await inbox_of(self._js._nc).request(
                subject, value, timeout=self._timeout, headers={**headers, **expected} if headers else expected
            )
        except (TimeoutError, NoReply) as exc:
            raise Unavailable(f"KV {self.name} did not confirm the write: {exc or type(exc).__name__}") from exc
        ack = orjson.loads(msg.data)
        error = ack.get("error")
        if error is None:
            return int(ack["seq"])
        if error.get("err_code") in (10071, 10164):
            raise StateConflict(f"{self.name}: {subject} changed since revision {last}")
        raise Unavailable(f"KV {self.name} refused the write: {error.get('description')}")

    async def _tombstone_revision(self, subject: str) -> int | None:
        try:
            msg = await self._js.get_msg(f"KV_{self.name}", subject=subject, direct=True)
        except jse.NotFoundError:
            return None
        except (nats.errors.TimeoutError, jse.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
            raise Unavailable(f"KV {self.name} did not answer: {exc}") from exc
        if (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
            return None
        return msg.seq

    async def get_with_headers(self, key: str) -> tuple[bytes, int, dict[str, str]] | None:
        """Like `get`, plus the headers stored with the value (e.g. the processed-ids record)."""
        stream, subject = f"KV_{self.name}", f"$KV.{self.name}.{key}"
        try:
            try:
                msg = await self._js.get_msg(stream, subject=subject, direct=True)
            except nats.errors.NoRespondersError:  # a bucket created without direct gets
                msg = await self._js.get_msg(stream, subject=subject)
        except jse.NotFoundError:
            return None
        except (nats.errors.TimeoutError, jse.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
            raise Unavailable(f"KV {self.name} did not answer: {exc}") from exc
        headers = dict(msg.headers or {})
        if headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers or msg.seq is None:
            return None
        return msg.data or b"", msg.seq, headers

    async def write_with_headers(self, key: str, value: bytes, last: int, headers: dict[str, str]) -> int:
        """Compare-and-set like `write`, storing `headers` in the same message (so atomically)."""
        return await self.write(key, value, last, headers)

    async def put_with_ttl(self, key: str, value: bytes, ttl_seconds: int) -> int:
        ack = await self._js.publish(f"$KV.{self.name}.{key}", value, msg_ttl=ttl_seconds)
        return ack.seq

    async def delete(self, key: str, last: int | None = None) -> bool:
        """Delete, with compare-and-set when `last` is given; False when the key had moved on."""
        try:
            await self._kv.delete(key, last=last)
            return True
        except jse.BadRequestError:
            return False  # nats-py reports a CAS-delete conflict as a plain BadRequestError

    async def keys(self, prefix: str = "") -> list[str]:
        watcher = await self._kv.watch(f"{prefix}>" if prefix else ">", meta_only=True, ignore_deletes=True)
        found: list[str] = []
        try:
            async for entry in watcher:
                if entry is None:
                    break
                found.append(entry.key)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return found

    @property
    def kv(self) -> KeyValue:
        return self._kv

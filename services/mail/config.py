"""The mail service's configuration as plain values, built once from `MailSettings`."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from services.mail.settings import MailSettings


def split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """`host:port`, `host` or `[::1]:port` → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":") or default_port)
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host or "127.0.0.1", int(port)


@dataclass(frozen=True)
class MailConfig:
    """What the SMTP server, the processor and the outbox need to know."""

    domains: tuple[str, ...] = ("localhost",)
    host: str = "127.0.0.1"
    port: int = 2525
    hostname: str | None = None
    max_bytes: int = 10 * 1024 * 1024
    max_recipients: int = 20
    agent_types: tuple[str, ...] = ()
    relay: tuple[str, int] | None = None
    relay_user: str | None = None
    relay_password: str | None = field(default=None, repr=False)
    relay_starttls: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_tls: bool = False
    auth_user: str | None = None
    auth_password: str | None = field(default=None, repr=False)
    trusted_authserv: tuple[str, ...] = ()
    reply_limit: int = 10
    reply_window: float = 3600.0
    approvers: tuple[str, ...] = ()
    secret: bytes | None = field(default=None, repr=False)
    process: bool = True
    ack_wait: float = 30.0
    store_timeout: float = 5.0
    call_timeout: float = 300.0
    stream_limit: int = 512 * 1024
    """Raw mail up to this size is one stream message; larger mail goes to the object store."""

    @property
    def domain(self) -> str:
        """The mesh's own mail domain: agents' From addresses and reply Message-IDs use it."""
        return self.domains[0]

    @property
    def server_name(self) -> str:
        return self.hostname or self.domain

    def tls_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    @classmethod
    def from_settings(cls, s: MailSettings, *, agent_types: tuple[str, ...] = ()) -> MailConfig:
        """`agent_types` is the fallback allowlist when `MESH_SMTP_AGENT_TYPES` is empty (`mesh up`'s app)."""
        host, port = parse_hostport(s.listen, 2525) if s.listen != "off" else ("127.0.0.1", 0)
        return cls(
            domains=split_list(s.domains) or ("localhost",),
            host=host,
            port=port,
            hostname=s.hostname,
            max_bytes=s.max_bytes,
            max_recipients=s.max_recipients,
            agent_types=split_list(s.agent_types) or agent_types,
            relay=parse_hostport(s.relay, 25) if s.relay else None,
            relay_user=s.relay_user,
            relay_password=s.relay_password.get_secret_value() if s.relay_password else None,
            relay_starttls=s.relay_starttls,
            tls_cert=s.tls_cert,
            tls_key=s.tls_key,
            require_tls=s.require_tls,
            auth_user=s.auth_user,
            auth_password=s.auth_password.get_secret_value() if s.auth_password else None,
            trusted_authserv=split_list(s.trusted_authserv),
            reply_limit=s.reply_limit,
            reply_window=s.reply_window,
            approvers=split_list(s.approvers),
            secret=s.secret.get_secret_value().encode() if s.secret else None,
            process=s.process,
            ack_wait=s.ack_wait,
            store_timeout=s.store_timeout,
            call_timeout=s.call_timeout,
        )

"""The bridge's configuration as plain values, built once from `HttpSettings` at the edge."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TypedDict

from services.http.settings import HttpSettings, PhoneSettings


@dataclass(frozen=True)
class BridgeConfig:
    """Everything the HTTP bridge needs to know; see `HttpSettings` for what each knob means."""

    host: str = "127.0.0.1"
    port: int = 8080
    tokens: tuple[str, ...] = field(default=(), repr=False)
    cors_origins: tuple[str, ...] = ()
    max_body: int = 256 * 1024
    timeout: float = 30.0
    async_timeout: float = 600.0
    idempotency_ttl: int = 86400
    runs_ttl: int = 3600
    ticket_ttl: int = 60
    heartbeat: float = 15.0
    events_stream: str = "mesh_events"
    events_max_age: int = 3600
    discovery_wait: float = 0.3
    discovery_cache: float = 2.0
    lease_ttl: int = 6
    send_queue_bytes: int = 1024 * 1024
    public_url: str | None = None
    twilio_auth_token: str | None = field(default=None, repr=False)
    realtime_url: str | None = None
    realtime_model: str = "gpt-realtime"
    openai_api_key: str | None = field(default=None, repr=False)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens)


def parse_listen(value: str) -> tuple[str, int] | None:
    """`HOST:PORT` (or `:PORT`, or `PORT`) as a pair; `off` as None."""
    value = value.strip()
    if value.lower() in ("off", "no", "false", "0", ""):
        return None
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    try:
        number = int(port)
    except ValueError as exc:
        raise ValueError(f"--http {value!r} must look like HOST:PORT or off") from exc
    if not 0 <= number <= 65535:
        raise ValueError(f"--http port {number} is out of range")
    return (host.strip("[]") or "127.0.0.1"), number


def read_tokens(settings: HttpSettings) -> tuple[str, ...]:
    """Bearer tokens from `MESH_HTTP_TOKENS` (comma separated) and `MESH_HTTP_TOKENS_FILE` (one a line)."""
    tokens: list[str] = []
    if settings.tokens is not None:
        tokens += [t.strip() for t in settings.tokens.get_secret_value().split(",")]
    if settings.tokens_file is not None:
        lines = settings.tokens_file.read_text().splitlines()
        tokens += [line.strip() for line in lines if not line.lstrip().startswith("#")]
    return tuple(t for t in tokens if t)


def config_from_settings(settings: HttpSettings, listen: tuple[str, int] | None = None) -> BridgeConfig:
    host, port = listen or parse_listen(settings.listen) or ("127.0.0.1", 8080)
    return BridgeConfig(
        host=host,
        port=port,
        tokens=read_tokens(settings),
        cors_origins=tuple(o.strip().rstrip("/") for o in settings.cors_origins.split(",") if o.strip()),
        max_body=settings.max_body,
        timeout=settings.timeout,
        async_timeout=settings.async_timeout,
        idempotency_ttl=settings.idempotency_ttl,
        runs_ttl=settings.runs_ttl,
        ticket_ttl=settings.ticket_ttl,
        heartbeat=settings.heartbeat,
        events_stream=settings.events_stream,
        events_max_age=settings.events_max_age,
        lease_ttl=settings.lease_ttl,
        send_queue_bytes=settings.send_queue_bytes,
        **phone_values(PhoneSettings()),
    )


class PhoneValues(TypedDict):
    public_url: str | None
    twilio_auth_token: str | None
    realtime_url: str | None
    realtime_model: str
    openai_api_key: str | None


def phone_values(phone: PhoneSettings) -> PhoneValues:
    """The phone door's settings (`MESH_PUBLIC_URL`, `TWILIO_AUTH_TOKEN`, `MESH_REALTIME_*`, `OPENAI_API_KEY`)."""
    return {
        "public_url": phone.public_url.rstrip("/") if phone.public_url else None,
        "twilio_auth_token": (phone.twilio_auth_token.get_secret_value() or None) if phone.twilio_auth_token else None,
        "realtime_url": phone.realtime_url or None,
        "realtime_model": phone.realtime_model,
        "openai_api_key": (phone.openai_api_key.get_secret_value() or None) if phone.openai_api_key else None,
    }


def is_loopback(host: str) -> bool:
    """True only for addresses no other machine can reach: `localhost` and loopback IPs."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # a host name: it may resolve to anything
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


def exposure_problem(config: BridgeConfig) -> str | None:
    """Why the bridge must not serve as configured (protected mode, like Redis's), or None.

    A bridge reachable from other machines without a bearer token would give anyone there every
    agent, the tool calls they make and the model spend behind them.
    """
    if config.auth_enabled or is_loopback(config.host):
        return None
    return (
        f"refusing to serve the HTTP bridge on {config.host}:{config.port} without a bearer token: anyone who can "
        "reach that address could call every agent (and their tools and models). Set MESH_HTTP_TOKENS (or "
        "MESH_HTTP_TOKENS_FILE), listen on 127.0.0.1, or pass --insecure (MESH_HTTP_INSECURE=1) to serve it open anyway"
    )

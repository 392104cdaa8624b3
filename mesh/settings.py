"""Settings read from the environment once, at the edge (the CLI and `services/`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.bus import NatsOptions
from mesh.durable import DurableOptions
from mesh.runtime import RuntimeOptions


class MeshSettings(BaseSettings):
    """Every knob of a mesh process. Environment: `MESH_*`, plus `NATS_URL`."""

    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore")

    nats_url: str | None = Field(
        default=None, validation_alias=AliasChoices("NATS_URL", "MESH_NATS_URL"),
        description="Existing NATS server(s), comma separated; unset means start an embedded server.",
    )
    nats_port: int = Field(default=4222, description="Port of the embedded nats-server.")
    store: Path = Field(default=Path(".mesh"), description="Store directory of the embedded nats-server.")
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None
    nats_creds: str | None = Field(default=None, description="Path of a .creds file (JWT + NKey).")
    nats_nkey_seed: str | None = Field(default=None, description="Path of an NKey seed file.")
    app: str = Field(default="services.demo", description="Module (or module:attribute) listing the agent classes.")
    log_format: str = Field(default="console", pattern="^(console|json)$")
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    max_request_bytes: int = 256 * 1024
    max_state_bytes: int = 512 * 1024
    idle_timeout: float = 300.0
    lease_ttl: int = Field(default=6, ge=2)
    call_timeout: float = 30.0
    shutdown_grace: float = Field(default=10.0, description="Seconds a stopping worker lets in-flight turns finish.")
    replicas: int = Field(default=1, ge=1, description="Replicas of the streams a worker creates (3 on a cluster).")
    durable_max_attempts: int = Field(default=5, ge=1, description="Deliveries of a failing message before it is dead-lettered.")
    durable_backoff: str = Field(default="1,2,5,10,30", description="Seconds before each redelivery, comma separated.")
    durable_ack_wait: float = Field(default=10.0, gt=0, description="Seconds before JetStream redelivers a silent delivery.")
    durable_turn_timeout: float = Field(default=30.0, gt=0, description="Seconds a delivery waits for its turn.")

    # HTTP bridge (services/http): `mesh up` serves it unless http is "off"; `mesh http` always does.
    http: str = Field(default="127.0.0.1:8080", description="HOST:PORT of the HTTP bridge, or off.")
    http_tokens: SecretStr | None = Field(
        default=None, description="Bearer tokens, comma separated; unset and no file = no auth."
    )
    http_tokens_file: Path | None = Field(default=None, description="File with one bearer token per line.")
    http_cors_origins: str = Field(
        default="", description="Allowed browser origins, comma separated (CORS and WebSocket Origin)."
    )
    http_max_body: int = Field(default=256 * 1024, ge=1, description="Request body limit in bytes (kept below NATS max_payload).")
    http_timeout: float = Field(default=30.0, gt=0, description="Longest wait for an agent's reply to a synchronous request.")
    http_async_timeout: float = Field(default=600.0, gt=0, description="Longest wait for a `Prefer: respond-async` run.")
    http_idempotency_ttl: int = Field(default=86400, ge=1, description="Seconds a response is kept for its Idempotency-Key.")
    http_runs_ttl: int = Field(default=3600, ge=1, description="Seconds an async run's result is kept for polling.")
    http_ticket_ttl: int = Field(default=60, ge=1, description="Seconds a browser ticket for SSE/WebSocket is valid.")
    http_heartbeat: float = Field(default=15.0, gt=0, description="Seconds between keep-alive messages on idle live connections.")
    http_events_stream: str = Field(
        default="mesh_events", description="JetStream stream that keeps `events.>` for resuming; empty = none."
    )
    http_events_max_age: int = Field(default=3600, ge=1, description="Seconds the events stream keeps an event.")

    def nats_options(self, url: str, name: str) -> NatsOptions:
        return NatsOptions.from_url(
            url, name=name, user=self.nats_user,
            password=self.nats_password.get_secret_value() if self.nats_password else None,
            token=self.nats_token.get_secret_value() if self.nats_token else None,
            creds_file=self.nats_creds, nkey_seed_file=self.nats_nkey_seed,
        )

    def durable_options(self) -> DurableOptions:
        backoff = tuple(float(x) for x in self.durable_backoff.split(",") if x.strip())
        return DurableOptions(
            max_attempts=self.durable_max_attempts, backoff=backoff, ack_wait=self.durable_ack_wait,
            turn_timeout=self.durable_turn_timeout, replicas=self.replicas,
        )

    def runtime_options(self) -> RuntimeOptions:
        return RuntimeOptions(
            max_request_bytes=self.max_request_bytes, max_state_bytes=self.max_state_bytes,
            idle_timeout=self.idle_timeout, lease_ttl=self.lease_ttl, call_timeout=self.call_timeout,
        )

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
        default=None,
        validation_alias=AliasChoices("NATS_URL", "MESH_NATS_URL"),
        description="Existing NATS server(s), comma separated; unset means start an embedded server.",
    )
    nats_port: int = Field(default=4222, description="Port of the embedded nats-server.")
    store: Path = Field(default=Path(".mesh"), description="Store directory of the embedded nats-server.")
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None
    nats_creds: str | None = Field(default=None, description="Path of a .creds file (JWT + NKey).")
    nats_nkey_seed: str | None = Field(default=None, description="Path of an NKey seed file.")
    nats_tls_ca: str | None = Field(default=None, description="CA file that signed the NATS servers' certificates.")
    nats_tls_cert: str | None = Field(default=None, description="Client certificate file (servers with `verify: true`).")
    nats_tls_key: str | None = Field(default=None, description="Private key file of the client certificate.")
    nats_tls_hostname: str | None = Field(default=None, description="Server name to verify, if not the URL's host.")
    replicas: int = Field(default=1, ge=1, description="Replicas of the buckets and streams a worker creates (3 on a cluster).")
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port of this process's /metrics, /healthz and /readyz; unset = not served.",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address the metrics port binds (0.0.0.0 in containers).")
    recorder: bool = Field(default=True, description="Publish turn and state events to the flight recorder.")
    events_max_age: float = Field(default=7 * 86400, gt=0, description="Seconds the events stream keeps an event.")
    events_max_msgs: int = Field(default=1_000_000, ge=1, description="Events the events stream keeps at most.")
    events_max_bytes: int = Field(default=1024**3, ge=1024, description="Bytes the events stream keeps at most.")
    otel: bool = Field(default=False, description="Export turns as OpenTelemetry spans (needs opentelemetry-sdk).")
    app: str = Field(default="services.demo", description="Module (or module:attribute) listing the agent classes.")
    log_format: str = Field(default="console", pattern="^(console|json)$")
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    max_request_bytes: int = 256 * 1024
    max_state_bytes: int = 512 * 1024
    idle_timeout: float = 300.0
    lease_ttl: int = Field(default=6, ge=2)
    call_timeout: float = 30.0
    shutdown_grace: float = Field(default=10.0, description="Seconds a stopping worker lets in-flight turns finish.")
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
            url,
            name=name,
            user=self.nats_user,
            password=self.nats_password.get_secret_value() if self.nats_password else None,
            token=self.nats_token.get_secret_value() if self.nats_token else None,
            creds_file=self.nats_creds,
            nkey_seed_file=self.nats_nkey_seed,
            tls_ca_file=self.nats_tls_ca,
            tls_cert_file=self.nats_tls_cert,
            tls_key_file=self.nats_tls_key,
            tls_hostname=self.nats_tls_hostname,
        )

    def durable_options(self) -> DurableOptions:
        backoff = tuple(float(x) for x in self.durable_backoff.split(",") if x.strip())
        return DurableOptions(
            max_attempts=self.durable_max_attempts,
            backoff=backoff,
            ack_wait=self.durable_ack_wait,
            turn_timeout=self.durable_turn_timeout,
            replicas=self.replicas,
        )

    def runtime_options(self) -> RuntimeOptions:
        return RuntimeOptions(
            max_request_bytes=self.max_request_bytes,
            max_state_bytes=self.max_state_bytes,
            idle_timeout=self.idle_timeout,
            lease_ttl=self.lease_ttl,
            call_timeout=self.call_timeout,
            replicas=self.replicas,
        )


class MailSettings(BaseSettings):
    """The SMTP ingestion service (`mesh smtp`, and `mesh up` unless `--smtp off`). Environment: `MESH_SMTP_*`.

    Lists are comma separated. Secrets are `SecretStr` and never logged.
    """

    model_config = SettingsConfigDict(env_prefix="MESH_SMTP_", extra="ignore")

    listen: str = Field(default="127.0.0.1:2525", description="HOST:PORT to accept mail on, or `off`.")
    domains: str = Field(default="localhost", description="Accepted recipient domains; the first one signs replies.")
    hostname: str | None = Field(default=None, description="Name in the SMTP greeting (default: the first domain).")
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Larger mail is refused with 552.")
    max_recipients: int = Field(default=20, ge=1, description="More RCPT TO are refused with 452.")
    agent_types: str = Field(default="", description="Agent types mail may reach; empty: every type the mesh serves.")
    relay: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MESH_SMTP_RELAY"),
        description="HOST:PORT of the relay replies are sent through; unset: replies wait in the outbox.",
    )
    relay_user: str | None = None
    relay_password: SecretStr | None = None
    relay_starttls: bool = Field(default=False, description="Upgrade the relay connection with STARTTLS.")
    tls_cert: Path | None = Field(default=None, description="Certificate offered with STARTTLS (with tls_key).")
    tls_key: Path | None = None
    require_tls: bool = Field(default=False, description="Refuse mail before STARTTLS.")
    auth_user: str | None = Field(default=None, description="Require AUTH with this user (relaying setups).")
    auth_password: SecretStr | None = None
    trusted_authserv: str = Field(default="", description="authserv-ids whose Authentication-Results are believed.")
    reply_limit: int = Field(default=10, ge=0, description="Replies per sender per reply_window.")
    reply_window: float = Field(default=3600.0, gt=0)
    approvers: str = Field(default="", description="Addresses that may approve or reject by mail.")
    secret: SecretStr | None = Field(default=None, description="Key that signs approval reply addresses.")
    process: bool = Field(default=True, description="Process accepted mail here (false: accept and store only).")
    ack_wait: float = Field(default=30.0, ge=1, description="Seconds before an unacknowledged mail is redelivered.")
    store_timeout: float = Field(default=5.0, gt=0, description="Seconds to wait for JetStream before answering 451.")
    call_timeout: float = Field(default=300.0, gt=0, description="Seconds an agent may take to answer a mail.")


class LLMSettings(BaseSettings):
    """How LLM agents reach a model. Environment: `OPENAI_API_KEY`, `OPENAI_BASE_URL`, `MESH_*`.

    Nothing set means the deterministic offline demo model (labelled in replies and logs).
    """

    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore")

    openai_api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_BASE_URL"),
        description="Any OpenAI-compatible server (vLLM, Ollama, llama.cpp); used through Chat Completions.",
    )
    model: str | None = Field(default=None, description="Model name (MESH_MODEL).")
    approval_ttl: float = Field(default=3600.0, gt=0, description="Seconds before a pending approval is rejected.")
    memory_max_items: int = Field(default=1000, ge=2, description="Conversation items kept per instance.")
    openai_tracing: bool = Field(default=False, description="Also upload SDK traces to OpenAI (MESH_OPENAI_TRACING).")

    def api_key(self) -> str | None:
        return self.openai_api_key.get_secret_value() if self.openai_api_key else None

"""Settings of a mesh process, read from the environment once, at the edge (the `mesh` command).

The library (`mesh/`) takes plain values (`NatsOptions`, `RuntimeOptions`, `DurableOptions`);
these classes are where environment variables become those values. The HTTP bridge and the mail
service keep their own knobs next to them (`services/http/settings.py`, `services/mail/settings.py`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.bus import NatsOptions
from mesh.durable import DurableOptions
from mesh.runtime import RuntimeOptions

DEFAULT_URL = "nats://127.0.0.1:4222"
"""Where the commands that need a server look for it when neither `--nats-url` nor `NATS_URL` says."""


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
    nats_ping_interval: float = Field(
        default=10.0, gt=0, description="Seconds between pings; a server silent for 3 in a row is left for another."
    )
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
    max_clock_skew: float = Field(
        default=0.5, ge=0, description="Seconds a caller's clock may be ahead of this worker's (Mesh-Deadline)."
    )
    shutdown_grace: float = Field(default=10.0, description="Seconds a stopping worker lets in-flight turns finish.")
    durable_max_attempts: int = Field(default=5, ge=1, description="Deliveries of a failing message before it is dead-lettered.")
    durable_backoff: str = Field(default="1,2,5,10,30", description="Seconds before each redelivery, comma separated.")
    durable_ack_wait: float = Field(default=10.0, gt=0, description="Seconds before JetStream redelivers a silent delivery.")
    durable_turn_timeout: float = Field(default=30.0, gt=0, description="Seconds a delivery waits for its turn.")

    def url(self) -> str:
        """The NATS URL(s) to connect to: the configured ones, else a local server on the default port."""
        return self.nats_url or DEFAULT_URL

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
            ping_interval=self.nats_ping_interval,
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
            max_clock_skew=self.max_clock_skew,
        )


class LLMSettings(BaseSettings):
    """How the demo LLM agents reach a model. Environment: `OPENAI_API_KEY`, `OPENAI_BASE_URL`, `MESH_*`.

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
    demo_mcp_url: str | None = Field(
        default=None,
        description="The demo calculator MCP server the triage Math Tutor calls (MESH_DEMO_MCP_URL); unset: `mesh up` "
        "serves one on 127.0.0.1 and other workers go without; `off`: none.",
    )

    def api_key(self) -> str | None:
        return self.openai_api_key.get_secret_value() if self.openai_api_key else None

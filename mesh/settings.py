"""Settings read from the environment once, at the edge (the CLI and `services/`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.bus import NatsOptions
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

    def nats_options(self, url: str, name: str) -> NatsOptions:
        return NatsOptions.from_url(
            url, name=name, user=self.nats_user,
            password=self.nats_password.get_secret_value() if self.nats_password else None,
            token=self.nats_token.get_secret_value() if self.nats_token else None,
            creds_file=self.nats_creds, nkey_seed_file=self.nats_nkey_seed,
        )

    def runtime_options(self) -> RuntimeOptions:
        return RuntimeOptions(
            max_request_bytes=self.max_request_bytes, max_state_bytes=self.max_state_bytes,
            idle_timeout=self.idle_timeout, lease_ttl=self.lease_ttl, call_timeout=self.call_timeout,
        )


class LLMSettings(BaseSettings):
    """How LLM agents reach a model. Environment: `OPENAI_API_KEY`, `OPENAI_BASE_URL`, `MESH_*`.

    Nothing set means the deterministic offline demo model (labelled in replies and logs).
    """

    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore")

    openai_api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL"),
        description="Any OpenAI-compatible server (vLLM, Ollama, llama.cpp); used through Chat Completions.",
    )
    model: str | None = Field(default=None, description="Model name (MESH_MODEL).")
    approval_ttl: float = Field(default=3600.0, gt=0, description="Seconds before a pending approval is rejected.")
    memory_max_items: int = Field(default=1000, ge=2, description="Conversation items kept per instance.")
    openai_tracing: bool = Field(default=False, description="Also upload SDK traces to OpenAI (MESH_OPENAI_TRACING).")

    def api_key(self) -> str | None:
        return self.openai_api_key.get_secret_value() if self.openai_api_key else None

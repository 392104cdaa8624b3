"""The HTTP bridge's settings, read from the environment at the edge: `MESH_HTTP` and `MESH_HTTP_*`."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class HttpSettings(BaseSettings):
    """`mesh up` serves the bridge unless `listen` is off; `mesh http` always does."""

    model_config = SettingsConfigDict(env_prefix="MESH_HTTP_", extra="ignore", populate_by_name=True)

    listen: str = Field(
        default="127.0.0.1:8080",
        validation_alias=AliasChoices("MESH_HTTP"),
        description="HOST:PORT of the HTTP bridge, or off (MESH_HTTP).",
    )
    tokens: SecretStr | None = Field(default=None, description="Bearer tokens, comma separated; unset and no file = no auth.")
    tokens_file: Path | None = Field(default=None, description="File with one bearer token per line.")
    insecure: bool = Field(
        default=False, description="Serve on a non-loopback address without bearer tokens (as --insecure; MESH_HTTP_INSECURE)."
    )
    cors_origins: str = Field(default="", description="Allowed browser origins, comma separated (CORS and WebSocket Origin).")
    max_body: int = Field(default=256 * 1024, ge=1, description="Request body limit in bytes (kept below NATS max_payload).")
    timeout: float = Field(default=30.0, gt=0, description="Longest wait for an agent's reply to a synchronous request.")
    async_timeout: float = Field(default=600.0, gt=0, description="Longest wait for a `Prefer: respond-async` run.")
    idempotency_ttl: int = Field(default=86400, ge=1, description="Seconds a response is kept for its Idempotency-Key.")
    runs_ttl: int = Field(default=3600, ge=1, description="Seconds an async run's result is kept for polling.")
    ticket_ttl: int = Field(default=60, ge=1, description="Seconds a browser ticket for SSE/WebSocket is valid.")
    heartbeat: float = Field(default=15.0, gt=0, description="Seconds between keep-alive messages on idle live connections.")
    events_stream: str = Field(
        default="mesh_events", description="JetStream stream that keeps `events.>` for resuming; empty = none."
    )
    events_max_age: int = Field(default=3600, ge=1, description="Seconds the events stream keeps an event.")
    lease_ttl: int = Field(default=6, ge=2, description="Seconds before a dead bridge's connections are closed for good.")
    send_queue_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Bytes queued for one slow WebSocket client before it is closed with 1013."
    )


class PhoneSettings(BaseSettings):
    """The phone door (`/call`, `/media-stream`): Twilio and the realtime model, from the environment."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    public_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MESH_PUBLIC_URL"),
        description="Base URL Twilio reaches the bridge at (the stream URL and signatures use it).",
    )
    twilio_auth_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TWILIO_AUTH_TOKEN"),
        description="Twilio auth token: every webhook and stream must then carry a valid X-Twilio-Signature.",
    )
    realtime_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MESH_REALTIME_URL"),
        description="WebSocket URL of the realtime model; unset: OpenAI with OPENAI_API_KEY, else the local offline stub.",
    )
    realtime_model: str = Field(
        default="gpt-realtime", validation_alias=AliasChoices("MESH_REALTIME_MODEL"), description="The realtime model's name."
    )
    openai_api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("OPENAI_API_KEY"))

"""The mail service's settings, read from the environment at the edge: `MESH_SMTP_*`."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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

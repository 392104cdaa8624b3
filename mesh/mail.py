"""What an agent receives when a person writes to it by e-mail (see `services/mail`).

The mail service sends an `InboundEmail` as the request body with the header `Mesh-Mail: 1`. A
worker then calls the agent's `on_email(mail)` hook; the default hook passes the mail's clean text
to `on_request`, which is what an LLM agent expects (a user message). Override `on_email` to handle
mail your own way; return a string (the reply's text), None (no reply) or any JSON value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Attachment(BaseModel):
    """Metadata of one attachment; its content stays in the stored raw message."""

    model_config = ConfigDict(extra="forbid")
    filename: str | None = None
    content_type: str
    size: int = Field(description="Decoded size in bytes.")
    content_id: str | None = None


class SenderAuth(BaseModel):
    """The sender-authentication verdict a trusted front server recorded in `Authentication-Results`."""

    model_config = ConfigDict(extra="forbid")
    authserv_id: str | None = Field(default=None, description="The trusted server that added the header.")
    spf: str | None = None
    dkim: str | None = None
    dmarc: str | None = None
    verdict: Literal["pass", "fail", "none"] = Field(
        default="none",
        description="`pass` when DMARC passed (or SPF/DKIM passed without DMARC), `fail` when "
        "DMARC failed, `none` when no trusted server said anything.",
    )


class InboundEmail(BaseModel):
    """A received mail as a clean request: who, what, which thread, and the text without quotes."""

    model_config = ConfigDict(extra="forbid")
    mail_id: str = Field(description="The mesh's id of this delivery (stable across redeliveries).")
    sender: str = Field(description="Envelope sender (MAIL FROM); empty for the null sender (bounces).")
    from_address: str | None = Field(default=None, description="Address in the From header.")
    from_name: str | None = None
    recipients: list[str] = Field(description="Envelope recipients (RCPT TO) routed to this agent instance.")
    to: list[str] = Field(default_factory=list, description="Addresses in the To and Cc headers.")
    subject: str = ""
    message_id: str | None = Field(default=None, description="The sender's Message-ID, without angle brackets.")
    in_reply_to: str | None = None
    references: list[str] = Field(default_factory=list)
    date: str | None = None
    text: str = Field(description="Plain text: text/plain preferred, HTML converted, quoted replies stripped.")
    full_text: str = Field(default="", description="The plain text before quoted replies were stripped.")
    attachments: list[Attachment] = Field(default_factory=list)
    auth: SenderAuth = Field(default_factory=SenderAuth)
    automatic: bool = Field(default=False, description="An auto-reply, list mail or delivery report (RFC 3834).")
    automatic_reason: str | None = None
    defects: list[str] = Field(default_factory=list, description="MIME problems the parser worked around.")

"""Raw RFC 5322 bytes to an `InboundEmail`: best-effort text, or a clear reason to refuse.

The standard library's `email` package with `policy.default` does the MIME work; every step that
real-world mail can break (a header the modern parser chokes on, an unknown or wrong charset, a
truncated base64 part) has a fallback, so parsing never raises anything but `Unparseable`.
"""

from __future__ import annotations

import codecs
import email.header
import email.utils
import re
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Literal

from mesh.mail import Attachment, InboundEmail, SenderAuth
from services.mail.html import html_to_text

MAX_TEXT = 64 * 1024
"""Characters of body text an agent receives (the rest is in the stored raw message)."""
MAX_PARTS = 500


class Unparseable(Exception):
    """The bytes are not a mail message at all; the SMTP reply is 554 5.6.0."""


def parse_message(
    raw: bytes, *, mail_id: str, sender: str, recipients: list[str], trusted_authserv: tuple[str, ...] = ()
) -> InboundEmail:
    """Parse one message (raises `Unparseable` only when nothing sensible can be made of it)."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    legacy = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    if not legacy.keys():
        raise Unparseable("the message has no header fields")
    headers = _Headers(message, legacy)
    defects = [type(d).__name__ for d in message.defects][:20]
    parts = list(_walk(message))
    if len(parts) > MAX_PARTS:
        raise Unparseable(f"the message has more than {MAX_PARTS} MIME parts")
    full_text = _body_text(message, parts, defects)[:MAX_TEXT]
    from_name, from_address = _first_address(headers.get("From"))
    automatic_reason = automatic_reason_of(headers, sender, from_address, parts)
    return InboundEmail(
        mail_id=mail_id,
        sender=sender,
        from_address=from_address,
        from_name=from_name,
        recipients=recipients,
        to=[a for _, a in email.utils.getaddresses(headers.get_all("To") + headers.get_all("Cc")) if a][:100],
        subject=" ".join((headers.get("Subject") or "").split())[:998],
        message_id=clean_id(headers.get("Message-ID")),
        in_reply_to=clean_id(headers.get("In-Reply-To")),
        references=message_ids(headers.get("References") or "")[-50:],
        date=headers.get("Date"),
        text=strip_quoted(full_text),
        full_text=full_text,
        attachments=_attachments(parts),
        auth=auth_verdict(headers.get_all("Authentication-Results"), trusted_authserv),
        automatic=automatic_reason is not None,
        automatic_reason=automatic_reason,
        defects=defects,
    )


def accept_check(raw: bytes) -> str | None:
    """What the SMTP service must know before it answers 250: that the bytes are a message it will
    be able to process, and the Message-ID it deduplicates by. Returns that Message-ID (or None).

    Only the header section is parsed (with the lenient legacy policy): the full MIME parse with the
    modern policy was 63 % of the service's CPU per accepted mail, and the processor does it anyway.
    A message that may have more MIME parts than `parse_message` accepts is fully parsed here, so it
    is still refused during the SMTP session instead of being dropped later.
    """
    legacy = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    if not legacy.keys():
        raise Unparseable("the message has no header fields")
    if raw.count(b"--") + raw.count(b"822") > MAX_PARTS:  # boundaries, message/rfc822: maybe too many parts
        parse_message(raw, mail_id="-", sender="", recipients=[])
    value = legacy.get("Message-ID")
    return clean_id(_decode_legacy(value)) if value is not None else None


class _Headers:
    """Header values as text: the modern parser first, the legacy one (and RFC 2047 decoding) on failure."""

    def __init__(self, message: EmailMessage, legacy: Message) -> None:
        self._message = message
        self._legacy = legacy

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        try:
            values = [str(v) for v in self._message.get_all(name) or []]
        except Exception:
            return [_decode_legacy(v) for v in self._legacy.get_all(name) or []]
        if any("\ufffd" in v for v in values):
            # Raw 8-bit bytes in a header (no RFC 2047): UTF-8 if they are, else Windows-1252.
            raws = [v for k, v in self._legacy.raw_items() if k.lower() == name.lower()]
            if len(raws) == len(values):
                values = [_decode_8bit(r) if "\ufffd" in v else v for v, r in zip(values, raws, strict=True)]
        return values

    def has(self, name: str) -> bool:
        return name in self._legacy


def _decode_legacy(value: object) -> str:
    text = str(value)
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:
        return text


def _decode_8bit(raw: object) -> str:
    data = str(raw).encode("ascii", "surrogateescape")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    return _decode_legacy(" ".join(text.split()))


def _walk(message: Message) -> list[Message]:
    try:
        return list(message.walk())
    except Exception:
        return [message]


def clean_id(value: str | None) -> str | None:
    if not value:
        return None
    found = message_ids(value)
    if found:
        return found[0]
    value = value.strip().strip("<>").strip()
    return value[:998] or None


def message_ids(value: str) -> list[str]:
    return [m for m in re.findall(r"<([^<>\s]+)>", value)]


def _first_address(value: str | None) -> tuple[str | None, str | None]:
    if not value:
        return None, None
    found = [(n, a) for n, a in email.utils.getaddresses([value]) if a]
    if not found:
        return None, None
    name, address = found[0]
    return name or None, address


# -- body -----------------------------------------------------------------------------------------


def _body_text(message: EmailMessage, parts: list[Message], defects: list[str]) -> str:
    body: Message | None = None
    try:
        body = message.get_body(preferencelist=("plain", "html"))
    except Exception:
        defects.append("BodyLookupFailed")
    if body is None:
        # get_body skips parts it considers attachments; take the first inline text part instead.
        body = next((p for p in parts if p.get_content_maintype() == "text" and not _is_attachment(p)), None)
    if body is None and isinstance(message.get_payload(), str):
        body = message  # a "multipart" without a boundary (or an odd type): its content is still text
    if body is None:
        return ""
    text = decode_text(body, defects)
    if body.get_content_subtype() == "html":
        text = html_to_text(text)
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def decode_text(part: Message, defects: list[str]) -> str:
    """A text part's content: the declared charset, else UTF-8, else Windows-1252 (which never fails)."""
    try:
        decoded = part.get_payload(decode=True)
    except Exception:
        decoded = None
    if isinstance(decoded, bytes):
        payload = decoded
    else:
        raw = part.get_payload()
        payload = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
    charset = (part.get_content_charset() or "").strip().lower()
    candidates = [c for c in (charset, "utf-8", "cp1252") if c and _known_codec(c)]
    if charset and not _known_codec(charset):
        defects.append(f"UnknownCharset:{charset[:40]}")
    for candidate in candidates:
        try:
            return payload.decode(candidate)
        except UnicodeDecodeError:
            if candidate == charset:
                defects.append(f"WrongCharset:{charset[:40]}")
    return payload.decode("latin-1")


def _known_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
        return True
    except LookupError:
        return False


def _is_attachment(part: Message) -> bool:
    try:
        disposition = (part.get_content_disposition() or "").lower()
    except Exception:
        disposition = ""
    return disposition == "attachment" or (part.get_filename() is not None and disposition != "inline")


def _attachments(parts: list[Message]) -> list[Attachment]:
    found = []
    for part in parts:
        maintype = part.get_content_maintype()
        if part.is_multipart() or maintype in ("multipart", "message"):
            continue
        if not (_is_attachment(part) or maintype not in ("text",)):
            continue
        try:
            payload = part.get_payload(decode=True) or b""
        except Exception:
            payload = b""
        try:
            filename = part.get_filename()
        except Exception:
            filename = None
        found.append(
            Attachment(
                filename=str(filename)[:255] if filename else None,
                content_type=part.get_content_type(),
                size=len(payload),
                content_id=clean_id(part.get("Content-ID")) if part.get("Content-ID") else None,
            )
        )
    return found[:100]


# -- quoted replies -------------------------------------------------------------------------------

_ATTRIBUTION = re.compile(
    r"^\s*(On\b.{0,300}\bwrote:|Le\b.{0,300}\ba écrit\s*:|Am\b.{0,300}\bschrieb\b.{0,100}:"
    r"|-{2,}\s*Original Message\s*-{2,}|-{2,}\s*Forwarded message\s*-{2,}|_{20,})\s*$",
    re.IGNORECASE | re.DOTALL,
)
_OUTLOOK_HEADER = re.compile(r"^\s*\*?From:\*?\s.+$", re.IGNORECASE)


def strip_quoted(text: str) -> str:
    """The new part of a reply: drops `>` quotes, everything after an attribution line, and the signature."""
    lines = text.split("\n")
    kept: list[str] = []
    for i, line in enumerate(lines):
        joined = line if i + 1 >= len(lines) else f"{line} {lines[i + 1]}"
        if _ATTRIBUTION.match(line) or (_ATTRIBUTION.match(joined) and lines[i + 1].strip().endswith(":")):
            break
        if _OUTLOOK_HEADER.match(line) and kept and not kept[-1].strip() and _looks_like_header_block(lines[i:]):
            break
        if line.rstrip() == "--":  # "-- " signature separator (trailing space often lost)
            break
        if line.lstrip().startswith(">"):
            continue
        kept.append(line)
    stripped = "\n".join(kept).strip()
    return stripped or text.strip()


def _looks_like_header_block(lines: list[str]) -> bool:
    head = [line.strip().lower() for line in lines[:5]]
    return sum(1 for line in head if line.lstrip("*").startswith(("sent:", "to:", "subject:", "date:"))) >= 2


# -- loop safety and authentication ---------------------------------------------------------------


def automatic_reason_of(headers: _Headers, sender: str, from_address: str | None, parts: list[Message]) -> str | None:
    """Why this mail must get no auto-reply (RFC 3834 and common practice), or None."""
    auto = (headers.get("Auto-Submitted") or "").strip().lower()
    if auto and auto.split(";")[0].strip() != "no":
        return f"auto-submitted: {auto[:40]}"
    precedence = (headers.get("Precedence") or "").strip().lower()
    if precedence in ("bulk", "junk", "list"):
        return f"precedence: {precedence}"
    for name in ("List-Id", "List-Unsubscribe", "List-Post", "List-Help", "List-Subscribe", "List-Owner"):
        if headers.has(name):
            return f"mailing list ({name})"
    suppress = (headers.get("X-Auto-Response-Suppress") or "").strip().lower()
    if suppress and suppress != "none":
        return f"x-auto-response-suppress: {suppress[:40]}"
    for name in ("X-Autoreply", "X-Autorespond"):
        if headers.has(name):
            return name.lower()
    if not sender:
        return "null sender"
    for address in (sender, from_address or ""):
        local = address.rpartition("@")[0].lower()
        if local in ("mailer-daemon", "postmaster"):
            return f"system sender ({local})"
    for part in parts:
        content_type = part.get_content_type()
        if content_type in ("multipart/report", "message/delivery-status", "message/disposition-notification"):
            return f"delivery report ({content_type})"
    return None


def auth_verdict(values: list[str], trusted: tuple[str, ...]) -> SenderAuth:
    """The verdict of the topmost `Authentication-Results` whose authserv-id is trusted (RFC 8601)."""
    for value in values:
        authserv, _, rest = value.partition(";")
        authserv_id = authserv.strip().split()[0].lower() if authserv.strip() else ""
        if authserv_id not in trusted:
            continue
        results = {m.group(1).lower(): m.group(2).lower() for m in re.finditer(r"\b(spf|dkim|dmarc)\s*=\s*(\w+)", rest)}
        dmarc, spf, dkim = results.get("dmarc"), results.get("spf"), results.get("dkim")
        verdict: Literal["pass", "fail", "none"]
        if dmarc is not None:
            verdict = "pass" if dmarc == "pass" else "fail"
        elif "pass" in (spf, dkim):
            verdict = "pass"
        elif spf or dkim:
            verdict = "fail"
        else:
            verdict = "none"
        return SenderAuth(authserv_id=authserv_id, spf=spf, dkim=dkim, dmarc=dmarc, verdict=verdict)
    return SenderAuth()

"""Who may use the bridge: bearer tokens, short-lived tickets for browsers, and allowed origins.

Tokens are compared in constant time against every configured token. Browsers cannot set an
`Authorization` header on `EventSource` or `WebSocket`, so they trade their token for a ticket
(`POST /auth/tickets`) and pass it as `?ticket=`. A ticket is an expiry signed with HMAC under a
key derived from the configured tokens, so every replica with the same tokens accepts it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from urllib.parse import urlsplit

import orjson
from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from services.http.errors import Forbidden, Unauthorized
from services.http.problems import problem

PUBLIC_PREFIXES = ("/static/", "/ui/")
PUBLIC_PATHS = frozenset({"/", "/ui", "/client.js", "/docs", "/healthz", "/favicon.ico"})


def is_live_path(path: str) -> bool:
    return path.startswith("/agents/") and path.endswith(("/events", "/ws", "/connect", "/media-stream"))


def is_phone_path(path: str) -> bool:
    """Twilio's routes: with `TWILIO_AUTH_TOKEN` set, its signature is what authenticates them."""
    return path.startswith("/agents/") and path.endswith(("/call", "/media-stream"))


class Auth:
    def __init__(self, tokens: tuple[str, ...], ticket_ttl: int) -> None:
        self.tokens = [t.encode() for t in tokens]
        self.ticket_ttl = ticket_ttl
        self.key = hashlib.sha256(b"agent-mesh ticket\0" + b"\0".join(sorted(self.tokens))).digest()

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def principal(self, token: str) -> str | None:
        """A stable non-secret id of `token` if it is valid (used to scope idempotency keys)."""
        given = token.encode()
        matched = False
        for known in self.tokens:  # no early exit: the time taken does not depend on which matched
            matched |= hmac.compare_digest(given, known)
        return hashlib.sha256(given).hexdigest()[:16] if matched else None

    def bearer(self, headers: Headers) -> str | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.principal(token.strip())

    def issue_ticket(self, principal: str) -> str:
        payload = orjson.dumps({"exp": int(time.time()) + self.ticket_ttl, "sub": principal, "n": os.urandom(6).hex()})
        body = _b64(payload)
        return f"{body}.{_b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest())}"

    def check_ticket(self, ticket: str) -> str | None:
        body, _, signature = ticket.partition(".")
        expected = _b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return None
        try:
            payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(payload, dict) or int(payload.get("exp", 0)) < time.time():
            return None
        return str(payload.get("sub", ""))


def origin_allowed(headers: Headers, allowed: tuple[str, ...]) -> bool:
    """Non-browser clients send no Origin; browsers may connect from this host or a listed origin."""
    origin = headers.get("origin")
    if origin is None:
        return True
    if origin.rstrip("/") in allowed or "*" in allowed:
        return True
    return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()


class AuthMiddleware:
    """Rejects requests without a valid token (or ticket, on live routes) before any route runs."""

    def __init__(self, app: ASGIApp, auth: Auth, cors_origins: tuple[str, ...], *, twilio_signed: bool = False) -> None:
        self.app = app
        self.auth = auth
        self.cors_origins = cors_origins
        self.twilio_signed = twilio_signed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = Headers(scope=scope)
        if scope["type"] == "websocket" and not origin_allowed(headers, self.cors_origins):
            await _deny(scope, receive, send, Forbidden(f"WebSocket Origin {headers.get('origin', '')[:100]!r} is not allowed"))
            return
        signed_by_twilio = self.twilio_signed and is_phone_path(path)  # the route checks the signature
        if self.auth.enabled and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES) and not signed_by_twilio:
            principal = self.auth.bearer(headers)
            if principal is None and is_live_path(path):
                ticket = QueryParams(scope.get("query_string", b"").decode("latin-1")).get("ticket")
                principal = self.auth.check_ticket(ticket) if ticket else None
            if principal is None:
                await _deny(scope, receive, send, Unauthorized("a valid bearer token (or ticket) is required"))
                return
            scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


async def _deny(scope: Scope, receive: Receive, send: Send, err: Unauthorized | Forbidden) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": err.code})
        return
    await problem(err, scope["path"])(scope, receive, send)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")

"""Which agent instance a recipient address reaches, decided from the envelope (RCPT TO) only.

    <type>+<name>@<domain>          instance <name> of agent type <type>
    <type>@<domain>                 the instance named after the sender's address
    <type>+<name>+<token>@<domain>  the same instance, plus a signed token (approval replies)

Names that are not plain letters, digits, `-` and `_` are written with the mesh's name encoding
(`bob@example.com` → `bob=40example=2Ecom`), so every instance has an address. A resolver is any
function from an address to a `Route` (or None to refuse it); `address_resolver` is the default,
like Cloudflare's address-based email resolver. The agent-type allowlist is applied after it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from mesh import subjects
from mesh.errors import NameInvalid


@dataclass(frozen=True)
class Route:
    """Where one recipient's copy of a mail goes."""

    agent_type: str
    name: str | None
    """None: the instance named after the sender's address."""
    token: str | None = None
    """A signed token from the address (approval replies), unverified until used."""

    def instance_for(self, sender: str) -> str:
        return self.name if self.name is not None else (sender.lower() or "postmaster")


Resolver = Callable[[str], "Route | None"]


def split_address(address: str) -> tuple[str, str]:
    local, sep, domain = address.strip().strip("<>").rpartition("@")
    if not sep or not local or not domain:
        raise NameInvalid(f"{address[:80]!r} is not an address")
    return local, domain.lower().rstrip(".")


def decode_local_name(text: str) -> str:
    """The instance name in an address: the mesh encoding when canonical, else the text as written."""
    try:
        return subjects.decode_name(text)
    except NameInvalid:
        return text


def address_resolver(domains: tuple[str, ...]) -> Resolver:
    """The default resolver: `<type>[+<name>[+<token>]]@<one of domains>`."""
    accepted = {d.lower() for d in domains}

    def resolve(address: str) -> Route | None:
        try:
            local, domain = split_address(address)
        except NameInvalid:
            return None
        if domain not in accepted:
            return None
        parts = local.split("+")
        agent_type = parts[0].lower()
        if not subjects.TYPE_PATTERN.match(agent_type):
            return None
        token = None
        if len(parts) >= 3 and parts[-1].startswith("t"):
            token = parts.pop()
        name = decode_local_name("+".join(parts[1:])) if len(parts) > 1 else None
        if name is not None:
            try:
                subjects.encode_name(name)
            except NameInvalid:
                return None
        return Route(agent_type, name, token)

    return resolve


def agent_address(agent_type: str, name: str, domain: str, token: str | None = None) -> str:
    """The address of an instance (the From of its replies)."""
    local = f"{agent_type}+{subjects.encode_name(name)}"
    return f"{local}+{token}@{domain}" if token else f"{local}@{domain}"


# -- signed tokens ------------------------------------------------------------------------------


def sign_token(secret: bytes, agent_type: str, name: str, item: str) -> str:
    """A token naming `item` (an approval id) that only this mesh can make for this instance."""
    if "-" in item or not item:
        raise ValueError(f"token item {item!r} must be non-empty and contain no '-'")
    return f"t{item}-{_mac(secret, agent_type, name, item)}"


def verify_token(secret: bytes | None, agent_type: str, name: str, token: str) -> str | None:
    """The item a token names if its signature is valid for this instance, else None."""
    if secret is None or not token.startswith("t"):
        return None
    item, sep, mac = token[1:].rpartition("-")
    if not sep or not item:
        return None
    expected = _mac(secret, agent_type, name, item)
    return item if hmac.compare_digest(mac.lower(), expected) else None


def _mac(secret: bytes, agent_type: str, name: str, item: str) -> str:
    message = f"{agent_type}\n{name}\n{item}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:24]

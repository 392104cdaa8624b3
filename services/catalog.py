"""What the mesh serves right now, as discovery (`$SRV.INFO`) reports it: agent types, their request
and reply schemas, their methods.

Every gateway (the HTTP bridge and its OpenAPI document, the MCP door over HTTP or stdio) describes
the mesh from here, so they agree with each other and with what the workers publish
(`mesh.runtime.endpoint_schemas`, `mesh.methods.method_endpoints`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from mesh.client import MeshClient


@dataclass
class MethodInfo:
    """One `@mesh.method` of a type: reached with `Mesh-Method: <name>` on the type's subject."""

    name: str
    request_schema: dict[str, Any] | None = None
    """None: the method takes no payload."""
    reply_schema: dict[str, Any] | None = None
    description: str = ""


@dataclass
class AgentType:
    """One agent type as discovery reports it (from the `$SRV.INFO` of every worker serving it)."""

    type: str
    workers: list[str] = field(default_factory=list)
    description: str = ""
    request_schema: dict[str, Any] | None = None
    reply_schema: dict[str, Any] | None = None
    methods: dict[str, MethodInfo] = field(default_factory=dict)

    def admits_op(self, op: str) -> bool:
        """Whether the request schema takes `{"op": <op>}` (LLM agents' control messages)."""
        return _admits_op(self.request_schema, op)


class Catalog:
    """Discovery through one client, cached for `cache` seconds (each look waits `wait` for answers)."""

    def __init__(self, client: MeshClient, *, wait: float = 0.3, cache: float = 2.0) -> None:
        self.client = client
        self.wait = wait
        self.cache = cache
        self._types: list[AgentType] = []
        self._at = -float("inf")
        self._lock = asyncio.Lock()

    async def types(self) -> list[AgentType]:
        """Agent types being served now, sorted by name."""
        async with self._lock:
            if time.monotonic() - self._at > self.cache:
                self._types = group(await self.client.services(wait=self.wait))
                self._at = time.monotonic()
            return self._types

    async def find(self, agent_type: str) -> AgentType | None:
        return next((t for t in await self.types() if t.type == agent_type), None)

    async def supports_approvals(self, agent_type: str) -> bool:
        """True if the type's published request schema admits `{"op": "approvals"}` (LLM agents)."""
        found = await self.find(agent_type)
        return found is not None and found.admits_op("approvals")


def group(infos: list[dict[str, Any]]) -> list[AgentType]:
    """Agent types from `$SRV.INFO` answers (one per worker and type)."""
    found: dict[str, AgentType] = {}
    for info in infos:
        meta = info.get("metadata") or {}
        name = meta.get("mesh.type") or info.get("name")
        if not isinstance(name, str):
            continue
        entry = found.setdefault(name, AgentType(type=name))
        entry.workers.append(str(meta.get("mesh.worker", "?")))
        for endpoint in info.get("endpoints") or []:
            em = endpoint.get("metadata") or {}
            method = em.get("mesh.method")
            if isinstance(method, str):
                entry.methods[method] = MethodInfo(
                    method, _schema(em, "mesh.request_schema"), _schema(em, "mesh.reply_schema"), em.get("mesh.description", "")
                )
                continue
            entry.description = em.get("mesh.description", entry.description)
            entry.request_schema = _schema(em, "mesh.request_schema") or entry.request_schema
            entry.reply_schema = _schema(em, "mesh.reply_schema") or entry.reply_schema
    for entry in found.values():
        entry.workers.sort()
        entry.methods = dict(sorted(entry.methods.items()))
    return sorted(found.values(), key=lambda t: t.type)


def _schema(metadata: dict[str, Any], key: str) -> dict[str, Any] | None:
    text = metadata.get(key)
    if not isinstance(text, str):
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _admits_op(schema: Any, op: str) -> bool:
    """Whether any object in `schema` (including its `$defs`) has an `op` property of constant `op`."""
    if isinstance(schema, dict):
        prop = (schema.get("properties") or {}).get("op")
        if isinstance(prop, dict) and (prop.get("const") == op or op in (prop.get("enum") or [])):
            return True
        return any(_admits_op(value, op) for value in schema.values())
    if isinstance(schema, list):
        return any(_admits_op(value, op) for value in schema)
    return False

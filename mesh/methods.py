"""Named entry points besides `on_request`: what a `Mesh-Method` request, durable message or schedule runs.

    class Reminder(Agent[ReminderState]):
        type = "reminder"

        @method
        async def wake(self, payload: Wake) -> None:
            ...

Only methods marked `@method` can be reached from the wire; any other name is `method_not_found`.
The payload is validated against the method's first parameter annotation, like `on_request`'s.
Each method is also an endpoint of its type's micro service, with its schemas (`method_endpoints`),
so gateways (OpenAPI, MCP) can describe it.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import pydantic
from pydantic import TypeAdapter

from mesh import wire
from mesh.errors import BadJson, MethodNotFound, SchemaMismatch

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__mesh_method__"
_REPLY = "__mesh_method_reply__"
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
"""What a method name can look like on the wire (a `Mesh-Method` header, a URL segment)."""


def method(fn: F) -> F:
    """Mark an agent coroutine method as callable by name (`MeshClient.call(method=...)`, schedules,
    `send_durable(method=...)`, the HTTP bridge's `/methods/{method}`, MCP)."""
    hints = typing.get_type_hints(fn)
    params = [p for p in inspect.signature(fn).parameters if p != "self"]
    setattr(fn, _MARK, TypeAdapter(hints.get(params[0], Any)) if params else None)
    setattr(fn, _REPLY, TypeAdapter(hints.get("return", Any)))
    return fn


def check_method(name: str) -> str:
    """Return `name` if it can name a method on the wire, else raise `MethodNotFound`."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise MethodNotFound(f"{str(name)[:80]!r} cannot name a method (letters, digits and _, starting with a letter)")
    return name


def methods_of(cls: type) -> dict[str, Callable[..., Any]]:
    """The methods of an agent class marked `@method`, by name (inherited ones included)."""
    found: dict[str, Callable[..., Any]] = {}
    for name in dir(cls):
        if NAME_PATTERN.match(name):
            fn = getattr(cls, name, None)
            if callable(fn) and hasattr(fn, _MARK):
                found[name] = fn
    return found


def method_endpoints(cls: type) -> dict[str, dict[str, str]]:
    """Endpoint metadata of each method, for `$SRV.INFO`: `mesh.method`, `mesh.request_schema` (absent
    for a method without a payload), `mesh.reply_schema` (JSON Schema as JSON text), `mesh.description`."""
    endpoints: dict[str, dict[str, str]] = {}
    for name, fn in methods_of(cls).items():
        meta = {"mesh.method": name}
        if fn.__doc__:
            meta["mesh.description"] = " ".join(fn.__doc__.split())[:500]
        for key, adapter in (("mesh.request_schema", getattr(fn, _MARK)), ("mesh.reply_schema", getattr(fn, _REPLY, None))):
            if adapter is None:
                continue
            try:
                meta[key] = wire.dumps(adapter.json_schema()).decode()
            except Exception:  # a type pydantic cannot describe: gateways fall back to "any JSON"
                continue
        endpoints[name] = meta
    return endpoints


async def invoke_method(agent: object, name: str, data: bytes) -> Any:
    """Run `agent.<name>(payload)` if that method is marked `@method`."""
    fn = getattr(type(agent), name, None) if name.isidentifier() and not name.startswith("_") else None
    if fn is None or not hasattr(fn, _MARK):
        raise MethodNotFound(f"{type(agent).__name__} has no method {name[:80]!r} marked @method")
    adapter: TypeAdapter[Any] | None = getattr(fn, _MARK)
    if adapter is None:
        return await fn(agent)
    try:
        payload = adapter.validate_json(data or b"null")
    except pydantic.ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadJson(f"body is not valid JSON: {exc.errors()[0]['msg']}") from exc
        raise SchemaMismatch(f"payload of {name} does not match its schema: {exc.errors()[0]['msg']}") from exc
    return await fn(agent, payload)

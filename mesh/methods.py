"""Named entry points besides `on_request`: what a schedule or durable message with `Mesh-Method` runs.

    class Reminder(Agent[ReminderState]):
        type = "reminder"

        @method
        async def wake(self, payload: Wake) -> None:
            ...

Only methods marked `@method` can be reached from the wire; any other name is `method_not_found`.
The payload is validated against the method's first parameter annotation, like `on_request`'s.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import pydantic
from pydantic import TypeAdapter

from mesh.errors import BadJson, MethodNotFound, SchemaMismatch

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__mesh_method__"


def method(fn: F) -> F:
    """Mark an agent coroutine method as callable by name (schedules, `send_durable(method=...)`)."""
    hints = typing.get_type_hints(fn)
    params = [p for p in inspect.signature(fn).parameters if p != "self"]
    setattr(fn, _MARK, TypeAdapter(hints.get(params[0], Any)) if params else None)
    return fn


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

"""Bytes on the wire: JSON payloads, error replies and the headers that carry a call's context."""

from __future__ import annotations

from typing import Any

import orjson
import pydantic_core

from mesh import subjects
from mesh.errors import BadJson, MeshError, error_from_wire

Headers = dict[str, str]


def dumps(value: Any) -> bytes:
    """Serialize a reply or payload: pydantic models, dataclasses and plain JSON values."""
    if isinstance(value, (dict, list, str, int, float, bool)) or value is None:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass
    return pydantic_core.to_json(value)


def loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadJson(f"body is not valid JSON: {exc}") from exc


def error_headers(err: MeshError) -> Headers:
    return {
        subjects.HEADER_ERROR_CODE: str(err.status),
        subjects.HEADER_ERROR: _header_safe(err.message),
        subjects.HEADER_MESH_ERROR: err.code,
    }


def error_body(err: MeshError) -> bytes:
    return orjson.dumps({"error": err.to_wire()})


def error_of(headers: Headers | None, data: bytes) -> MeshError | None:
    """The error a reply carries, or None for a successful reply."""
    if not headers or subjects.HEADER_ERROR_CODE not in headers:
        return None
    message = headers.get(subjects.HEADER_ERROR, "")
    try:
        message = orjson.loads(data)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    return error_from_wire(headers.get(subjects.HEADER_MESH_ERROR), headers.get(subjects.HEADER_ERROR_CODE), message)


def _header_safe(text: str) -> str:
    """Header values are one line of bounded length; the full message is in the JSON body."""
    return " ".join(text.split())[:512]

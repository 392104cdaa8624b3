"""Bytes on the wire: JSON payloads, error replies and the headers that carry a call's context."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pydantic_core

from mesh import subjects
from mesh.errors import BadJson, MeshError, SchemaMismatch, error_from_wire

Headers = dict[str, str]

INTEGERS = (-(2**63), 2**64 - 1)
"""The integers JSON may carry on the mesh: what orjson (and so every door) reads exactly."""
_LONG_DIGITS = re.compile(rb"[0-9]{19}")  # the shortest integers outside INTEGERS have 19 digits
_DIGITS_AS_NINES = bytes(0x39 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_NINETEEN_NINES = b"9" * 19


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


def check_integers(data: bytes) -> None:
    """Refuse (`SchemaMismatch`) JSON holding an integer outside `INTEGERS`.

    orjson would read such a number as a float, losing digits, and another door might keep it
    exact: one request would mean two things. So every door refuses it the same way, at the
    worker's decode. Costs one scan for a run of 19 digits (a regex on short bodies, a byte
    translation and a substring search on longer ones); only a body with such a run is parsed
    exactly (pydantic's parser keeps big integers) to find one. Not JSON: left to the decoder.
    """
    if len(data) <= 32:
        if _LONG_DIGITS.search(data) is None:
            return
    elif _NINETEEN_NINES not in data.translate(_DIGITS_AS_NINES):  # ~10x faster than the regex on long bodies
        return
    try:
        value = pydantic_core.from_json(data)
    except ValueError as exc:
        if "number out of range" in str(exc):
            raise SchemaMismatch(f"a JSON number is too large: {exc}") from None
        return
    low, high = INTEGERS
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not low <= item <= high:
                digits = str(item)
                shown = digits if len(digits) <= 40 else digits[:40] + "..."
                raise SchemaMismatch(f"the integer {shown} is outside the 64-bit range the mesh carries")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)

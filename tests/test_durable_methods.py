"""`Mesh-Method` dispatch and the processed-ids record, on an in-process runtime."""

from __future__ import annotations

import json

import pytest
from durable_app import Ticker

from mesh import bus, subjects, wire
from mesh.dedupe import AppliedIds
from mesh.errors import MeshError


async def request(client, name: str, body: bytes, **headers: str) -> object:
    msg = await bus.request(client.nc, subjects.agent_subject("ticker", name), body, timeout=5, headers=headers)
    err = wire.error_of(msg.headers, msg.data)
    if err is not None:
        raise err
    return json.loads(msg.data)


async def test_mesh_method_runs_only_methods_marked_with_the_decorator(mesh_factory, mesh_client):
    await mesh_factory([Ticker])
    assert await request(mesh_client, "m", b'{"by": 2}', **{subjects.HEADER_METHOD: "tick"}) is None
    assert await mesh_client.call("ticker", "m", {}) == {"ticks": 2}
    for name in ("on_request", "nope", "__init__", "_private", "a.b"):
        with pytest.raises(MeshError) as caught:
            await request(mesh_client, "m", b"{}", **{subjects.HEADER_METHOD: name})
        assert caught.value.code == "method_not_found", name
    with pytest.raises(MeshError) as caught:
        await request(mesh_client, "m", b'{"by": "many"}', **{subjects.HEADER_METHOD: "tick"})
    assert caught.value.code == "schema_mismatch"
    assert await mesh_client.call("ticker", "m", {}) == {"ticks": 2}  # failed turns changed nothing


def test_applied_ids_are_bounded_and_round_trip_through_the_header():
    record = AppliedIds(keep=3)
    for i in range(5):
        record.add(f"m{i}")
    assert "m1" not in record and "m4" in record and len(record) == 3
    again = AppliedIds.from_header(record.header(), keep=3)
    assert [m in again for m in ("m2", "m3", "m4")] == [True, True, True]
    assert len(AppliedIds.from_header("not json")) == 0

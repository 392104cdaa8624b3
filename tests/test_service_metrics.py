"""The HTTP bridge and the mail service count what they answer (issue 8's metrics), by outcome."""

import httpx
from mail_support import compose, send

from mesh.metrics import REGISTRY
from services.demo import Counter


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_bridge_counts_requests_by_route_template_and_status(mesh_factory, http_factory) -> None:
    await mesh_factory([Counter])
    bridge = await http_factory()
    route = "/agents/{type}/{name}"
    ok, bad = (sample("mesh_http_requests_total", method="POST", route=route, status=s) for s in ("200", "400"))
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        assert (await client.post("/agents/counter/m.1", json={"add": 1})).status_code == 200
        assert (await client.post("/agents/counter/m.2", json={"add": 1})).status_code == 200
        assert (await client.post("/agents/counter/m.1", content=b"{nope")).status_code == 400
    assert sample("mesh_http_requests_total", method="POST", route=route, status="200") == ok + 2
    assert sample("mesh_http_requests_total", method="POST", route=route, status="400") == bad + 1
    assert sample("mesh_http_request_duration_seconds_count", method="POST", route=route) >= 3


async def test_mail_service_counts_accepted_and_rejected_mail(mail_factory) -> None:
    service = await mail_factory()
    stored = sample("mesh_mail_messages_total", outcome="accepted", reason="stored")
    refused = sample("mesh_mail_messages_total", outcome="rejected", reason="no_such_agent")
    assert (await send(service.port, compose()))[0] == 250
    assert (await send(service.port, compose(to="x@y"), rcpts=["nobody+x@localhost"]))[0] == 550
    assert sample("mesh_mail_messages_total", outcome="accepted", reason="stored") == stored + 1
    assert sample("mesh_mail_messages_total", outcome="rejected", reason="no_such_agent") == refused + 1


async def test_pending_approvals_gauge_follows_an_llm_run(mesh_factory, mesh_client) -> None:
    from services.triage import Clerk

    await mesh_factory([Counter, Clerk])
    before = sample("mesh_approvals_pending", type="clerk")
    reply = await mesh_client.call("clerk", "g", "add 5 to counter demo", timeout=30)
    assert reply["status"] == "awaiting_approval"
    assert sample("mesh_approvals_pending", type="clerk") == before + 1
    decided = await mesh_client.call("clerk", "g", {"op": "approve", "id": reply["approvals"][0]["id"], "by": "t"}, timeout=30)
    assert decided["status"] == "completed"
    assert sample("mesh_approvals_pending", type="clerk") == before

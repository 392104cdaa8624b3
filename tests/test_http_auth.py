"""Security of the bridge: bearer tokens, browser tickets, CORS and the WebSocket Origin check."""

from __future__ import annotations

import httpx
import pytest
import websockets
from pydantic import SecretStr

from services.demo import Counter
from services.http.auth import Auth
from services.http.config import config_from_settings, parse_listen
from services.http.settings import HttpSettings

TOKENS = ("s3cret-token", "second-token")


@pytest.fixture
async def secured(mesh_factory, http_factory):
    runtime = await mesh_factory([Counter])
    bridge = await http_factory(tokens=TOKENS, cors_origins=("http://app.example",))
    return runtime, bridge


def bearer(token: str = TOKENS[0]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_requests_without_a_valid_token_get_401_and_reach_no_agent(secured) -> None:
    runtime, bridge = secured
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        for headers in ({}, bearer("wrong"), {"Authorization": "Basic czNjcmV0LXRva2Vu"}, {"Authorization": "Bearer"}):
            for method, path in (
                ("POST", "/agents/counter/locked"),
                ("GET", "/agents"),
                ("GET", "/agents/counter"),
                ("GET", "/agents/counter/locked/state"),
                ("GET", "/openapi.json"),
                ("POST", "/auth/tickets"),
                ("GET", "/agents/counter/locked/events"),
            ):
                response = await http.request(method, path, json={"add": 1}, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["code"] == "unauthorized"
                assert response.headers["www-authenticate"].startswith("Bearer")
        assert runtime.stats["counter"].turns == 0
        assert not runtime.activations

        # Either configured token works; public pages need none.
        assert (await http.post("/agents/counter/locked", json={"add": 1}, headers=bearer())).json() == {"value": 1}
        assert (await http.post("/agents/counter/locked", json={"add": 1}, headers=bearer(TOKENS[1]))).json() == {"value": 2}
        assert (await http.get("/")).status_code == 200
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/static/app.js")).status_code == 200


async def test_browsers_use_short_lived_tickets_for_sse_and_websocket(secured, http_factory) -> None:
    _, bridge = secured
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        ticket = (await http.post("/auth/tickets", headers=bearer())).json()
        assert ticket["expires_in"] == 60
        async with http.stream("GET", f"/agents/counter/t/events?ticket={ticket['ticket']}") as events:
            assert events.status_code == 200
        # Tickets open live views only, and a tampered or expired one opens nothing.
        assert (await http.get(f"/agents?ticket={ticket['ticket']}")).status_code == 401
        tampered = ticket["ticket"][:-2] + ("AA" if not ticket["ticket"].endswith("AA") else "BB")
        assert (await http.get(f"/agents/counter/t/events?ticket={tampered}")).status_code == 401
        expired = Auth(TOKENS, ticket_ttl=-5).issue_ticket("someone")
        assert (await http.get(f"/agents/counter/t/events?ticket={expired}")).status_code == 401
        forged = Auth(("another-token",), ticket_ttl=60).issue_ticket("someone")
        assert (await http.get(f"/agents/counter/t/events?ticket={forged}")).status_code == 401

    async with websockets.connect(f"{bridge.ws_url}/agents/counter/t/ws?ticket={ticket['ticket']}") as ws:
        assert b'"type":"state"' in (await ws.recv()).encode()
    with pytest.raises(websockets.InvalidStatus) as rejected:
        async with websockets.connect(f"{bridge.ws_url}/agents/counter/t/ws"):
            pass
    assert rejected.value.response.status_code == 403
    async with websockets.connect(f"{bridge.ws_url}/agents/counter/t/ws", additional_headers=bearer()) as ws:
        await ws.recv()

    # Any replica configured with the same tokens accepts the ticket.
    replica = await http_factory(tokens=TOKENS)
    async with httpx.AsyncClient(base_url=replica.url) as other:
        async with other.stream("GET", f"/agents/counter/t/events?ticket={ticket['ticket']}") as events:
            assert events.status_code == 200


async def test_cors_allows_only_the_configured_origins(secured) -> None:
    _, bridge = secured
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,idempotency-key"}
        allowed = await http.options("/agents/counter/c", headers={"Origin": "http://app.example", **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://app.example"
        assert "idempotency-key" in allowed.headers["access-control-allow-headers"].lower()
        denied = await http.options("/agents/counter/c", headers={"Origin": "http://evil.example", **preflight})
        assert denied.status_code == 400
        assert "access-control-allow-origin" not in denied.headers

        simple = await http.post("/agents/counter/c", json={"add": 1}, headers={"Origin": "http://app.example", **bearer()})
        assert simple.headers["access-control-allow-origin"] == "http://app.example"
        other = await http.post("/agents/counter/c", json={"add": 1}, headers={"Origin": "http://evil.example", **bearer()})
        assert "access-control-allow-origin" not in other.headers


async def test_websocket_origin_must_be_this_host_or_a_configured_origin(secured) -> None:
    _, bridge = secured
    url = f"{bridge.ws_url}/agents/counter/o/ws"
    with pytest.raises(websockets.InvalidStatus) as rejected:
        async with websockets.connect(url, origin="http://evil.example", additional_headers=bearer()):
            pass
    assert rejected.value.response.status_code == 403
    for origin in ("http://app.example", bridge.url, None):
        async with websockets.connect(url, origin=origin, additional_headers=bearer()) as ws:
            await ws.recv()


def test_tokens_come_from_the_environment_and_a_file(tmp_path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# operators\nfile-token-1\n\n  file-token-2  \n")
    settings = HttpSettings(
        tokens=SecretStr("env-a, env-b"),
        tokens_file=path,
        listen="0.0.0.0:9000",
        cors_origins="http://a.example/, http://b.example",
    )
    config = config_from_settings(settings)
    assert config.tokens == ("env-a", "env-b", "file-token-1", "file-token-2")
    assert (config.host, config.port) == ("0.0.0.0", 9000)
    assert config.cors_origins == ("http://a.example", "http://b.example")
    assert "env-a" not in repr(config)
    assert not config_from_settings(HttpSettings()).auth_enabled
    assert parse_listen("off") is None and parse_listen(":8081") == ("127.0.0.1", 8081)
    with pytest.raises(ValueError):
        parse_listen("localhost:http")

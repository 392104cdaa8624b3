"""Prometheus counts of the bridge's requests, by method, route template (never the raw path) and status,
in the process's one registry (`mesh.metrics.REGISTRY`)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mesh.metrics import REGISTRY, TURN_BUCKETS

HTTP_REQUESTS = Counter(
    "mesh_http_requests",
    "HTTP bridge requests, by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "mesh_http_request_duration_seconds",
    "HTTP bridge request latency, by method and route template.",
    ["method", "route"],
    buckets=TURN_BUCKETS,
    registry=REGISTRY,
)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client sees if the app fails before answering
        started = time.perf_counter()

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - started)

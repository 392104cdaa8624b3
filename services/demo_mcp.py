"""The demo's MCP server: a calculator, built with the `mcp` package, that the triage Math Tutor calls.

`mesh up` serves it on 127.0.0.1 (a free port) and points its own worker's Math Tutor at it, so the
offline demo shows an LLM agent using an MCP server end to end; `MESH_DEMO_MCP_URL` points workers
at a calculator elsewhere (`off`: none, the tutor computes itself). Alone:

    python -m services.demo_mcp --http 127.0.0.1:8091     # Streamable HTTP at http://127.0.0.1:8091/mcp
    python -m services.demo_mcp --stdio                    # for clients that launch a command
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any

import uvicorn

from mesh.version import __version__
from services.triage import evaluate

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server

NAME = "calculator"
CALCULATE = {
    "name": "calculate",
    "description": "Evaluate an arithmetic expression (numbers, + - * / ** and parentheses); returns the value.",
    "inputSchema": {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "e.g. 12 * 7"}},
        "required": ["expression"],
    },
}


def calculate(expression: str) -> str:
    try:
        value = evaluate(expression.replace("×", "*").replace("^", "**"))
    except ValueError as exc:
        return f"error: {expression!r} is not arithmetic ({exc})"
    return str(int(value) if float(value).is_integer() else round(value, 6))


def build_server() -> Server[Any]:
    """The calculator on the `mcp` package's low-level server (the high-level `MCPServer` would
    configure the process's logging)."""
    import mcp_types as types
    from mcp.server.context import ServerRequestContext
    from mcp.server.lowlevel import Server

    tool = types.Tool.model_validate(CALCULATE)

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool])

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        expression = (params.arguments or {}).get("expression")
        if params.name != tool.name or not isinstance(expression, str):
            text = f"unknown tool {params.name!r}" if params.name != tool.name else "expression (a string) is required"
            return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)
        return types.CallToolResult(content=[types.TextContent(text=calculate(expression))])

    return Server(
        NAME,
        version=__version__,
        instructions="Arithmetic: call calculate with an expression such as 12 * 7.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


class _Server(uvicorn.Server):
    """Signals belong to the process that embeds it (`mesh up`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def open_demo_mcp(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve the calculator over Streamable HTTP (stateless) for the duration of the block; yields its URL."""
    server = await asyncio.to_thread(build_server)  # the mcp package takes a while to import
    async with serve_streamable_http(server, host, port) as url:
        yield url


@contextlib.asynccontextmanager
async def serve_streamable_http(server: Server[Any], host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve a low-level MCP `Server` at `http://host:port/mcp` (port 0: a free one) while the block runs."""
    app = server.streamable_http_app(stateless_http=True, json_response=True, host=host)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    web = _Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=1))
    task = asyncio.get_running_loop().create_task(web.serve(sockets=[sock]))
    try:
        while not web.started:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("the demo MCP server stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://{host}:{bound}/mcp"
    finally:
        web.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        sock.close()


async def _serve_http(host: str, port: int) -> None:
    async with open_demo_mcp(host, port) as url:
        print(f"calculator MCP server at {url}", flush=True)
        await asyncio.Event().wait()


async def _serve_stdio() -> None:
    from mcp.server.stdio import stdio_server

    server = build_server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.demo_mcp", description=__doc__.split("\n", 1)[0])
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--http", metavar="HOST:PORT", help="serve Streamable HTTP at http://HOST:PORT/mcp")
    how.add_argument("--stdio", action="store_true", help="speak MCP on stdin/stdout")
    args = parser.parse_args()
    if args.stdio:
        asyncio.run(_serve_stdio())
        return
    host, _, port = args.http.rpartition(":")
    try:
        asyncio.run(_serve_http(host or "127.0.0.1", int(port)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

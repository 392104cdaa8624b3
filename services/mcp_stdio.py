"""`mesh mcp --stdio`: the mesh's agents as MCP tools for clients that launch a command (desktop
assistants, IDEs), speaking MCP on stdin/stdout.

The same tools as the bridge's `/mcp` door (`services.mcp_tools`), sent straight over NATS with
the process's own connection (`NATS_URL`, `--nats-url`, and the `MESH_NATS_*` credentials). Logs go
to stderr; stdout carries only the protocol. The process ends when the client closes stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib

from mesh import bus
from mesh.client import MeshClient
from mesh.logging import configure_logging
from services.catalog import Catalog
from services.settings import MeshSettings
from services.worker import close_connection


async def cmd_mcp(args: argparse.Namespace, settings: MeshSettings) -> int:
    configure_logging("json", settings.log_level)  # to stderr, never stdout
    tools_module = await asyncio.to_thread(importlib.import_module, "services.mcp_tools")
    from mcp.server.stdio import stdio_server

    nc = await bus.connect(settings.nats_options(settings.url(), "mesh-mcp"))
    try:
        client = MeshClient(nc)
        tools = tools_module.MeshTools(client, Catalog(client), timeout=args.timeout)
        by = f"mcp-stdio:{_login()}"
        server = tools_module.build_server(tools, lambda ctx: by)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
    finally:
        await close_connection(nc)
    return 0


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"

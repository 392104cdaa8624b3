"""The `mesh` command as real child processes: one-off commands, and `mesh up` on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mesh.bus import free_port
from mesh.testing import eventually

ROOT = Path(__file__).parent.parent
MESH = (sys.executable, "-m", "services.cli")
OFFLINE = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "MESH_MODEL": ""}  # the demo's offline model


async def run_mesh(*args: str, env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run one `mesh` command with exactly `env`, without blocking the event loop; its output as text."""
    process = await asyncio.create_subprocess_exec(
        *MESH, *args, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(args), process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@dataclass
class MeshUp:
    """A running `mesh up`: its addresses, and everything it printed so far (stdout and stderr)."""

    process: asyncio.subprocess.Process
    nats_url: str
    http_url: str
    ws_url: str
    smtp_port: int | None
    printed: bytearray = field(default_factory=bytearray)

    def output(self) -> str:
        return self.printed.decode(errors="replace")

    async def wait_printed(self, text: str, timeout: float = 60.0) -> None:
        def printed() -> bool:
            if text in self.output():
                return True
            if self.process.returncode is not None:
                raise RuntimeError(f"mesh up exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            raise AssertionError(f"{text!r} not printed yet:\n{self.output()[-3000:]}")

        await eventually(printed, timeout=timeout)

    async def stop(self, how: signal.Signals, *, whole_group: bool, timeout: float = 30.0) -> float:
        """Send `how` (to the process group, as a terminal's Ctrl-C does, or to `mesh up` alone, as
        `kill` does) and wait for the exit; returns the seconds from the signal to the exit."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if whole_group:
            os.killpg(self.process.pid, how)
        else:
            self.process.send_signal(how)
        async with asyncio.timeout(timeout):
            await self.process.wait()
        return loop.time() - started


@contextlib.asynccontextmanager
async def open_mesh_up(store: Path, *, relay_port: int | None = None, env: dict[str, str] | None = None) -> AsyncIterator[MeshUp]:
    """Start `mesh up` (nats-server, a worker of the default app, the HTTP bridge and, given a relay
    for its replies, the SMTP service) on free ports with the offline model and JSON logs; ready
    once each of them serves.

    A `mesh up` the test has not stopped is killed on the way out.
    """
    nats_port, http_port = free_port(), free_port()
    smtp_port = None if relay_port is None else free_port()
    full_env = {
        **os.environ,
        **OFFLINE,
        "PYTHONPATH": str(ROOT),
        "MESH_LOG_FORMAT": "json",
        "MESH_NATS_PORT": str(nats_port),
        "MESH_STORE": str(store),
        "MESH_HTTP": f"127.0.0.1:{http_port}",
        "MESH_SMTP_LISTEN": "off" if smtp_port is None else f"127.0.0.1:{smtp_port}",
        **({} if relay_port is None else {"MESH_SMTP_RELAY": f"127.0.0.1:{relay_port}"}),
        **(env or {}),
    }
    full_env.pop("NATS_URL", None)
    process = await asyncio.create_subprocess_exec(
        *MESH,
        "up",
        env=full_env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a command started in a terminal
    )
    up = MeshUp(
        process,
        nats_url=f"nats://127.0.0.1:{nats_port}",
        http_url=f"http://127.0.0.1:{http_port}",
        ws_url=f"ws://127.0.0.1:{http_port}",
        smtp_port=smtp_port,
    )

    async def read_output() -> None:
        assert process.stdout is not None
        while chunk := await process.stdout.read(65536):
            up.printed += chunk

    reader = asyncio.get_running_loop().create_task(read_output())
    try:
        await up.wait_printed('"worker.started"')
        if smtp_port is not None:
            await up.wait_printed('"mail.started"')
        async with httpx.AsyncClient(base_url=up.http_url, timeout=5) as http:

            async def http_serves() -> bool:
                response = await http.get("/agents")  # any answer: the bridge accepts connections
                assert response.status_code < 500, (response.status_code, response.text[:300])
                return True

            await eventually(http_serves, timeout=30, retry=(httpx.TransportError,))
        yield up
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        async with asyncio.timeout(10):
            await reader  # ends at EOF, once the process (and anything it left holding the pipe) is gone

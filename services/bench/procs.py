"""The bench's child processes: mesh workers and the raw responder, with their memory figures."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class Child:
    """A Python child process (`python -m ...`) whose output goes to a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for_log(self, needle: str, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while needle not in self.log_text():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.process.args!r} exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.process.args!r} did not log {needle!r}:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.05)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.process.args!r} exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")

    def memory_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) in MiB, from /proc (Linux)."""
        fields: dict[str, float] = {}
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    fields[name] = int(value.split()[0]) / 1024
        except OSError:
            pass
        return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def service_env(url: str) -> dict[str, str]:
    """The environment of a mesh service process (`mesh http`, `mesh smtp`) on the bench's server."""
    return {"NATS_URL": url, "MESH_LOG_FORMAT": "json", "MESH_LOG_LEVEL": "info"}


async def start_worker(url: str, app: str, log_path: Path, env: dict[str, str] | None = None) -> Child:
    """A `mesh worker` process; returns once it serves its agent types."""
    worker = Child(
        ["services.cli", "worker", "--app", app],
        log_path,
        env={"NATS_URL": url, "MESH_LOG_FORMAT": "json", "MESH_LOG_LEVEL": "info", **(env or {})},
    )
    try:
        await worker.wait_for_log("worker.started")
    except BaseException:
        worker.stop()
        raise
    return worker


RAW_READY = "raw responder ready"  # what the raw responder prints once it is subscribed


def start_raw(url: str, model_url: str, log_path: Path) -> Child:
    """The raw nats-py responder; the caller waits until `_bench.raw.echo` answers (or for `RAW_READY`)."""
    return Child(["services.bench.raw", url, model_url], log_path)

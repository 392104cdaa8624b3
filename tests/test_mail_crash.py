"""Done when 3: kill the ingestion service (SIGKILL) after its 250 and before processing; nothing is lost."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from mail_support import Notes, Sink, compose, send

from mesh.bus import NatsServer, free_port
from mesh.testing import eventually

ROOT = Path(__file__).parent.parent


class SmtpProcess:
    """`mesh smtp` as a child process with JSON logs in a file."""

    def __init__(self, url: str, port: int, relay_port: int, log_path: Path) -> None:
        self.log_path = log_path
        env = {
            **os.environ,
            "NATS_URL": url,
            "PYTHONPATH": str(ROOT),
            "MESH_LOG_FORMAT": "json",
            "MESH_SMTP_LISTEN": f"127.0.0.1:{port}",
            "MESH_SMTP_AGENT_TYPES": "notes",
            "MESH_SMTP_RELAY": f"127.0.0.1:{relay_port}",
            "MESH_SMTP_ACK_WAIT": "2",
        }
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "smtp"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for(self, text: str, timeout: float = 20.0) -> None:
        def logged() -> bool:
            if text in self.log():
                return True
            if self.process.poll() is not None:
                raise RuntimeError(f"mesh smtp exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            raise AssertionError(f"no {text!r} in:\n{self.log()[-3000:]}")

        await eventually(logged, timeout=timeout)

    async def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)

    async def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 10)
            except subprocess.TimeoutExpired:
                await self.kill()


async def test_a_mail_acknowledged_before_a_crash_is_processed_once_after_restart(
    nats_server: NatsServer, mesh_factory, mesh_client, sink: Sink, tmp_path: Path
) -> None:
    port = free_port()
    first = SmtpProcess(nats_server.url, port, sink.port, tmp_path / "smtp-1.log")
    try:
        await first.wait_for('"mail.started"')
        # No worker serves `notes` yet, so the service cannot process the mail it acknowledges.
        code, reply = await send(port, compose(body="survive the crash", message_id="<crash@example.com>"))
        assert code == 250, reply
        await first.wait_for('"mail.deferred"')  # it tried, and keeps the mail for later
    finally:
        await first.kill()
    await mesh_factory([Notes])
    second = SmtpProcess(nats_server.url, port, sink.port, tmp_path / "smtp-2.log")
    try:
        await second.wait_for('"mail.started"')
        (answer,) = await sink.wait_for(1, timeout=30)
        assert answer.get_content().strip() == "Noted #1: survive the crash"
        assert answer["In-Reply-To"] == "<crash@example.com>"
        # Sent again by an impatient sender after the restart: still processed once.
        assert (await send(port, compose(body="survive the crash", message_id="<crash@example.com>")))[0] == 250
        await second.wait_for('"mail.accepted"')
        await asyncio.sleep(1.0)
        assert len(sink.received) == 1
        assert await mesh_client.state("notes", "alice") == {"messages": ["survive the crash"]}
    finally:
        await second.stop()
    assert second.process.returncode == 0, second.log()[-3000:]

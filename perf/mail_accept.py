"""Mail acceptance and reply round trip on this machine: `.venv/bin/python perf/mail_accept.py [N]`.

One smtplib session sends N mails (MAIL, RCPT, DATA each) to an in-process mail service backed by a
real nats-server; an in-process worker runs the `notes` test agent; an aiosmtpd sink is the relay.
Prints the acceptance rate, the per-mail latency to the 250 (the mail is then stored in JetStream),
and the time until every reply reached the sink.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import smtplib
import sys
import tempfile
import time

import structlog
from aiosmtpd.smtp import SMTP

from mesh import bus
from mesh.runtime import Runtime
from mesh.server import NatsServer, free_port
from services.mail import MailConfig, MailService

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from mail_support import Notes, Sink, compose  # noqa: E402 (the tests' agent and sink)


def send_all(port: int, messages: list[bytes]) -> list[float]:
    latencies = []
    with smtplib.SMTP("127.0.0.1", port) as client:
        for message in messages:
            started = time.perf_counter()
            client.sendmail("a@example.com", ["notes+u@localhost"], message)
            latencies.append(time.perf_counter() - started)
    return latencies


async def main(n: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    async with NatsServer(tempfile.mkdtemp()) as server:
        relay = Sink()
        sink = await asyncio.get_running_loop().create_server(lambda: SMTP(relay), "127.0.0.1", 0)
        relay.port = sink.sockets[0].getsockname()[1]
        worker_nc = await bus.connect(bus.NatsOptions.from_url(server.url))
        runtime = Runtime(worker_nc, [Notes])
        await runtime.start()
        mail_nc = await bus.connect(bus.NatsOptions.from_url(server.url))
        config = MailConfig(port=free_port(), agent_types=("notes",), relay=("127.0.0.1", relay.port),
                            reply_limit=10**6)
        service = MailService(mail_nc, config)
        await service.start()
        messages = [compose(to=f"notes+u{i % 20}@localhost", body=f"note {i}").as_bytes().replace(b"\n", b"\r\n")
                    for i in range(n)]
        started = time.perf_counter()
        latencies = sorted(await asyncio.to_thread(send_all, service.port, messages))
        accepted = time.perf_counter()
        await relay.wait_for(n, timeout=300)
        replied = time.perf_counter()
        print(f"{n} mails over one SMTP session: accepted in {accepted - started:.2f}s "
              f"({n / (accepted - started):.0f}/s), 250 after p50 {latencies[n // 2] * 1000:.1f} ms, "
              f"p99 {latencies[int(n * 0.99)] * 1000:.1f} ms; all {n} replies at the sink after "
              f"{replied - started:.2f}s")
        await service.stop()
        await runtime.stop()
        await mail_nc.close()
        await worker_nc.close()
        sink.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))

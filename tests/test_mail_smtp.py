"""SMTP front details: STARTTLS and AUTH for relaying setups, and `mesh up` serving mail by default."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import ssl
from pathlib import Path

from mail_support import MailFactory, Notes, Sink, compose, send
from mesh_up import open_mesh_up

TLS = Path(__file__).parent / "mail_tls"  # a self-signed certificate for localhost / 127.0.0.1 (tests only)
ROOT = Path(__file__).parent.parent


def client_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(TLS / "cert.pem"))


async def test_starttls_and_auth_are_required_when_configured(mesh_factory, mail_factory: MailFactory, sink: Sink) -> None:
    await mesh_factory([Notes])
    service = await mail_factory(
        tls_cert=TLS / "cert.pem", tls_key=TLS / "key.pem", require_tls=True, auth_user="relay", auth_password="s3cret"
    )

    def session(tls: bool, password: str | None) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", service.port, timeout=30) as client:
            client.ehlo("client.test")
            if tls:
                client.starttls(context=client_context())
                client.ehlo("client.test")
            if password is not None:
                try:
                    client.login("relay", password)
                except smtplib.SMTPAuthenticationError as exc:
                    return exc.smtp_code, exc.smtp_error
            code, reply = client.mail("alice@example.com")
            if code != 250:
                return code, reply
            client.rcpt("notes+alice@localhost")
            return client.data(compose(body="over TLS").as_bytes().replace(b"\n", b"\r\n"))

    assert (await asyncio.to_thread(session, False, None))[0] == 530  # STARTTLS first
    assert (await asyncio.to_thread(session, True, None))[0] == 530  # then AUTH
    assert (await asyncio.to_thread(session, True, "wrong"))[0] == 535
    assert (await asyncio.to_thread(session, True, "s3cret"))[0] == 250
    (answer,) = await sink.wait_for(1)
    assert answer.get_content().strip() == "Noted #1: over TLS"


async def test_mesh_up_serves_mail_by_default(tmp_path: Path, sink: Sink) -> None:
    async with open_mesh_up(tmp_path / "s", relay_port=sink.port) as up:
        assert up.smtp_port is not None
        code, reply = await send(up.smtp_port, compose(to="echo+x@localhost", body="ping by mail"), rcpts=["echo+x@localhost"])
        assert code == 250, reply
        (answer,) = await sink.wait_for(1, timeout=30)
        assert answer.get_content().strip() == "ping by mail"
        code, _ = await send(up.smtp_port, compose(to="nobody@localhost"), rcpts=["nobody+x@localhost"])
        assert code == 550  # only the app's agent types are reachable
        await up.stop(signal.SIGTERM, whole_group=False)
    assert up.process.returncode == 0, up.output()[-3000:]

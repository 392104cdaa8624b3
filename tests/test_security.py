"""Security: the permissions example in deploy/, TLS for every mesh process, no secret in any log."""

import asyncio
import os
import subprocess
from pathlib import Path

import nats
import pytest
from mesh_up import run_mesh

from mesh import MeshClient, NatsServer, Runtime
from mesh.bus import NatsOptions, connect
from mesh.errors import ConnectionFailed
from mesh.recorder import FlightRecorder
from mesh.testing import eventually
from services.demo import Counter

ROOT = Path(__file__).parent.parent
AUTH_CONF = ROOT / "deploy" / "nats" / "auth.conf"
PASSWORDS = {
    "MESH_ADMIN_PASSWORD": "adm-9f2c-secret",
    "MESH_BRIDGE_PASSWORD": "brg-51aa-secret",
    "MESH_WORKER_PASSWORD": "wrk-77d0-secret",
    "MESH_MAIL_PASSWORD": "mail-c3e1-secret",
}


class Session:
    """A raw connection as one user that keeps every asynchronous error the server sends it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: nats.aio.client.Client

    async def open(self, url: str, user: str, password: str) -> "Session":
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(url, user=user, password=password, error_cb=on_error, max_reconnect_attempts=0)
        return self

    async def refused(self, action) -> bool:
        """True when the server answers `action` with a permissions violation (within 2 s)."""
        before = len(self.errors)
        await action()
        await self.nc.flush()
        try:
            await eventually(lambda: any("permissions violation" in e.lower() for e in self.errors[before:]), timeout=2)
        except AssertionError:
            return False
        return True


@pytest.fixture
async def secured_server(tmp_path, monkeypatch):
    for name, value in PASSWORDS.items():
        monkeypatch.setenv(name, value)  # nats-server reads the passwords from its environment
    async with NatsServer(tmp_path / "store", config_file=AUTH_CONF) as server:
        yield server


async def test_permissions_example_allows_each_role_its_work_and_refuses_the_rest(secured_server) -> None:
    url = secured_server.url
    with pytest.raises(ConnectionFailed):
        await connect(NatsOptions.from_url(url))  # no credentials: refused
    with pytest.raises(ConnectionFailed):
        await connect(NatsOptions.from_url(url, user="bridge", password="wrong"))

    worker = await Session().open(url, "worker-counter", PASSWORDS["MESH_WORKER_PASSWORD"])
    bridge = await Session().open(url, "bridge", PASSWORDS["MESH_BRIDGE_PASSWORD"])
    mail = await Session().open(url, "mail", PASSWORDS["MESH_MAIL_PASSWORD"])
    admin = await Session().open(url, "admin", PASSWORDS["MESH_ADMIN_PASSWORD"])
    recorder = FlightRecorder(worker.nc)
    await recorder.start()
    runtime = Runtime(worker.nc, [Counter], observers=[recorder])
    await runtime.start()
    try:
        # Allowed: the bridge calls an agent and reads its state; the worker serves, saves, records.
        client = MeshClient(bridge.nc, default_timeout=10)
        assert await client.call("counter", "a", {"add": 2}) == {"value": 2}
        assert await client.call("counter", "a", {"add": 3}) == {"value": 5}
        assert await client.state("counter", "a") == {"value": 5}
        assert [i["name"] for i in await client.services(wait=2)] == ["counter"]
        await recorder.stop()
        assert worker.errors == [] and bridge.errors == [], (worker.errors, bridge.errors)

        # Forbidden: the bridge writes state, a counter worker serves another type.
        assert await bridge.refused(lambda: bridge.nc.publish("$KV.mesh_state.counter.a", b'{"value": 999}'))
        assert await client.state("counter", "a") == {"value": 5}
        assert await worker.refused(lambda: worker.nc.subscribe("agents.echo.*", queue="mesh"))
        assert await worker.refused(lambda: worker.nc.publish("$KV.mesh_state.echo.x", b"{}"))

        # The mail service writes its stream subject and nothing else.
        received = await admin.nc.subscribe("mesh_mail.in")
        stolen = await admin.nc.subscribe("agents.counter.*")
        await admin.nc.flush()
        assert not await mail.refused(lambda: mail.nc.publish("mesh_mail.in", b"raw mail"))
        assert (await received.next_msg(timeout=10)).data == b"raw mail"  # allowed: delivered, even on a loaded machine
        assert await mail.refused(lambda: mail.nc.publish("agents.counter.a", b'{"add": 1}'))
        assert await mail.refused(lambda: mail.nc.subscribe("events.>"))
        with pytest.raises(nats.errors.TimeoutError):
            await stolen.next_msg(timeout=0.3)  # the refused publish never reached anyone
    finally:
        await runtime.stop(grace=2)
        for session in (worker, bridge, mail, admin):
            await session.nc.close()


async def test_a_worker_process_runs_with_the_example_worker_permissions(secured_server, worker_factory) -> None:
    """`mesh worker` as user worker-counter: buckets, flight recorder and durable delivery all work."""
    url = secured_server.url
    env = {
        "MESH_NATS_USER": "worker-counter",
        "MESH_NATS_PASSWORD": PASSWORDS["MESH_WORKER_PASSWORD"],
        "MESH_APP": "services.demo:Counter",
        "PYTHONPATH": str(ROOT),
    }
    worker = await worker_factory(url, "services.demo:Counter", env)
    admin = MeshClient(
        await connect(NatsOptions.from_url(url, user="admin", password=PASSWORDS["MESH_ADMIN_PASSWORD"])),
        default_timeout=10,
    )
    bridge = MeshClient(
        await connect(NatsOptions.from_url(url, user="bridge", password=PASSWORDS["MESH_BRIDGE_PASSWORD"])),
        default_timeout=10,
    )
    try:
        await worker.wait_logged("durable.started")
        assert await bridge.call("counter", "w", {"add": 1}) == {"value": 1}
        await admin.send_durable("counter", "w", {"add": 10})

        async def delivered() -> bool:
            assert await bridge.state("counter", "w") == {"value": 11}
            return True

        await eventually(delivered, timeout=10)
        assert await worker.terminate() == 0
        server_log = (secured_server.store_dir / "nats-server.log").read_text()
        assert "Violation" not in server_log  # the worker never needed more than the example grants
    finally:
        await admin.close()
        await bridge.close()


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with the openssl CLI."""
    files = {name: folder / name for name in ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=mesh-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=mesh-{name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        (folder / f"{name}.ext").write_text(extension + "\n")
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
            "-extfile",
            f"{name}.ext",
        )
    return files


async def test_tls_with_client_certificates_for_workers_and_cli(tmp_path, worker_factory) -> None:
    certs = await asyncio.to_thread(make_certificates, tmp_path)  # openssl runs for a second or two
    conf = tmp_path / "tls.conf"
    conf.write_text(
        "tls {\n"
        f'  cert_file: "{certs["server.pem"]}"\n  key_file: "{certs["server.key"]}"\n'
        f'  ca_file: "{certs["ca.pem"]}"\n  verify: true\n  timeout: 2\n}}\n'
    )
    async with NatsServer(tmp_path / "store", config_file=conf) as server:
        url = f"tls://127.0.0.1:{server.port}"
        with pytest.raises(ConnectionFailed):  # CA trusted but no client certificate: refused
            await connect(NatsOptions.from_url(url, tls_ca_file=str(certs["ca.pem"])))
        env = {
            "MESH_NATS_TLS_CA": str(certs["ca.pem"]),
            "MESH_NATS_TLS_CERT": str(certs["client.pem"]),
            "MESH_NATS_TLS_KEY": str(certs["client.key"]),
            "PYTHONPATH": str(ROOT),
        }
        worker = await worker_factory(url, "services.demo", env)
        result = await run_mesh("call", "counter/tls", '{"add": 7}', env={**os.environ, **env, "NATS_URL": url})
        assert (result.returncode, result.stdout) == (0, '{"value":7}\n'), result.stderr
        result = await run_mesh(
            "call",
            "counter/tls",
            '{"add": 7}',
            env={**os.environ, "NATS_URL": url, "PYTHONPATH": str(ROOT), "MESH_NATS_TLS_CA": str(certs["ca.pem"])},
        )
        assert result.returncode == 1 and "[connection_failed]" in result.stderr
        assert await worker.terminate() == 0  # over TLS, before its server goes


async def test_no_secret_appears_in_any_log_line(tmp_path, worker_factory) -> None:
    """Workers and CLI at debug level with a password, a token and credentials in the URL; some
    connections fail on purpose (their errors are where secrets leak most often)."""
    password, token = "pw-6d1e-do-not-log", "tok-93b7-do-not-log"
    async with NatsServer(tmp_path / "store", extra_args=["--user", "meshuser", "--pass", password]) as server:
        env = {
            "MESH_NATS_USER": "meshuser",
            "MESH_NATS_PASSWORD": password,
            "MESH_NATS_TOKEN": "",
            "MESH_LOG_LEVEL": "debug",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
            "MESH_METRICS_PORT": "0",
        }
        worker = await worker_factory(server.url, "core_agents", env)

        async def mesh(*args: str, **extra: str) -> str:
            result = await run_mesh(*args, env={**os.environ, "NATS_URL": server.url, **env, **extra})
            return result.stdout + result.stderr

        first = await mesh("call", "counter/a", '{"add": 1}')
        others = await asyncio.gather(  # independent of each other: at once (each process mostly imports)
            mesh("call", "faulty/a", '{"action": "raise"}'),
            mesh("state", "counter/a"),
            mesh("history", "counter/a"),
            mesh("call", "counter/a", "{}", MESH_NATS_PASSWORD="wrong-" + password),
            mesh("call", "counter/a", "{}", MESH_NATS_TOKEN=token, MESH_NATS_USER="", MESH_NATS_PASSWORD=""),
            mesh(
                "call",
                "counter/a",
                "{}",
                NATS_URL=f"nats://meshuser:{password}@127.0.0.1:{server.port}",
                MESH_NATS_USER="",
                MESH_NATS_PASSWORD="",
            ),
            mesh(
                "call",
                "counter/a",
                "{}",
                NATS_URL=f"nats://meshuser:{password}@127.0.0.1:1",
                MESH_NATS_USER="",
                MESH_NATS_PASSWORD="",
            ),
        )
        outputs = [first, *others]
        assert "[connection_failed]" in outputs[-1] and "***@127.0.0.1:1" in outputs[-1]
        assert await worker.terminate() == 0
        logs = worker.log_text()
        assert '"turn.finished"' in logs and "worker.stopped" in logs  # debug logging was on
        for text in [logs, *outputs]:
            assert password not in text and token not in text
        assert outputs[0].strip() == '{"value":1}'


async def test_nkey_and_token_authentication_from_settings(tmp_path, worker_factory) -> None:
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed + b"\n")
    conf = tmp_path / "nkey.conf"
    conf.write_text(f"authorization {{ users = [ {{ nkey: {public} }} ] }}\n")
    async with NatsServer(tmp_path / "store", config_file=conf) as server:
        with pytest.raises(ConnectionFailed):
            await connect(NatsOptions.from_url(server.url))
        worker = await worker_factory(
            server.url, "services.demo", {"MESH_NATS_NKEY_SEED": str(seed_file), "PYTHONPATH": str(ROOT)}
        )
        client = await MeshClient.connect(NatsOptions.from_url(server.url, nkey_seed_file=str(seed_file)))
        assert await client.call("counter", "nk", {"add": 1}) == {"value": 1}
        await client.close()
        assert await worker.terminate() == 0
    async with NatsServer(tmp_path / "store2", extra_args=["--auth", "tok-3c9a-secret"]) as server:
        with pytest.raises(ConnectionFailed):
            await connect(NatsOptions.from_url(server.url, token="wrong"))
        result = await run_mesh(
            "call",
            "echo/t",
            '"hi"',
            env={**os.environ, "NATS_URL": server.url, "MESH_NATS_TOKEN": "tok-3c9a-secret", "PYTHONPATH": str(ROOT)},
        )
        assert result.returncode == 1 and "[no_responders]" in result.stderr  # connected: nobody serves echo

"""The `mesh` command as a user runs it: real processes, real server, clear errors."""

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import orjson
import pytest
from core_agents import AGENTS
from fresh_venv import RUN, FreshInstall, clean_env

from mesh.bus import free_port

ROOT = Path(__file__).parent.parent


async def mesh(*args: str, url: str, timeout: float = 30) -> tuple[int, str, str]:
    env = {**os.environ, "NATS_URL": url, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, out.decode(), err.decode()


async def test_call_state_and_ls(mesh_factory, nats_server) -> None:
    runtime = await mesh_factory(AGENTS)
    assert await mesh("call", "counter/demo", '{"add": 1}', url=nats_server.url) == (0, '{"value":1}\n', "")
    assert (await mesh("call", "counter/a.b c", '{"add": 5}', url=nats_server.url))[1] == '{"value":5}\n'
    code, out, _ = await mesh("state", "counter/a.b c", url=nats_server.url)
    assert (code, orjson.loads(out)) == (0, {"value": 5})
    code, out, _ = await mesh("ls", url=nats_server.url)
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {"counter", "echo", "hop", "faulty", "sleeper"}
    assert rows["counter"][1:] == ["1", runtime.worker_id]
    code, out, _ = await mesh("ls", "counter", url=nats_server.url)
    assert (code, sorted(out.splitlines())) == (0, ["a.b c", "demo"])


async def test_errors_are_clear_and_exit_non_zero(mesh_factory, nats_server) -> None:
    await mesh_factory(AGENTS)
    cases = [
        (("call", "nobody/x", "{}"), "[no_responders]"),
        (("call", "counter/x", '{"add": "x"}'), "[schema_mismatch]"),
        (("call", "sleeper/x", "3", "--timeout", "0.3"), "[timeout]"),
        (("call", "counter/", "{}"), "[name_invalid]"),
        (("call", "Bad/x", "{}"), "[name_invalid]"),
        (
            (
                "state",
                "counter/never",
            ),
            "has no stored state",
        ),
    ]
    # Independent processes, run at once: each spends most of its time importing.
    results = await asyncio.gather(
        *(mesh(*args, url=nats_server.url) for args, _ in cases),
        mesh("call", "counter/x", "{not json", url=nats_server.url),
        mesh("call", "counter/x", "{}", url=f"nats://127.0.0.1:{free_port()}"),
    )
    for (args, message), (code, out, err) in zip(cases, results, strict=False):
        assert code == 1 and out == "" and message in err, (args, code, err)
    code, _, err = results[-2]
    assert code == 2 and "not JSON" in err
    code, _, err = results[-1]
    assert code == 1 and "[connection_failed]" in err and "cannot connect to NATS" in err


@pytest.mark.slow
async def test_readme_first_command_runs_the_mesh_from_a_fresh_virtualenv(tmp_path, fresh_install: FreshInstall) -> None:
    """Done-when 8: a copy of the repository, the README's exact first command, then `mesh call`.

    The command's install part has been running since the session started (tests/fresh_venv.py);
    once it succeeded, its last part, `.venv/bin/mesh up`, runs here as the `&&` would run it."""
    await fresh_install.finished(timeout=600)
    checkout = fresh_install.checkout
    port = free_port()
    env = clean_env()
    env.update(
        {"MESH_NATS_PORT": str(port), "MESH_STORE": str(tmp_path / "store"), "MESH_HTTP": "off", "MESH_SMTP_LISTEN": "off"}
    )
    process = await asyncio.create_subprocess_shell(
        RUN,
        cwd=checkout,
        env=env,
        start_new_session=True,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = b""
    try:

        async def until_up() -> None:
            nonlocal output
            while b"worker.started" not in output:
                line = await process.stdout.readline()
                if not line:
                    raise AssertionError(f"mesh up exited:\n{output.decode(errors='replace')[-3000:]}")
                output += line

        await asyncio.wait_for(until_up(), 120)
        call = await asyncio.create_subprocess_exec(
            str(checkout / ".venv" / "bin" / "mesh"),
            "call",
            "counter/demo",
            '{"add": 1}',
            env={**env, "NATS_URL": f"nats://127.0.0.1:{port}"},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(call.communicate(), 60)
        assert (call.returncode, out.decode()) == (0, '{"value":1}\n')
        assert (checkout / ".venv" / "bin" / "nats-server").exists()  # the embedded server came from the wheel
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole process group
        output += await asyncio.wait_for(process.stdout.read(), 60)  # EOF once `mesh up` has exited
        await process.wait()
    assert b"worker.stopped" in output
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # its nats-server is gone too


async def test_nats_user_password_auth_from_the_environment(tmp_path) -> None:
    from mesh import NatsServer
    from mesh.bus import NatsOptions, connect
    from mesh.runtime import Runtime

    async with NatsServer(tmp_path / "store", extra_args=["--user", "meshuser", "--pass", "s3cret-pw"]) as server:
        code, _, err = await mesh("call", "counter/a", '{"add": 1}', url=server.url)
        assert code == 1 and "[connection_failed]" in err and "s3cret-pw" not in err
        nc = await connect(NatsOptions.from_url(server.url, user="meshuser", password="s3cret-pw"))
        async with Runtime(nc, AGENTS):
            env = {"MESH_NATS_USER": "meshuser", "MESH_NATS_PASSWORD": "s3cret-pw"}
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.cli",
                "call",
                "counter/a",
                '{"add": 1}',
                env={**os.environ, "NATS_URL": server.url, "PYTHONPATH": str(ROOT), **env},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), 30)
            assert (process.returncode, out) == (0, b'{"value":1}\n'), err
        await nc.close()


async def test_mesh_up_owns_its_nats_server(tmp_path) -> None:
    """Stopped by Ctrl-C or killed outright, `mesh up` never leaves its nats-server behind."""
    for stop in (signal.SIGINT, signal.SIGKILL):
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MESH_SMTP_LISTEN": "off"}
        env.pop("NATS_URL", None)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "up",
            "--nats-port",
            str(port),
            "--store",
            str(tmp_path / "s"),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        output = b""
        while b"worker.started" not in output:
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            assert line, output
            output += line
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        process.send_signal(stop)
        await asyncio.wait_for(process.wait(), 30)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"nats-server still listening on {port} after {stop!r}")
        if stop == signal.SIGINT:
            assert process.returncode == 0

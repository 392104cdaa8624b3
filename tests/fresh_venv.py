"""The README's install, started in the background when the session starts (a pytest plugin).

test_cli.py's fresh-virtualenv test runs the README's first command, `<install> && .venv/bin/mesh
up`, in a copy of the repository. The install (a virtualenv, then `pip install .`: index look-ups,
downloads, a wheel build) waits on the network for minutes and needs under a minute of CPU, so it
runs while the other tests do, at the lowest CPU priority (it takes only what they leave idle and
cannot slow a timing-sensitive test), and that test runs last: it waits for the install, then runs
`.venv/bin/mesh up` as the `&&` would have. The install starts only when that test is selected, and
is stopped at the end of the session whatever happened. Under pytest-xdist the controller starts
and stops it (once, not once per worker), and the worker that runs the test waits for it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.testing import eventually

ROOT = Path(__file__).parent.parent
TEST = "test_cli.py::test_readme_first_command_runs_the_mesh_from_a_fresh_virtualenv"
RUN = ".venv/bin/mesh up"


def first_readme_command() -> str:
    readme = (ROOT / "README.md").read_text()
    command = readme.split("```sh\n", 1)[1].split("\n```", 1)[0].strip()
    assert command.endswith(f" && {RUN}"), command
    return command


def clean_env() -> dict[str, str]:
    """The environment of a user's shell: no virtualenv, no PYTHONPATH, no NATS_URL of ours."""
    return {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "NATS_URL"}}


@dataclass
class FreshInstall:
    """The install part of the README's first command, running in `folder`/checkout.

    It writes its exit status to `folder`/exit_status when it ends, so a process that did not
    start it (an xdist worker; the controller started it) can wait for it too.
    """

    folder: Path
    process: subprocess.Popen[bytes] | None  # None where another process started it

    @property
    def checkout(self) -> Path:
        return self.folder / "checkout"

    @classmethod
    def start(cls, folder: Path) -> FreshInstall:
        checkout = folder / "checkout"
        files = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        for name in files.stdout.splitlines():
            source = ROOT / name
            if source.is_file():
                (checkout / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, checkout / name)
        install = first_readme_command().removesuffix(f" && {RUN}")
        status = folder / "exit_status"
        process = subprocess.Popen(
            f"( {install} ) >{shlex.quote(str(folder / 'install.log'))} 2>&1; "
            f"echo $? >{shlex.quote(f'{status}.part')}; mv {shlex.quote(f'{status}.part')} {shlex.quote(str(status))}",
            shell=True,
            cwd=checkout,
            env=clean_env(),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.nice(19),
        )
        return cls(folder, process)

    async def finished(self, timeout: float) -> None:  # noqa: ASYNC109 - the failure names what the install printed
        """Return once the install succeeded; fail with its output if it failed or took longer than `timeout`."""
        status = self.folder / "exit_status"
        try:
            await eventually(status.exists, timeout=timeout, interval=0.5)  # another process may write it
        except AssertionError:
            self.stop()
            raise AssertionError(f"the install took over {timeout} s:\n{self.output()}") from None
        code = status.read_text().strip()
        assert code == "0", f"the install exited with {code}:\n{self.output()}"

    def output(self) -> str:
        log = self.folder / "install.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else "(no output yet)"

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


_folder: tempfile.TemporaryDirectory[str] | None = None
_install: FreshInstall | None = None
SHARED_FOLDER_ENV = "MESH_TEST_FRESH_INSTALL"
"""Under pytest-xdist the controller starts the one install, in the folder this names to its workers."""


def started() -> FreshInstall:
    """The session's install, started now if it was not yet (in an xdist worker: the controller's)."""
    global _folder, _install
    if _install is None:
        if SHARED_FOLDER_ENV in os.environ:
            _install = FreshInstall(Path(os.environ[SHARED_FOLDER_ENV]), None)
        else:
            _folder = tempfile.TemporaryDirectory(prefix="mesh-fresh-venv-")
            _install = FreshInstall.start(Path(_folder.name))
    return _install


def pytest_configure(config: pytest.Config) -> None:
    """An xdist controller names the install's folder before it starts its workers (they inherit it)."""
    global _folder
    distributing = bool(getattr(config.option, "numprocesses", 0)) and not hasattr(config, "workerinput")
    if distributing and not config.option.collectonly:
        _folder = tempfile.TemporaryDirectory(prefix="mesh-fresh-venv-")
        os.environ[SHARED_FOLDER_ENV] = _folder.name


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
    """In the controller: start the install once a worker's collection shows the test is selected."""
    global _install
    if _install is None and _folder is not None and any(nodeid.endswith(TEST) for nodeid in ids):
        _install = FreshInstall.start(Path(_folder.name))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The test that waits for the install runs last, when the install has had the most time."""
    items.sort(key=lambda item: item.nodeid.endswith(TEST))  # stable: the others keep their order


def pytest_collection_finish(session: pytest.Session) -> None:
    selected = any(item.nodeid.endswith(TEST) for item in session.items)
    if selected and not session.config.option.collectonly and SHARED_FOLDER_ENV not in os.environ:
        started()


def pytest_sessionfinish() -> None:
    if _install is not None:
        _install.stop()
    if _folder is not None:
        _folder.cleanup()


@pytest.fixture
def fresh_install() -> FreshInstall:
    """The README's install in a copy of the repository (started with the session; maybe not finished)."""
    return started()

"""`mesh`'s entry point: the settings of this run, then its subcommand, then an exit status.

Exit status: 0 done, 1 a mesh error (printed as `mesh: error [code]: message`), 2 a usage error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import gc
import importlib
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn, cast

from mesh.errors import MeshError
from services.cli.parser import build_parser
from services.settings import MeshSettings

Command = Callable[[argparse.Namespace, MeshSettings], Coroutine[Any, Any, int]]

COMMANDS: dict[str, str] = {
    "up": "services.cli.serve:cmd_up",
    "worker": "services.cli.serve:cmd_worker",
    "http": "services.cli.serve:cmd_http",
    "smtp": "services.cli.serve:cmd_smtp",
    "call": "services.cli.commands:cmd_call",
    "new": "services.cli.commands:cmd_new",
    "mcp": "services.mcp_stdio:cmd_mcp",
    "state": "services.cli.commands:cmd_state",
    "ls": "services.cli.commands:cmd_ls",
    "send": "services.cli.commands:cmd_send",
    "schedule": "services.cli.commands:cmd_schedule",
    "dead-letters": "services.cli.commands:cmd_dead_letters",
    "approvals": "services.cli.commands:cmd_approvals",
    "approve": "services.cli.commands:cmd_decide",
    "reject": "services.cli.commands:cmd_decide",
    "clear-memory": "services.cli.commands:cmd_clear_memory",
    "tail": "services.cli.commands:cmd_tail",
    "history": "services.cli.commands:cmd_history",
    "bench": "services.cli.commands:cmd_bench",
}
"""Each subcommand's coroutine function, imported only when it runs: `mesh call` need not load the
HTTP bridge, the mail service or the bench (a few hundred milliseconds of start-up)."""

_SETTINGS_FLAGS = {"nats_url", "nats_port", "store", "app", "log_format", "log_level", "metrics_port"}
_PROCESSES = {"up", "worker", "http", "smtp", "mcp"}
"""The subcommands that are a whole process: once they return, it has nothing left to do but exit."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in _SETTINGS_FLAGS and v is not None}
    settings = MeshSettings().model_copy(update=overrides)
    try:
        code = asyncio.run(command(args.command)(args, settings))
    except KeyboardInterrupt:
        return 130
    except (MeshError, ExceptionGroup) as exc:
        errors = _mesh_errors(exc)
        if errors is None:
            raise
        for error in errors:
            print(f"mesh: error [{error.code}]: {error.message}", file=sys.stderr)
        return 1
    if args.command in _PROCESSES:
        exit_now(code)
    return code


def command(name: str) -> Command:
    module, _, function = COMMANDS[name].partition(":")
    return cast(Command, getattr(importlib.import_module(module), function))


def exit_now(code: int) -> NoReturn:
    """End a process that has stopped everything it started, without the interpreter's teardown.

    Tearing down every module takes 0.2-1 s (the most with the LLM SDK loaded), which is most of
    what a Ctrl-C waited for. What an exit must still do is done here: collect garbage (a task that
    died unseen still reports "Task exception was never retrieved"), run the atexit handlers
    (logging, SDK trace exporters) and flush the standard streams.
    """
    gc.collect()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said anyway
            stream.flush()
    os._exit(code)


def _mesh_errors(exc: BaseException) -> list[MeshError] | None:
    """The mesh errors that `exc` is or groups (a task group's), or None if anything else is among them."""
    if isinstance(exc, MeshError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found: list[MeshError] = []
        for inner in exc.exceptions:
            errors = _mesh_errors(inner)
            if errors is None:
                return None
            found += errors
        return found
    return None

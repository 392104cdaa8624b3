"""`mesh`'s entry point: the settings of this run, then its subcommand, then an exit status.

Exit status: 0 done, 1 a mesh error (printed as `mesh: error [code]: message`), 2 a usage error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from mesh.errors import MeshError
from services.cli import commands, serve
from services.cli.parser import build_parser
from services.settings import MeshSettings

Command = Callable[[argparse.Namespace, MeshSettings], Coroutine[Any, Any, int]]

COMMANDS: dict[str, Command] = {
    "up": serve.cmd_up,
    "worker": serve.cmd_worker,
    "http": serve.cmd_http,
    "smtp": serve.cmd_smtp,
    "call": commands.cmd_call,
    "state": commands.cmd_state,
    "ls": commands.cmd_ls,
    "send": commands.cmd_send,
    "schedule": commands.cmd_schedule,
    "dead-letters": commands.cmd_dead_letters,
    "approvals": commands.cmd_approvals,
    "approve": commands.cmd_decide,
    "reject": commands.cmd_decide,
    "clear-memory": commands.cmd_clear_memory,
    "tail": commands.cmd_tail,
    "history": commands.cmd_history,
    "bench": commands.cmd_bench,
}

_SETTINGS_FLAGS = {"nats_url", "nats_port", "store", "app", "log_format", "log_level", "metrics_port"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in _SETTINGS_FLAGS and v is not None}
    settings = MeshSettings().model_copy(update=overrides)
    try:
        return asyncio.run(COMMANDS[args.command](args, settings))
    except KeyboardInterrupt:
        return 130
    except (MeshError, ExceptionGroup) as exc:
        errors = _mesh_errors(exc)
        if errors is None:
            raise
        for error in errors:
            print(f"mesh: error [{error.code}]: {error.message}", file=sys.stderr)
        return 1


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

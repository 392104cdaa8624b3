"""Sampling profiles of the bench's processes (py-spy, the `bench` extra), and their summary.

`mesh bench --profile DIR` attaches `py-spy record --format raw` to each mesh worker and to the
bench process itself; `python -m services.bench.profile DIR/worker.txt --ops N` then prints where the
CPU went, as inclusive and self time per function and per operation (N = turns the worker ran).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections import Counter
from pathlib import Path

RATE = 200  # samples per second


def find_py_spy() -> str | None:
    candidate = Path(sysconfig.get_path("scripts")) / "py-spy"
    return str(candidate) if candidate.is_file() else shutil.which("py-spy")


class Recorder:
    """`py-spy record` attached to one process until `stop()`; writes collapsed stacks to `out`."""

    def __init__(self, pid: int, out: Path) -> None:
        binary = find_py_spy()
        if binary is None:
            raise FileNotFoundError("py-spy not found: pip install 'agent-mesh[bench]'")
        self.out = out
        self._log = open(out.with_suffix(".py-spy.log"), "ab")
        self.process = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--format", "raw", "--rate", str(RATE), "-o", str(out)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def summarize(path: Path, ops: int | None = None, top: int = 25) -> str:
    """Inclusive and self samples per function of a py-spy raw file, as % and µs per op."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    seconds = total / RATE
    per_op = f" over {ops} ops = {seconds / ops * 1e6:.0f} us/op" if ops else ""
    lines = [f"{path.name}: {total} samples = {seconds:.2f} CPU s{per_op}"]
    for title, table in (("inclusive", inclusive), ("self", own)):
        lines.append(f"\ntop {top} by {title} time:")
        for frame, count in table.most_common(top):
            per_op = f"{count / RATE / ops * 1e6:8.1f} us/op" if ops else ""
            lines.append(f"  {100 * count / total:5.1f}%  {per_op}  {frame}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """`func (path/to/pkg/mod.py:12)` -> `func (pkg/mod.py)`: lines merged, paths shortened."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    return f"{name} ({'/'.join(parts[-2:])})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench.profile", description=__doc__)
    parser.add_argument("file", type=Path, help="a py-spy raw (collapsed stacks) file")
    parser.add_argument("--ops", type=int, help="operations the process ran, for per-op figures")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(summarize(args.file, args.ops, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`mesh bench --workers 2`: invoke and turn against two mesh workers and two raw responders, with
the forwarded share reported (no timing assertions: figures are noisy)."""

import json
import subprocess
import sys


def test_quick_with_two_workers_reports_every_process_and_the_forwarded_share() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "--quick", "--json", "--only", "invoke,turn", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["workers"] == 2
    rows = {(r["scenario"], r["case"]): r for r in report["results"]}
    assert set(rows) == {("invoke", "c=1"), ("invoke", "c=64"), ("turn", "200 instances c=64")}
    for row in rows.values():
        assert row["notes"]["workers"] == 2 and row["notes"]["workers_reporting"] == 2
        for side in ("raw", "mesh"):
            assert row[side]["errors"] == 0 and row[side]["ops"] > 0
            assert row[side]["responder_cpu_us_per_op"] > 0  # summed over both processes of the side
    assert rows[("invoke", "c=64")]["notes"]["forwarded_share"] == 0  # stateless: never forwarded
    # The bench's MeshClient learned every instance's owner while creating them: no turn took two hops.
    assert rows[("turn", "200 instances c=64")]["notes"]["forwarded_share"] <= 0.05
    assert "forwarded share <= 5 %" in rows[("turn", "200 instances c=64")]["target"]
    assert "--workers 2" in done.stderr or "starting 1 more mesh worker" in done.stderr

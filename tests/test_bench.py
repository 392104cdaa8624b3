"""`mesh bench`: every scenario runs and reports its ratio (no timing assertions: figures are noisy)."""

import asyncio
import json
import subprocess
import sys

import pytest
from nats.js.errors import BucketNotFoundError, NotFoundError

from mesh import bus, subjects
from mesh.bus import free_port
from services.bench import names
from services.bench.runner import render_table, select
from services.bench.scenarios import SCENARIOS

MEASURED = ["invoke", "turn", "hot", "activation", "slow", "http", "mail", "durable", "failover", "llm"]


def run_mesh(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_quick_json_runs_every_scenario_and_reports_each_ratio() -> None:
    done = run_mesh("bench", "--quick", "--json", timeout=300)  # every scenario: ~140 s on a loaded 2-core machine
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["nats_url"] == "embedded"
    assert report["quick"] is True and report["cpus"] >= 1
    by_scenario: dict[str, list[dict]] = {}
    for row in report["results"]:
        by_scenario.setdefault(row["scenario"], []).append(row)
    assert list(by_scenario) == list(SCENARIOS) == MEASURED
    assert [r["case"] for r in by_scenario["invoke"]] == ["c=1", "c=64"]
    for name in (n for n in MEASURED if n != "failover"):  # failover has no raw baseline: checked below
        for row in by_scenario[name]:
            assert row["ratio"] > 0, row
            for side in ("raw", "mesh"):
                measure = row[side]
                assert measure["errors"] == 0, (name, side, measure)
                assert measure["ops"] > 0 and measure["ops_per_s"] > 0
                assert 0 < measure["p50_ms"] <= measure["p99_ms"]
                assert measure["caller_cpu_us_per_op"] >= 0 and measure["responder_cpu_us_per_op"] >= 0
                assert measure["server_cpu_us_per_op"] >= 0
            assert row["target"]
            assert isinstance(row["met"], bool) if name != "mail" else row["met"] is None  # mail has no target
    hot = by_scenario["hot"][0]
    assert hot["notes"]["mesh_state_n"] == hot["notes"]["expected_n"] == hot["mesh"]["ops"]
    activation = by_scenario["activation"][0]["notes"]
    assert activation["evicted_all"] is True
    assert 0 < activation["worker_rss_start_mb"] <= activation["worker_peak_rss_mb"]
    assert activation["worker_rss_after_eviction_mb"] > 0
    slow = by_scenario["slow"][0]
    assert slow["mesh"]["peak_in_flight"] >= 1 and slow["raw"]["peak_in_flight"] >= 1
    http = by_scenario["http"][0]
    assert http["case"] == "POST c=64" and http["notes"]["same_reply"] is True
    mail = by_scenario["mail"][0]
    # Every mail the mesh side sent (warm-up included) was stored once: none was deduplicated away.
    assert mail["notes"]["mesh_stored"] == mail["notes"]["expected_stored"] == mail["mesh"]["ops"] + 20
    assert mail["notes"]["processing"] == "off"
    durable = by_scenario["durable"]
    assert [r["case"] for r in durable] == ["50 instances", "1 instance"]
    for row in durable:  # every message applied exactly once, each instance's in the order sent, on both sides
        notes = row["notes"]
        for side in ("raw", "mesh"):
            assert notes[f"{side}_exactly_once"] is True and notes[f"{side}_order_kept"] is True, row
            # the timed messages, and one untimed first message per instance
            assert notes[f"{side}_applied"] == notes[f"{side}_expected"] == row[side]["ops"] + (50 if "50" in row["case"] else 1)
    llm = by_scenario["llm"][0]  # every conversation answered the same by the mesh and by the plain SDK
    assert llm["unit"] == "messages" and llm["notes"]["answer_mismatches"] == 0
    assert llm["notes"]["compared_conversations"] == llm["notes"]["conversations"]
    assert llm["mesh"]["ops"] == llm["raw"]["ops"] == 2 * llm["notes"]["conversations"]
    assert [agent for agent, _ in llm["notes"]["sample_answer"]] == ["History Tutor", "Math Tutor"]
    failover = by_scenario["failover"][0]  # every affected instance answered again; nothing lost or applied twice
    notes = failover["notes"]
    assert failover["raw"]["ops"] == 0 and failover["mesh"]["ops"] > 0 and isinstance(failover["met"], bool)
    assert notes["rounds"] == 2 and notes["affected"] >= 2 and notes["unrecovered"] == 0
    assert notes["lost"] == notes["applied_twice"] == notes["unaccounted"] == 0 and notes["problems"] == []
    assert 0 < failover["mesh"]["p50_ms"] <= failover["mesh"]["p99_ms"]
    # Progress went to stderr, so stdout was pure JSON.
    assert "invoke c=64 mesh" in done.stderr


def test_only_runs_the_named_scenarios_and_prints_a_table() -> None:
    done = run_mesh("bench", "--quick", "--only", "invoke", "--only", "http")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "invoke      c=1" in done.stdout and "invoke      c=64" in done.stdout
    assert "http        POST c=64" in done.stdout and "ops/s >= 0.7 x raw" in done.stdout
    assert "turn " not in done.stdout


def test_quick_with_two_workers_reports_every_process_and_the_forwarded_share() -> None:
    done = run_mesh("bench", "--quick", "--json", "--only", "invoke,turn", "--workers", "2", timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["workers"] == 2
    rows = {(r["scenario"], r["case"]): r for r in report["results"]}
    assert set(rows) == {("invoke", "c=1"), ("invoke", "c=64"), ("turn", "200 instances c=64")}
    for row in rows.values():
        assert row["notes"]["workers"] == 2 and row["notes"]["workers_reporting"] == 2
        for side in ("raw", "mesh"):
            assert row[side]["errors"] == 0 and row[side]["ops"] > 0
            assert row[side]["responder_cpu_us_per_op"] >= 0  # summed over both processes of the side
    # CPU time comes in 10 ms ticks (/proc): one quick case may fall under a tick, not all of them.
    assert sum(row[side]["responder_cpu_us_per_op"] for row in rows.values() for side in ("raw", "mesh")) > 0
    assert rows[("invoke", "c=64")]["notes"]["forwarded_share"] == 0  # stateless: never forwarded
    # The bench's MeshClient learned every instance's owner while creating them: no turn took two hops.
    turn = rows[("turn", "200 instances c=64")]
    assert turn["notes"]["forwarded_share"] <= 0.05 and "forwarded share <= 5 %" in turn["target"]
    assert "starting 1 more mesh worker(s) and raw responder(s) (--workers 2)" in done.stderr


def test_an_unknown_scenario_is_a_usage_error() -> None:
    done = run_mesh("bench", "--only", "invoke,nope", timeout=30)
    assert done.returncode == 2
    assert "unknown scenario(s) nope" in done.stderr
    with pytest.raises(ValueError):
        select(["warp"])
    assert select([]) == list(SCENARIOS)
    assert select(["hot,turn", "hot"]) == ["turn", "hot"]  # in the canonical order, once each


def test_help_explains_how_to_read_the_figures() -> None:
    done = run_mesh("bench", "--help", timeout=30)
    assert done.returncode == 0
    for phrase in ("ratio = mesh ops/s / raw ops/s", "Noise", "cores", "MESH_IDLE_TIMEOUT", "Starlette", "aiosmtpd"):
        assert phrase in done.stdout


async def test_an_existing_server_is_used_and_left_clean(nats_server, mesh_client) -> None:
    done = await asyncio.to_thread(
        run_mesh, "bench", "--quick", "--only", "hot,turn,mail", "--json", "--nats-url", nats_server.url
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["nats_url"] == nats_server.url
    assert [r["scenario"] for r in report["results"]] == ["turn", "hot", "mail"]
    js = mesh_client.nc.jetstream()
    with pytest.raises(BucketNotFoundError):
        await js.key_value(names.RAW_BUCKET)
    with pytest.raises(NotFoundError):
        await js.stream_info(names.RAW_MAIL_STREAM)
    # The mails the mesh side stored (processing was off) were taken back out.
    assert (await js.stream_info(subjects.MAIL_INBOUND_STREAM)).state.messages == 0
    state = await bus.open_bucket(mesh_client.nc, subjects.STATE_BUCKET)
    assert await state.keys("bench-turn.") == []


def test_a_case_without_a_raw_baseline_is_rendered_with_empty_raw_columns() -> None:
    empty = {"ops": 0, "errors": 0, "wall_s": 0.0, "ops_per_s": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
    mesh = {**empty, "ops": 900, "wall_s": 3.0, "ops_per_s": 300.0, "p50_ms": 612.5, "p99_ms": 801.0}
    row = {"scenario": "failover", "case": "16 instances, 2 kills", "unit": "ms kill to reply", "ratio": 0.0}
    row |= {"raw": empty, "mesh": mesh, "target": "p99 <= 1000 ms", "met": True, "notes": {"lost": 0}}
    report = {"quick": True, "scale": 1, "cpus": 2, "loadavg_before": [0.1], "loadavg_after": [0.2], "duration_s": 9.0}
    line = render_table({**report, "results": [row]}).splitlines()[3]
    assert line.split()[:8] == ["failover", "16", "instances,", "2", "kills", "-", "300", "-"]
    assert "612.50/801.00" in line and "(met)" in line


def test_an_unreachable_server_is_a_clear_error() -> None:
    port = free_port()
    done = run_mesh("bench", "--quick", "--only", "invoke", "--nats-url", f"nats://127.0.0.1:{port}", timeout=60)
    assert done.returncode == 1
    assert "connection_failed" in done.stderr or "cannot connect" in done.stderr

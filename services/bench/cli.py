"""The `mesh bench` subcommand: its arguments, its help (how to read the figures), its output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

HELP = """\
Measure the mesh against raw nats-py, scenario by scenario, in one run on one nats-server.

Scenarios (run in this order; --only picks some):
  invoke      stateless agent (Agent[None]) in a worker process, concurrency 1 and 64;
              raw: nats-py request/reply to a trivial responder in another process.
  turn        stateful agent, every turn changes and persists its state, N distinct instances
              (10,000; all created first, untimed), concurrency 64;
              raw: a hand-written responder doing kv.get + kv.update(last=rev) per request.
  hot         one instance, 64 concurrent callers, every turn persisted; raw: the same get+update
              responder on one key, one request at a time (CAS between concurrent writers collapses).
  activation  first touch of 100,000 never-seen instances on a worker of its own, whose
              MESH_IDLE_TIMEOUT (60 s; --quick 1 s) outlasts the run so that eviction does not
              compete with it; reports the worker's peak RSS, then waits for idle eviction and
              reports its RSS again. raw: get (miss) + create per new key.
  slow        1,000 distinct instances whose turns each await a 1 s call to a local stub model,
              all sent at once to one worker; reports wall time and the peak number of turns
              waiting on the model. raw: a responder that spawns a task per request. A peer that
              handles one request at a time per process (nats-py micro endpoints) would need
              serial_peer_wall_s = 1,000 s.
  http        POST /agents/bench-echo/b through the HTTP bridge (a `mesh http` process), 64
              concurrent keep-alive HTTP/1.1 clients, to the main worker's stateless echo agent;
              raw: a minimal Starlette route on uvicorn (another process, served the same way)
              that makes the same NATS request (nc.request) and returns the reply. Target: the
              bridge >= 0.7 x the minimal route. "responder" CPU is the bridge's or the route's.
  mail        the same ~1 KB mail (each with its own Message-ID) over 8 persistent SMTP
              sessions to `mesh smtp` with MESH_SMTP_PROCESS=false (acceptance only: parse,
              route, durable store in mesh_mail_in, then 250; nothing is processed) and agent
              types bench-echo; raw: a bare aiosmtpd handler that only publishes each mail to
              the JetStream stream mesh_bench_raw_mail before answering 250. Reports mails/s
              accepted and p50/p99 time from MAIL FROM to the 250 after DATA.
  durable     durable messages applied per second, 1,000 instances x 10,000 messages and 1
              instance x 3,000 (--quick 50 x 500 and 1 x 300), each on a worker (and a raw
              process) of its own. Every instance first gets one untimed message; then each
              round publishes at concurrency 64, each instance's messages numbered 1, 2, ... in
              send order, and is timed until the last one is applied (the work-queue stream is
              empty: both sides ack only after the KV write). ops/s = messages applied per
              second; p50/p99 = time to store one message (the publish's ack). The final states
              are read back: notes say whether every message was applied exactly once and each
              instance's in the order sent. mesh: MeshClient.send_durable + the worker's durable
              delivery. raw: a careful nats-py consumer in another process: a work-queue stream,
              one durable pull consumer (explicit ack, max_ack_pending 1,024) fetched in batches
              of 256, each batch split by key, keys concurrently, each key's messages in order:
              kv.get, kv.create or kv.update(last=revision), then ack. --workers N: N workers
              (they share the partitions) and N raw consumer processes on the one consumer (a
              write that loses a race to another naks the key's rest: its order breaks).
  failover    two mesh worker processes of its own (agent type bench-fail, a persisted counter),
              one MeshClient caller per instance (48; --quick 16) adding 1 in a loop; each round
              (5; --quick 2) SIGKILLs the worker owning the most instances and then starts a
              fresh one. mesh p50/p99 = ms from the SIGKILL to the first successful reply of each
              instance it owned (target p99 <= 1 s); notes say whether any acknowledged update
              was lost or applied twice (every reply checked against the final counters). No raw
              baseline: its columns stay empty ("-").
  llm         the triage demo (a handoff to the History Tutor, then to the Math Tutor, the
              conversation kept in memory) on the offline demo model: 500 conversations x 2
              messages (--quick 24), 64 conversations in flight. mesh: MeshClient calls to 2
              `mesh worker` processes of its own serving the demo under the type bench-llm (one
              per core; MESH_BENCH_LLM_WORKERS=N for N), SDK traces as the mesh does them (spans
              to structlog, nothing uploaded). raw: plain openai-agents in ONE process, what a
              web app does per message: Runner.run(agent, text, session=SQLiteSession(
              conversation, file)), reached by a minimal nats-py responder (a task per request),
              the SDK's default tracing (no OpenAI key: spans made, export skipped). ops/s =
              messages/s, p50/p99 per message, CPU us/op per message (responder = the plain
              process, or the mesh workers summed). Both sides' answers are compared per
              conversation (answer_mismatches). Target: mesh >= 1.5 x plain, same answers.

Scale-out (--workers N): invoke and turn run against N mesh worker processes and
  N raw responder processes (the raw ones in one queue group, as a nats-py user scales out), all
  started for the scenario and stopped after it; "responder" CPU us/op is summed over the N
  processes of a side. Each such case notes forwarded_share: the share of the mesh side's turns
  that reached their worker forwarded by another one (two hops) instead of sent straight to the
  owner, from the workers' $SRV.STATS (MeshClient learns each instance's owner from a reply and
  addresses it). Target for turn --workers 2: ratio >= 1.0 and forwarded share <= 5 %. On 2
  cores N > 1 only shows that it works; the scale-out curve needs 2N + 2 cores or more.

How to read the figures:
  ratio = mesh ops/s / raw ops/s of the same case in the same run; > 1 means the mesh is faster.
  p50/p99 are per-request latencies seen by the caller, in ms; at concurrency 64 they are mostly
  queueing, so compare ops/s there and p50 at concurrency 1.
  Who uses which core: the bench process (the callers, one Python event loop), the responder
  (the raw responder or the mesh worker, one Python process each) and nats-server share the
  machine's cores. On 2 cores three busy processes compete, and Python's CPU per message in
  the caller or the responder is the limit, not the server (measured: about 10-15 us per echoed
  request and 60-70 us per KV operation in a raw nats-py responder).
  Both sides of a ratio pay the same caller cost, so the ratio is steadier than the ops/s.
  "CPU us/op caller/responder/server" is the CPU time (from /proc, 10 ms ticks) each process
  spent per operation: other load on the machine disturbs it much less than ops/s, so it is the
  figure to compare across runs; it is coarse on --quick counts.
  --nats-url: the bench creates the bucket mesh_bench_raw, the stream mesh_bench_raw_mail and
  bench-* agent state on that server and removes them at the end (and the mails it left in
  mesh_mail_in; the mail service's streams stay); use a scratch server, since the load disturbs
  anything else on it.
  Noise: run to run, ops/s move by 10 % (request/reply) to 40 % (KV) on a shared 2-core VM;
  other load on the machine (see the load average in the header) lowers everything. Every case
  but slow (one burst) runs in three alternating rounds (raw, mesh, raw, mesh, ...) that are
  pooled, so both sides see the same drift; still, compare ratios within one run, repeat a run before trusting a
  change below 20 %, and treat --quick figures (small counts, no steady state) as a smoke test.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure the mesh against raw nats-py (like nats bench)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--nats-url", help="use this server instead of starting an embedded one (env NATS_URL is ignored)")
    bench.add_argument("--quick", action="store_true", help="small counts: a smoke test in well under a minute")
    bench.add_argument(
        "--only", action="append", default=[], metavar="SCENARIO[,...]", help="run only these scenarios (listed above)"
    )
    bench.add_argument(
        "--scale",
        type=float,
        default=1.0,
        metavar="F",
        help="multiply every count (instances, requests) by F, e.g. 0.1 for a shorter full run",
    )
    bench.add_argument(
        "--idle-timeout", type=float, metavar="S", help="MESH_IDLE_TIMEOUT of the activation worker (default 60, --quick 1)"
    )
    bench.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N mesh workers and N raw responders for invoke and turn (and durable: N raw consumers) (default 1)",
    )
    bench.add_argument("--json", action="store_true", help="print the report as JSON on stdout (progress stays on stderr)")
    bench.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    bench.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record py-spy profiles of the mesh workers and the raw responder into DIR "
        "(needs the bench extra; summarize with python -m services.bench.profile)",
    )


async def cmd_bench(args: argparse.Namespace) -> int:
    # Imported here, not with the parser: every `mesh` command builds the parser.
    from services.bench.profile import find_py_spy
    from services.bench.runner import BenchOptions, render_table, run_bench

    try:
        options = BenchOptions(
            nats_url=args.nats_url,
            quick=args.quick,
            only=args.only,
            progress=not args.no_progress,
            profile=args.profile,
            scale=args.scale,
            idle_timeout=args.idle_timeout,
            workers=args.workers,
        )
        if args.scale <= 0:
            raise ValueError("--scale must be positive")
        if not 1 <= args.workers <= 64:
            raise ValueError("--workers must be 1 to 64")
        if args.profile is not None and find_py_spy() is None:
            raise ValueError("--profile needs py-spy: pip install 'agent-mesh[bench]'")
        from services.bench.runner import select

        select(options.only)
    except ValueError as exc:
        print(f"mesh bench: {exc}", file=sys.stderr)
        return 2
    report = await run_bench(options)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render_table(report))
    return 0

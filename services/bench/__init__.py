"""`mesh bench`: the mesh path against a raw nats-py baseline, in one run, on one server.

Each scenario runs a hand-written nats-py responder (`services.bench.raw`, its own process) and the same
job through the mesh (`mesh worker --app services.bench.agents`, its own process), driven by load loops
in the bench process, and reports ops/s, p50/p99 latency and the ratio mesh/raw. See
`mesh bench --help` for how to read the figures.
"""

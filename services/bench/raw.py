"""The raw nats-py baseline: hand-written responders doing the same jobs as the bench agents.

Run as its own process by `mesh bench`: `python -m services.bench.raw NATS_URL [MODEL_URL]`. This is
what a careful nats-py user writes without the mesh:

- `_bench.raw.echo`: replies with the request, inside the subscription callback.
- `_bench.raw.turn.<key>`: a task per request doing `kv.get` + `kv.update(last=rev)` (or
  `kv.create` for a new key) on `{"n": int}`, then the reply; different keys run concurrently.
- `_bench.raw.hot.<key>`: the same get + update, one request at a time (the subscription callback
  runs messages in order), which is how one key is kept consistent without CAS retry storms.
- `_bench.raw.slow.<key>`: a task per request: get, await the stub model, update, reply.

Every subscription is in the queue group `raw`, so that `mesh bench --workers N` can run N of these
processes as one responder (a nats-py user scales out the same way).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import nats
import nats.js.errors as jse
import orjson
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from services.bench import names, stub_model
from services.bench.procs import RAW_READY

SUBJECT_PREFIX = names.RAW_PREFIX
QUEUE = "raw"
BUCKET = names.RAW_BUCKET


async def _bump(kv: KeyValue, key: str, data: bytes) -> bytes:
    add = orjson.loads(data or b"{}").get("add", 1)
    try:
        entry = await kv.get(key)
    except jse.KeyNotFoundError:
        entry = None
    if entry is None or entry.value is None:
        state = {"n": add}
        await kv.create(key, orjson.dumps(state))
    else:
        state = orjson.loads(entry.value)
        state["n"] += add
        await kv.update(key, orjson.dumps(state), last=entry.revision)
    return orjson.dumps(state)


async def serve(url: str, model_url: str | None) -> None:
    nc = await nats.connect(url, name="mesh-bench-raw")
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1, storage=StorageType.FILE, direct=True))
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def reply(msg: Msg, work: Any) -> None:
        try:
            body = await work
        except Exception as exc:  # the caller sees a failure, the responder keeps serving
            await msg.respond(orjson.dumps({"error": str(exc)}))
            return
        await msg.respond(body)

    async def on_echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    async def on_turn(msg: Msg) -> None:
        spawn(reply(msg, _bump(kv, msg.subject.rsplit(".", 1)[1], msg.data)))

    async def on_hot(msg: Msg) -> None:
        await reply(msg, _bump(kv, msg.subject.rsplit(".", 1)[1], msg.data))

    async def slow(msg: Msg) -> bytes:
        key = msg.subject.rsplit(".", 1)[1]
        assert model_url is not None
        await stub_model.complete(model_url, key)
        return await _bump(kv, key, msg.data)

    async def on_slow(msg: Msg) -> None:
        spawn(reply(msg, slow(msg)))

    # One queue group: `mesh bench --workers N` runs N of these processes side by side.
    await nc.subscribe(f"{SUBJECT_PREFIX}.echo", queue=QUEUE, cb=on_echo)
    await nc.subscribe(f"{SUBJECT_PREFIX}.turn.*", queue=QUEUE, cb=on_turn)
    await nc.subscribe(f"{SUBJECT_PREFIX}.hot.*", queue=QUEUE, cb=on_hot)
    await nc.subscribe(f"{SUBJECT_PREFIX}.slow.*", queue=QUEUE, cb=on_slow)
    await nc.flush()
    print(RAW_READY, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await nc.drain()


def main(argv: list[str]) -> int:
    asyncio.run(serve(argv[0], argv[1] if len(argv) > 1 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

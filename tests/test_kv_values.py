"""`Bucket.values`: the last value of every key under a prefix, from one batched direct get, or
from a watch when that cannot answer (a new owner reads an instance's spilled request records)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mesh import bus
from mesh._nats import kv


@pytest_asyncio.fixture
async def bucket(nats_server: bus.NatsServer) -> AsyncIterator[bus.Bucket]:
    nc = await bus.connect(bus.NatsOptions.from_url(nats_server.url))
    try:
        yield await bus.open_bucket(nc, "values_test")
    finally:
        await nc.close()


async def test_values_are_the_last_of_each_key_under_the_prefix_without_deleted_keys_or_other_prefixes(
    bucket: bus.Bucket,
) -> None:
    for i in range(5):
        await bucket.put(f"_r.counter.a.{i}", b"first %d" % i)
    await bucket.put("_r.counter.a.1", b"second 1")  # a key written twice counts once, with its last value
    await bucket.delete("_r.counter.a.3")
    await bucket.put("_r.counter.ab.0", b"another instance")  # a longer token is not under the prefix
    await bucket.put("_r.counter.b.0", b"another instance")
    assert sorted(await bucket.values("_r.counter.a.")) == [b"first 0", b"first 2", b"first 4", b"second 1"]
    assert await bucket._last_values("_r.counter.a.") is not None  # answered by the direct get, not the watch
    assert await bucket.values("_r.counter.none.") == []


async def test_more_keys_than_one_batch_are_all_read_through_the_watch(
    bucket: bus.Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kv, "LAST_VALUES_BATCH", 3)
    for i in range(7):
        await bucket.put(f"_r.counter.c.{i}", b"%d" % i)
    assert await bucket._last_values("_r.counter.c.") is None  # the batch ended with keys pending
    assert sorted(await bucket.values("_r.counter.c.")) == [b"%d" % i for i in range(7)]

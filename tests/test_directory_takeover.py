"""Taking over an instance whose owner is gone (`Directory.take_over`) and the claim that the
re-routed request then resolves, on a real nats-server: no round trip is saved at the cost of a
check (the entry must still name the gone owner; a lapse of our own lease starts over)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from mesh import bus, subjects
from mesh.directory import Directory


@pytest_asyncio.fixture
async def directories(nats_server: bus.NatsServer) -> AsyncIterator[tuple[Directory, Directory]]:
    nc = await bus.connect(bus.NatsOptions.from_url(nats_server.url))
    try:
        entries = await bus.open_bucket(nc, subjects.DIRECTORY_BUCKET)
        workers = await bus.open_bucket(nc, subjects.WORKERS_BUCKET)
        pair = Directory(entries, workers, "wone"), Directory(entries, workers, "wtwo")
        for directory in pair:
            await directory.renew()
        yield pair
    finally:
        await nc.close()


async def test_a_takeover_at_the_revision_read_hands_its_claim_to_the_next_resolve_without_another_write(
    directories: tuple[Directory, Directory],
) -> None:
    one, two = directories
    first = await one.resolve("counter.a")
    assert (first.owner, first.fresh) == ("wone", True)
    seen = await two.resolve("counter.a")
    assert (seen.owner, seen.revision) == ("wone", first.revision)  # alive: requests would be forwarded
    assert await two.take_over("counter.a", "wone", seen.revision)  # its subject had no responders
    entry = await two.entries.get("counter.a")
    assert entry is not None and entry[0] == b"wtwo"
    claim = await two.resolve("counter.a")
    assert (claim.owner, claim.revision, claim.fresh) == ("wtwo", entry[1], False)
    assert await two.entries.get("counter.a") == entry  # nothing written for the claim
    again = await two.resolve("counter.a")  # handed over once: the next resolve asks the directory
    assert again.owner == "wtwo" and again.revision > entry[1]


async def test_a_takeover_at_a_stale_revision_reads_the_entry_and_only_takes_it_from_the_owner_named(
    directories: tuple[Directory, Directory],
) -> None:
    one, two = directories
    stale = (await one.resolve("counter.b")).revision
    await one.resolve("counter.b")  # ours again: the revision moved on
    assert await two.take_over("counter.b", "wone", stale)  # the conflict fell back to reading
    assert (await two.entries.get("counter.b") or (b"", 0))[0] == b"wtwo"
    assert not await one.take_over("counter.b", "wsomeoneelse", 0)  # names another worker: left alone
    assert (await two.entries.get("counter.b") or (b"", 0))[0] == b"wtwo"


async def test_a_takeover_is_not_handed_on_once_the_lease_lapsed_meanwhile(directories: tuple[Directory, Directory]) -> None:
    one, two = directories
    seen = await one.resolve("counter.c")
    assert await two.take_over("counter.c", "wone", seen.revision)
    taken = await two.entries.get("counter.c")
    assert taken is not None
    two.fence()  # the connection dropped: others may have taken it since
    await two.renew()  # a new epoch
    claim = await two.resolve("counter.c")
    assert claim.owner == "wtwo" and claim.revision > taken[1]  # checked and claimed again

"""The seam's header parser (`mesh._nats.headers`) returns what nats-py's own returns, for any block."""

import random

from nats.aio.client import Client

from mesh._nats.headers import SAMPLES, parse_header_lines
from mesh.bus import NatsOptions, connect

PIECES = [b"a", b"Mesh-Id", b"-", b":", b" ", b"\t", b"\r\n", b"\xff", b"\x1c", b"\xc3\xbc", b"\n", b"\r", b"1", b"="]


def test_the_parser_agrees_with_nats_py_on_samples_and_random_blocks() -> None:
    rng = random.Random(16)
    blocks = list(SAMPLES) + [b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 16))) for _ in range(50_000)]
    for block in blocks:
        assert parse_header_lines(block) == Client._parse_header_lines(block), block


async def test_the_mesh_connections_parse_headers_with_it(nats_server) -> None:
    nc = await connect(NatsOptions.from_url(nats_server.url))
    try:
        assert nc._parse_header_lines is parse_header_lines
        sub = await nc.subscribe("hdr.test")
        await nc.publish("hdr.test", b"x", headers={"Mesh-Request-Id": "r1", "Mesh-Deadline": "17"})
        msg = await sub.next_msg(timeout=5)
        assert msg.headers == {"Mesh-Request-Id": "r1", "Mesh-Deadline": "17"}
    finally:
        await nc.close()

"""A faster twin of nats-py's header-block parser, used on the mesh's own connections.

Every request a worker reads carries headers (at least `Mesh-Request-Id` and `Mesh-Deadline` from
`MeshClient`), and nats-py parses each line with a generator over the name's characters to refuse
a name with white space in it: about a tenth of a worker's CPU per echoed request (py-spy, invoke
at concurrency 64). `parse_header_lines` returns exactly what nats-py 2.16's
`Client._parse_header_lines` returns, but asks the generator only for a name that is not plain
letters, digits and dashes (which cannot hold white space). `install` sets it on one connection
(an instance attribute: nats-py itself is not changed), after checking on sample blocks that both
parsers agree; if nats-py has no such method, or they disagree, the connection keeps its own and
the self-check logs it once (`nats.shortcut_disabled`, shortcut `headers`).
"""

from __future__ import annotations

from typing import Any

from mesh._nats import selfcheck

_CRLF = b"\r\n"

SAMPLES = (
    b"Mesh-Request-Id: abc\r\nMesh-Deadline: 1796197758008\r\n\r\n",
    b"a:b\r\nbad name: x\r\n\xff: y\r\nno colon\r\n:empty\r\nk:\tv \r\n x : v2 \r\nu: \xc3\xbc\xff\r\n\x1cz: w\r\n\r\n",
)


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """`Name: Value` lines to a dict, as nats-py's `Client._parse_header_lines` does."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if not key.replace("-", "").isalnum() and any(c.isspace() for c in key):
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def install(nc: Any) -> bool:
    """Parse `nc`'s incoming headers with `parse_header_lines`; False if nats-py's parser is not
    there to replace, or does not agree with it on `SAMPLES`."""
    original = getattr(type(nc), "_parse_header_lines", None)
    if original is None:
        return _keep("_parse_header_lines (missing)")
    try:
        if any(original(sample) != parse_header_lines(sample) for sample in SAMPLES):
            return _keep("_parse_header_lines (parses differently)")
    except Exception as exc:
        return _keep(f"_parse_header_lines (raised {type(exc).__name__})")
    nc._parse_header_lines = parse_header_lines
    return True


def _keep(why: str) -> bool:
    selfcheck.give_up("headers", [why], "headers are parsed by nats-py's own parser")
    return False

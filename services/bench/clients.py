"""Small keep-alive HTTP/1.1 and SMTP clients for the `http` and `mail` scenarios.

Why not httpx or aiosmtplib: the bench process drives both sides of a ratio from one event loop,
and a general client spends more CPU per request than the server under test, which would flatten
every ratio towards 1. These speak just enough of each protocol to send one kind of request on
a pool of persistent connections, and fail loudly on anything unexpected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class ProtocolError(Exception):
    """The server answered something this client does not expect (a status, a reply code)."""


class _Pool:
    """`size` persistent connections; an operation borrows one and returns it (LIFO)."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self._free: asyncio.LifoQueue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.LifoQueue()
        self._all: list[asyncio.StreamWriter] = []

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._all.append(writer)
        return reader, writer

    async def _borrow(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._free.empty() and len(self._all) < self.size:
            return await self._open_session()
        return await self._free.get()

    async def _open_session(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self._open()

    async def close(self) -> None:
        for writer in self._all:
            writer.close()
        for writer in self._all:
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self._all.clear()


class HttpPool(_Pool):
    """POST a body to a path over keep-alive connections; returns the 200 response body."""

    async def post(self, path: str, body: bytes) -> bytes:
        reader, writer = await self._borrow()
        try:
            writer.write(
                b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (path.encode(), self.host.encode(), self.port, len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, _, header_block = head.partition(b"\r\n")
            length = None
            for line in header_block.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise ProtocolError(f"no Content-Length in {head[:200]!r}")
            data = await reader.readexactly(length)
        except BaseException:
            writer.close()
            self._all.remove(writer)
            raise
        self._free.put_nowait((reader, writer))
        if status_line.split(b" ", 2)[1] != b"200":
            raise ProtocolError(f"{status_line.decode(errors='replace')}: {data[:300].decode(errors='replace')}")
        return data


class SmtpPool(_Pool):
    """Send mail over persistent SMTP sessions (HELO once, then MAIL/RCPT/DATA per mail)."""

    async def _open_session(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self._open()
        await _reply(reader, b"220")
        writer.write(b"HELO bench.invalid\r\n")
        await _reply(reader, b"250")
        return reader, writer

    async def send(self, sender: str, recipient: str, message: bytes) -> bytes:
        """One transaction; returns the final reply line (the 250 to DATA)."""
        reader, writer = await self._borrow()
        try:
            writer.write(b"MAIL FROM:<%s>\r\n" % sender.encode())
            await _reply(reader, b"250")
            writer.write(b"RCPT TO:<%s>\r\n" % recipient.encode())
            await _reply(reader, b"250")
            writer.write(b"DATA\r\n")
            await _reply(reader, b"354")
            writer.write(message + b"\r\n.\r\n")
            line = await _reply(reader, b"250")
        except BaseException:
            writer.close()
            self._all.remove(writer)
            raise
        self._free.put_nowait((reader, writer))
        return line


async def _reply(reader: asyncio.StreamReader, expected: bytes) -> bytes:
    """Read one (possibly multi-line) SMTP reply; its last line, if its code is `expected`."""
    while True:
        line = await reader.readline()
        if not line:
            raise ProtocolError(f"connection closed while waiting for {expected.decode()}")
        if line[3:4] != b"-":
            break
    if not line.startswith(expected):
        raise ProtocolError(f"expected {expected.decode()}, got {line.decode(errors='replace').strip()}")
    return line.rstrip()


def mail_message(run_id: str) -> Callable[[int], bytes]:
    """The bench mail: the same ~1 KB text message each time, with its own Message-ID (the mail
    service deduplicates re-sends of one Message-ID, which would skip the store)."""
    body = b"\r\n".join(b"Line %02d of the bench message, the same text every time." % i for i in range(16))

    def message(i: int) -> bytes:
        return (
            b"From: Bench <bench@bench.invalid>\r\nTo: bench-echo+b@localhost\r\nSubject: bench\r\n"
            b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nMessage-ID: <%d.%s@bench.invalid>\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n%s" % (i, run_id.encode(), body)
        )

    return message

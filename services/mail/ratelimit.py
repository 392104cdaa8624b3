"""At most `limit` replies per sender per `window` seconds, shared by every mail service process."""

from __future__ import annotations

import time

from mesh.errors import StateConflict
from services.mail.store import MailStore, short_hash


class ReplyRateLimit:
    """A sliding window per sender address in the `mesh_mail` KV bucket (`rate.<hash>`), compare-and-set."""

    def __init__(self, store: MailStore, limit: int, window: float) -> None:
        self.store = store
        self.limit = limit
        self.window = window

    async def allow(self, sender: str) -> bool:
        """Count one reply to `sender` if the window has room; False (nothing counted) when it has not."""
        key = short_hash(sender.lower())
        for _ in range(10):
            now = time.time()
            found = await self.store.get_record("rate", key)
            times, revision = ([], 0) if found is None else (found[0].get("times", []), found[1])
            recent = [t for t in times if now - t < self.window]
            if len(recent) >= self.limit:
                return False
            try:
                await self.store.put_record("rate", key, {"times": [*recent, now]}, last=revision)
                return True
            except StateConflict:
                continue  # another process counted a reply at the same moment
        return False

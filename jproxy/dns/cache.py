"""A bounded cache of DNS answers, kept for their TTL; the time is always passed in.

Positive answers live for their TTL (at most ``max_ttl``), negative ones (NXDOMAIN, no
records) for at most ``max_negative_ttl``, so a name that appears a moment later is not hidden
for long. When full, the least recently used entry makes room: the cache never holds more
than ``max_entries`` names.
"""

from __future__ import annotations

from collections import OrderedDict

from jproxy.dns.message import Answer

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_TTL = 3600
DEFAULT_MAX_NEGATIVE_TTL = 30


def cache_key(host: str) -> str:
    """Names differ only in case and a trailing dot: one entry for all spellings."""
    return host.rstrip(".").lower()


class DnsCache:
    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_ttl: int = DEFAULT_MAX_TTL,
        max_negative_ttl: int = DEFAULT_MAX_NEGATIVE_TTL,
    ) -> None:
        if max_entries < 1:
            raise ValueError("a cache holds at least one entry")
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self._entries: OrderedDict[str, tuple[float, Answer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, host: str, now: float) -> Answer | None:
        """The answer for ``host`` if it is still valid at ``now``, else None."""
        key = cache_key(host)
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if now >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    def put(self, host: str, answer: Answer, now: float) -> None:
        """Keep ``answer`` for its TTL within the bounds; a TTL of 0 keeps nothing."""
        limit = self.max_negative_ttl if answer.negative else self.max_ttl
        ttl = min(answer.ttl, limit)
        key = cache_key(host)
        if ttl <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (now + ttl, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

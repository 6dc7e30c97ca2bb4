"""Names resolved over DNS over HTTPS (RFC 8484), cached by TTL; a ``Resolver``.

Each lookup asks for A and AAAA at once, as two POSTs of ``application/dns-message`` on the
one shared HTTP/2 connection (``jproxy.handlers.dns.http2``). Answers are kept in a bounded
``DnsCache``; greenlets asking for a name already being looked up wait for that lookup
instead of sending their own. The DoH server's host is an IP literal or is resolved once, by
the system resolver, when the server starts; its certificate is checked against the name in the
URL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import dns.message
import gevent
from gevent.event import AsyncResult

from jproxy.dns.cache import DnsCache, cache_key
from jproxy.dns.message import (
    MAX_MESSAGE_SIZE,
    MEDIA_TYPE,
    RECORD_TYPES,
    Answer,
    DnsError,
    combine,
    query,
    read_answer,
)
from jproxy.handlers.dns.http2 import (
    ConnectionLost,
    Exchange,
    Http2Client,
    Http2Error,
    tls_context,
)
from jproxy.handlers.dns.resolver import ResolveError, SystemResolver
from jproxy.metrics import Counters
from jproxy.policy.hostnames import ip_literal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DohServer:
    """Where the DoH server is, from its URL: ``https://HOST[:PORT]/PATH``."""

    url: str
    host: str
    port: int
    path: str

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"


def parse_doh_url(url: str) -> DohServer:
    """The parts of a DoH URL; ``ValueError`` says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"expected https://HOST[:PORT]/PATH, got {url!r}")
    if parts.username or parts.password or parts.fragment:
        raise ValueError(f"a DoH URL has no user, password or #fragment: {url!r}")
    port = parts.port or 443  # raises ValueError for a bad port
    path = (parts.path or "/dns-query") + (f"?{parts.query}" if parts.query else "")
    return DohServer(url, parts.hostname, port, path)


def _why(error: Exception) -> str:
    """An error for the log; socket errors keep their kind (refused, reset, certificate)."""
    return f"{type(error).__name__}: {error}" if isinstance(error, OSError) else str(error)


class DohResolver:
    """``resolve(host, timeout)`` over DoH; ``start`` finds the server and makes one."""

    def __init__(
        self,
        server: DohServer,
        address: str,
        *,
        ca_file: str | None = None,
        counters: Counters | None = None,
        cache: DnsCache | None = None,
        connect_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.counters = counters or Counters()
        self.cache = cache or DnsCache()
        self.http = Http2Client(
            (address, server.port),
            server.host,
            tls_context(ca_file),
            connect_timeout=connect_timeout,
        )
        self._clock = clock
        self._pending: dict[str, AsyncResult] = {}
        self._failing = False

    @classmethod
    def start(
        cls, url: str, *, ca_file: str | None, counters: Counters, timeout: float = 10.0
    ) -> DohResolver:
        """Resolve the server's host once (unless it is an IP literal) and log where it is."""
        server = parse_doh_url(url)
        if ip_literal(server.host) is not None:
            address = server.host
        else:
            address = SystemResolver().resolve(server.host, timeout)[0]
        log.info("DoH: resolving names over %s (at %s)", url, address)
        return cls(server, address, ca_file=ca_file, counters=counters, connect_timeout=timeout)

    def resolve(self, host: str, timeout: float) -> list[str]:
        if ip_literal(host) is not None:
            return [host]
        expired = ResolveError(f"DoH: no answer from {self.server.url} within {timeout:g} s")
        with gevent.Timeout(timeout, expired):
            answer = self._answer(host)
        if answer.negative:
            raise ResolveError(f"DoH: {host}: {answer.negative}")
        return list(answer.addresses)

    def close(self) -> None:
        self.http.close()

    def _answer(self, host: str) -> Answer:
        cached = self.cache.get(host, self._clock())
        if cached is not None:
            self.counters.dns_cache_hits += 1
            return cached
        self.counters.dns_cache_misses += 1
        key = cache_key(host)
        lookup = self._pending.get(key)
        if lookup is not None:  # someone is asking already: wait for their answer
            return lookup.get()
        lookup = self._pending[key] = AsyncResult()
        try:
            answer = self._lookup(host)
        except ResolveError as error:
            lookup.set_exception(error)
            raise
        except BaseException:
            lookup.set_exception(ResolveError(f"DoH: the lookup of {host} was abandoned"))
            raise
        finally:
            del self._pending[key]
        lookup.set(answer)
        return answer

    def _lookup(self, host: str) -> Answer:
        try:
            queries = [query(host, record_type) for record_type in RECORD_TYPES]
        except DnsError as error:
            raise ResolveError(f"DoH: {error}") from None
        started = self._clock()
        self.counters.doh_lookups += 1
        failure = "no answer in time"
        try:
            answer = self._ask(queries, retry=True)
            failure = ""
        except (Http2Error, DnsError, OSError) as error:
            failure = (
                f"{type(error).__name__}: {error}" if isinstance(error, OSError) else str(error)
            )
            raise ResolveError(f"DoH server {self.server.url}: {failure}") from None
        finally:
            self.counters.doh_lookup_seconds += self._clock() - started
            self._health(failure)
        self.cache.put(host, answer, self._clock())
        return answer

    def _ask(self, queries: list[dns.message.QueryMessage], *, retry: bool) -> Answer:
        """Send the queries at once and combine their answers; once more on a new connection
        when a connection that had served before ended under them."""
        exchanges: list[Exchange] = []
        try:
            for message in queries:
                body = message.to_wire()
                exchanges.append(
                    self.http.request(self._headers(len(body)), body, MAX_MESSAGE_SIZE)
                )
            return combine(
                [
                    read_answer(message, self._body(exchange))
                    for message, exchange in zip(queries, exchanges, strict=True)
                ]
            )
        except ConnectionLost as error:
            if not (retry and exchanges and exchanges[0].reused):
                raise
            log.debug("DoH: %s; asking again on a new connection", error)
        finally:
            for exchange in exchanges:
                exchange.connection.forget(exchange)
        return self._ask(queries, retry=False)

    def _headers(self, length: int) -> list[tuple[str, str]]:
        return [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", self.server.authority),
            (":path", self.server.path),
            ("content-type", MEDIA_TYPE),
            ("accept", MEDIA_TYPE),
            ("content-length", str(length)),
        ]

    @staticmethod
    def _body(exchange: Exchange) -> bytes:
        response = exchange.response()
        if response.status != 200:
            raise DnsError(f"the DoH server answered HTTP {response.status}")
        media_type = response.headers.get("content-type", "").partition(";")[0].strip()
        if media_type != MEDIA_TYPE:
            raise DnsError(f"the DoH server answered with {media_type or 'no'} content type")
        return response.body

    def _health(self, failure: str) -> None:
        """Log when lookups start failing and when they work again, not every lookup."""
        if failure:
            self.counters.doh_failures += 1
            if not self._failing:
                log.warning("DoH: lookups failing: %s", failure)
            self._failing = True
        elif self._failing:
            log.info("DoH: lookups work again")
            self._failing = False

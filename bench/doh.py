"""What a name costs the server with ``--doh``: from the cache, over the shared HTTP/2
connection, and (for comparison) over a new connection per lookup.

Starts unbound on 127.0.0.1 with DNS over HTTPS (``tests.peers.Unbound``, a self-signed
certificate, names only it knows) and runs ``DohResolver`` in this process on gevent. Prints
p50/p99 in µs of: a cached answer; a lookup (A and AAAA) on the established connection; a
lookup with a fresh resolver, so a TCP + TLS + HTTP/2 setup each time; then lookups per second
with 200 names asked at once and the connections that took. Run: ``python bench/doh.py``.

When httpx (with its ``http2`` extra) is installed, the same lookups go through one shared
``httpx.Client(http2=True)`` too, for the question whether it could replace
``jproxy.handlers.dns.http2`` (docs/dns-and-logs.md has the answer). The server does not
monkey-patch, so httpx's blocking calls run in gevent's thread pool, as they would have to in
the server: with the pool's 10 threads, at most 10 requests are in flight at once.
dnspython's ``dns.query.https`` is httpx underneath, so this row stands for it too.

Bounded: about 15 s. Needs unbound (Debian package ``unbound``).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import gevent.threadpool

# The unbound peer is in tests/, which is part of the repository but not of the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jproxy.dns.message import MEDIA_TYPE, RECORD_TYPES, combine, query, read_answer  # noqa: E402
from jproxy.handlers.dns.doh import DohResolver  # noqa: E402
from jproxy.metrics import Counters  # noqa: E402
from tests.peers import Unbound  # noqa: E402

NAMES = 2000
SEQUENTIAL = 300
CONCURRENT = 200
FRESH = 50


def timings(count: int, action: Callable[[int], object]) -> list[float]:
    """Microseconds of each of ``count`` calls of ``action(index)``."""
    spent = []
    for index in range(count):
        started = time.perf_counter()
        action(index)
        spent.append((time.perf_counter() - started) * 1e6)
    return spent


def at_once(resolve: Callable[[str], object], first: int) -> float:
    """Lookups a second of ``CONCURRENT`` names from ``h{first}`` on, all asked at once."""
    names = [f"h{index}.bench.test" for index in range(first, first + CONCURRENT)]
    started = time.perf_counter()
    lookups = [gevent.spawn(resolve, name) for name in names]
    gevent.joinall(lookups, raise_error=True, timeout=30)
    return CONCURRENT / (time.perf_counter() - started)


def report(what: str, spent: list[float]) -> None:
    cuts = statistics.quantiles(spent, n=100)
    print(f"{what:48} p50 {cuts[49]:9.0f} µs   p99 {cuts[98]:9.0f} µs   (n={len(spent)})")


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        records = {f"h{index}.bench.test": ("127.0.0.1", 300) for index in range(NAMES)}
        unbound = Unbound(Path(folder) / "unbound", records)
        try:
            run(unbound)
        finally:
            unbound.stop()
    return 0


def run(unbound: Unbound) -> None:
    def resolver() -> DohResolver:
        return DohResolver.start(unbound.doh_url, ca_file=str(unbound.cert), counters=Counters())

    shared = resolver()
    shared.resolve("h0.bench.test", 5)  # the connection is up from here on
    report("cached answer", timings(SEQUENTIAL, lambda _: shared.resolve("h0.bench.test", 5)))
    report(
        "lookup on the shared HTTP/2 connection",
        timings(SEQUENTIAL, lambda i: shared.resolve(f"h{i + 1}.bench.test", 5)),
    )

    def fresh(index: int) -> None:
        one = resolver()
        one.resolve(f"h{index + 1}.bench.test", 5)
        one.close()

    report("lookup on a new connection (TCP+TLS+h2 setup)", timings(FRESH, fresh))

    first = SEQUENTIAL + 1
    rate = at_once(lambda name: shared.resolve(name, 10), first)
    print(
        f"{CONCURRENT} names at once: {rate:,.0f} lookups/s, "
        f"{shared.http.connections_opened} connection(s) opened in all, "
        f"{unbound.https_connections()} open at unbound"
    )
    shared.close()
    try:
        import httpx
    except ImportError:
        print("httpx not installed: no comparison (pip install 'httpx[http2]')")
        return
    run_httpx(unbound, httpx, first + CONCURRENT)


def run_httpx(unbound: Unbound, httpx, first: int) -> None:
    """The same lookups over one shared ``httpx.Client(http2=True)`` in gevent's thread pool."""
    client = httpx.Client(http2=True, verify=str(unbound.cert), timeout=5.0)
    pool = gevent.threadpool.ThreadPool(10)
    failures: list[str] = []

    def post(message) -> bytes:
        try:
            response = client.post(
                unbound.doh_url,
                content=message.to_wire(),
                headers={"content-type": MEDIA_TYPE, "accept": MEDIA_TYPE},
            )
        except httpx.HTTPError as error:  # httpx does not retry on a new connection
            failures.append(f"{type(error).__name__}: {error}")
            return post(message)
        return response.content

    def resolve(name: str) -> None:
        messages = [query(name, record_type) for record_type in RECORD_TYPES]
        asks = [pool.spawn(post, message) for message in messages]
        combine([read_answer(m, ask.get()) for m, ask in zip(messages, asks, strict=True)])

    resolve(f"h{first}.bench.test")
    report(
        "httpx h2, thread pool: lookup on its connection",
        timings(SEQUENTIAL, lambda i: resolve(f"h{first + 1 + i}.bench.test")),
    )
    rate = at_once(resolve, first + SEQUENTIAL + 1)
    print(
        f"httpx: {CONCURRENT} names at once: {rate:,.0f} lookups/s, "
        f"{unbound.https_connections()} open at unbound; "
        f"{len(failures)} request(s) failed and were asked again {sorted(set(failures))}"
    )
    client.close()
    pool.kill()


if __name__ == "__main__":
    sys.exit(main())

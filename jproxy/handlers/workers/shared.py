"""What the worker processes of ``gjproxy server --workers N`` share.

- **Counters.** Each worker mirrors its ``Counters`` into prometheus_client's multiprocess
  files (``PROMETHEUS_MULTIPROC_DIR``) every ``EXPORT_INTERVAL``; the parent reads them back,
  summed across workers by prometheus_client's ``MultiProcessCollector``, into one
  ``Counters`` that its admin listener and Prometheus page serve. Totals survive a worker's
  death (its counter files stay); its gauges (open now) go with it (``mark_process_dead``).
- **Tunnel limits.** ``--max-tunnels`` and ``--max-tunnels-per-user`` hold for the server as a
  whole: a table in a shared file (``SharedTable``: per worker its tunnels and each user's proven
  tunnels), read and changed under ``flock``, which the kernel releases when a holder dies.
- **The relay buffer size** (admin ``set-buffer``) sits in the same table; workers pick it up
  with their export.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gevent

from jproxy.metrics import SERVICES, Counters
from jproxy.policy.admission import Granted, Refused, TunnelSlots
from jproxy.tuning import RelayTuning

log = logging.getLogger(__name__)

EXPORT_INTERVAL = 0.5
USERS = 1024
"""Distinct user names the shared table can hold (a users folder is far smaller)."""
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")

SCALARS = {
    "connections_total": "counter",
    "bytes_transferred": "counter",
    "doh_lookups": "counter",
    "doh_failures": "counter",
    "doh_lookup_seconds": "counter",
    "dns_cache_hits": "counter",
    "dns_cache_misses": "counter",
    "unrecognized_connections": "counter",  # the client's port: 0 on a server, mirrored alike
    "connections_open": "gauge",
    "tunnels_open": "gauge",
}
LABELLED = {
    "tunnels_by_dialect": ("gauge", "dialect"),
    "users_connected": ("gauge", "user"),
    "datagrams_dropped": ("counter", "reason"),
}
SERVICE_FIELDS = {
    "connections_total": "counter",
    "connections_open": "gauge",
    "bytes_transferred": "counter",
}
PREFIX = "gjproxy_worker_"


class SharedTable:
    """The shared file: the buffer size, then per worker its tunnel count, then the user
    names' keys, then per worker each user's proven tunnels. Every worker opens the file
    itself, so each has its own ``flock``."""

    def __init__(self, path: Path, workers: int) -> None:
        self.path, self.workers = path, workers
        self._totals = 8
        self._keys = self._totals + 8 * workers
        self._counts = self._keys + 8 * USERS
        size = self._counts + 8 * USERS * workers
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Held for microseconds (a few reads and writes of the map): blocking is harmless."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _get(self, offset: int) -> int:
        return _I64.unpack_from(self._map, offset)[0]

    def _put(self, offset: int, value: int) -> None:
        _I64.pack_into(self._map, offset, value)

    @property
    def buffer_size(self) -> int:
        return self._get(0)

    @buffer_size.setter
    def buffer_size(self, size: int) -> None:
        self._put(0, size)

    def tunnels(self, worker: int) -> int:
        return self._get(self._totals + 8 * worker)

    def set_tunnels(self, worker: int, count: int) -> None:
        self._put(self._totals + 8 * worker, count)

    def _slot(self, user: str) -> int | None:
        """The user's place in the key table (taken for it if new); None when full."""
        key = _U64.unpack(hashlib.blake2b(user.encode(), digest_size=8).digest())[0] or 1
        start = key % USERS
        for step in range(USERS):
            slot = (start + step) % USERS
            found = _U64.unpack_from(self._map, self._keys + 8 * slot)[0]
            if found == key:
                return slot
            if found == 0:
                _U64.pack_into(self._map, self._keys + 8 * slot, key)
                return slot
        return None

    def user_tunnels(self, worker: int, user: str) -> int:
        slot = self._slot(user)
        return 0 if slot is None else self._get(self._counts + 8 * (worker * USERS + slot))

    def set_user_tunnels(self, worker: int, user: str, count: int) -> None:
        slot = self._slot(user)
        if slot is not None:
            self._put(self._counts + 8 * (worker * USERS + slot), count)

    def clear(self, worker: int) -> None:
        """A worker ended: its tunnels are gone."""
        with self.locked():
            self.set_tunnels(worker, 0)
            start = self._counts + 8 * worker * USERS
            self._map[start : start + 8 * USERS] = bytes(8 * USERS)


class SharedTunnelSlots(TunnelSlots):
    """``TunnelSlots`` whose limits count the other workers' tunnels too: each decision is
    taken under the table's lock with this worker's limits lowered by what the others hold
    (and restored before anything else runs: nothing in between yields to another greenlet)."""

    def __init__(self, max_tunnels: int, max_per_user: int, table: SharedTable, worker: int):
        super().__init__(max_tunnels, max_per_user)
        self.table, self.worker = table, worker

    def claim(self, key: Hashable, user: str, *, proven: bool) -> Granted | Refused:
        return self._shared(
            user, lambda: super(SharedTunnelSlots, self).claim(key, user, proven=proven)
        )

    def prove(self, key: Hashable) -> Granted | Refused:
        user = self.holder(key)
        return self._shared(user, lambda: super(SharedTunnelSlots, self).prove(key))

    def release(self, key: Hashable) -> None:
        user = self.holder(key)
        with self.table.locked():
            super().release(key)
            self._publish(user)

    def _shared(self, user: str, decide) -> Granted | Refused:
        table, worker = self.table, self.worker
        max_tunnels, max_per_user = self.max_tunnels, self.max_per_user  # a reload may set them
        with table.locked():
            others = range(table.workers)
            tunnels = sum(table.tunnels(w) for w in others if w != worker)
            users = sum(table.user_tunnels(w, user) for w in others if w != worker)
            self.max_tunnels, self.max_per_user = max_tunnels - tunnels, max_per_user - users
            try:
                decision = decide()
            finally:
                self.max_tunnels, self.max_per_user = max_tunnels, max_per_user
            self._publish(user)
        if isinstance(decision, Refused):
            if self.proven_of(user) + users >= max_per_user:
                return Refused(f"{user} already has {max_per_user} tunnels (all workers)")
            return Refused(f"{max_tunnels} tunnels are open (all workers)")
        return decision

    def _publish(self, user: str | None) -> None:
        self.table.set_tunnels(self.worker, len(self))
        if user is not None:
            self.table.set_user_tunnels(self.worker, user, self.proven_of(user))


class SharedTuning(RelayTuning):
    """The parent's tuning: ``set-buffer`` also goes into the table, for every worker."""

    def __init__(self, table: SharedTable) -> None:
        super().__init__()
        self.table = table
        table.buffer_size = self.buffer_size

    def set_buffer_size(self, size: int) -> int:
        size = super().set_buffer_size(size)
        self.table.buffer_size = size
        return size


# --- counters ---------------------------------------------------------------------------------


class CounterExport:
    """A worker's side: mirror ``counters`` into multiprocess metrics; take up the shared
    buffer size. Needs ``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is imported."""

    def __init__(self, counters: Counters, tuning: RelayTuning, table: SharedTable) -> None:
        from prometheus_client import Counter, Gauge

        def metric(kind: str, name: str, labels: tuple[str, ...] = ()):
            if kind == "counter":
                return Counter(PREFIX + name, name, labels, registry=None)
            return Gauge(PREFIX + name, name, labels, registry=None, multiprocess_mode="livesum")

        self.counters, self.tuning, self.table = counters, tuning, table
        self._scalars = {name: metric(kind, name) for name, kind in SCALARS.items()}
        self._labelled = {
            name: metric(kind, name, (label,)) for name, (kind, label) in LABELLED.items()
        }
        self._services = {
            name: metric(kind, "service_" + name, ("service",))
            for name, kind in SERVICE_FIELDS.items()
        }
        self._sent: dict[tuple, float] = {}

    def run(self) -> None:
        while True:
            self.export()
            size = self.table.buffer_size
            if size and size != self.tuning.buffer_size:
                self.tuning.set_buffer_size(size)
                log.info("relay buffer size now %d bytes (admin set-buffer)", size)
            gevent.sleep(EXPORT_INTERVAL)

    def export(self) -> None:
        counters = self.counters
        for name, kind in SCALARS.items():
            self._put(self._scalars[name], kind, (name,), (), getattr(counters, name))
        for name, (kind, _) in LABELLED.items():
            family = self._labelled[name]
            values = getattr(counters, name)
            for label in {*values, *(k[1] for k in self._sent if k[0] == name)}:
                self._put(family, kind, (name, label), (label,), values.get(label, 0))
        for service in SERVICES:
            values = counters.by_service[service]
            for name, kind in SERVICE_FIELDS.items():
                key = ("service_" + name, service)
                self._put(self._services[name], kind, key, (service,), getattr(values, name))

    def _put(self, metric, kind: str, key: tuple, labels: tuple, value: float) -> None:
        target = metric.labels(*labels) if labels else metric
        if kind == "gauge":
            target.set(value)
        elif value != self._sent.get(key, 0):
            target.inc(value - self._sent.get(key, 0))
        self._sent[key] = value


def summed_counters(path: str, into: Counters) -> None:
    """The parent's side: every worker's counters, summed, written into ``into``."""
    from prometheus_client.multiprocess import MultiProcessCollector

    fresh = Counters()
    known = {*SCALARS, *LABELLED, *(f"service_{field}" for field in SERVICE_FIELDS)}
    for family in MultiProcessCollector(None, path=path).collect():
        name = family.name.removeprefix(PREFIX)
        if name not in known:
            name += "_total"  # prometheus_client names a counter's family without it
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if name in SCALARS:
                setattr(fresh, name, _number(name, sample.value))
            elif name in LABELLED:
                label = sample.labels[LABELLED[name][1]]
                if sample.value:
                    getattr(fresh, name)[label] = int(sample.value)
            elif name.startswith("service_"):
                field = name.removeprefix("service_")
                service = fresh.by_service.get(sample.labels["service"])
                if service is not None:
                    setattr(service, field, int(sample.value))
    into.__dict__.update(fresh.__dict__)


def _number(name: str, value: float) -> float:
    return value if name == "doh_lookup_seconds" else int(value)

"""The workers' shared table: tunnel limits that hold across processes, on a real shared file."""

from __future__ import annotations

import dataclasses

from jproxy.handlers.workers.shared import (
    LABELLED,
    SCALARS,
    SERVICE_FIELDS,
    SharedTable,
    SharedTunnelSlots,
)
from jproxy.metrics import Counters, ServiceCounters
from jproxy.policy.admission import Granted, Refused


def test_the_per_user_and_total_limits_count_every_worker(tmp_path) -> None:
    first = SharedTunnelSlots(3, 2, SharedTable(tmp_path / "table", 2), 0)
    second = SharedTunnelSlots(3, 2, SharedTable(tmp_path / "table", 2), 1)
    assert isinstance(first.claim("a1", "alice", proven=True), Granted)
    assert isinstance(second.claim("a2", "alice", proven=True), Granted)
    refused = second.claim("a3", "alice", proven=True)
    assert refused == Refused("alice already has 2 tunnels (all workers)")
    assert isinstance(first.claim("b1", "bob", proven=True), Granted)
    assert first.claim("b2", "bob", proven=True) == Refused("3 tunnels are open (all workers)")
    second.release("a2")
    assert isinstance(first.claim("a3", "alice", proven=True), Granted)


def test_a_dead_workers_slots_are_freed(tmp_path) -> None:
    table = SharedTable(tmp_path / "table", 2)
    dying = SharedTunnelSlots(8, 1, SharedTable(tmp_path / "table", 2), 0)
    other = SharedTunnelSlots(8, 1, SharedTable(tmp_path / "table", 2), 1)
    assert isinstance(dying.claim("a1", "alice", proven=True), Granted)
    assert isinstance(other.claim("a2", "alice", proven=True), Refused)
    table.clear(0)  # the parent, when worker 0 died
    assert isinstance(other.claim("a2", "alice", proven=True), Granted)


def test_the_buffer_size_is_shared(tmp_path) -> None:
    SharedTable(tmp_path / "table", 2).buffer_size = 4096
    assert SharedTable(tmp_path / "table", 2).buffer_size == 4096


def test_every_counter_reaches_the_parent() -> None:
    """A counter added to ``Counters`` must be mirrored too, or --workers would drop it."""
    names = {field.name for field in dataclasses.fields(Counters)}
    assert names == {*SCALARS, *LABELLED, "by_service"}
    assert set(SERVICE_FIELDS) == {field.name for field in dataclasses.fields(ServiceCounters)}

"""The console's core: connections, tunnels, notes and traffic, played with a fake clock."""

from __future__ import annotations

import re

from jproxy.console import shapes
from jproxy.console.board import HISTORY, Board

WALL = 1_800_000_000.0


def board(**options) -> Board:
    return Board("client", 100.0, **options)


def test_a_connection_is_listed_with_a_stable_url_safe_id_until_it_closes():
    core = board()
    tunnel = core.add_tunnel("203.0.113.5:16384", user="", dialect="3.1", now=100, wall=WALL)
    first = core.open("tcp", "127.0.0.1:5000", "example.com", 443, tunnel=tunnel, now=100,
                      wall=WALL, handle=None)  # fmt: skip
    second = core.open("tcp", "127.0.0.1:5001", "::1", 80, tunnel=tunnel, now=101,
                       wall=WALL + 1, handle=None)  # fmt: skip
    assert first.id != second.id and first.id != tunnel.id
    assert all(re.fullmatch(r"[0-9a-f]+", row.id) for row in (first, second))
    core.sample(102, WALL + 2, [(first, 10, 2000), (second, 0, 0)])
    assert core.connections[first.id] is first  # the id still finds it after a sample
    core.close(first, 15, 3000)
    assert first.id not in core.connections and second.id in core.connections
    assert (core.closed.up, core.closed.down) == (15, 3000)
    assert (tunnel.closed_up, tunnel.closed_down) == (15, 3000)


def test_rates_come_from_samples_per_connection_per_tunnel_and_in_all():
    core = board()
    tunnel = core.add_tunnel("s:1", user="", dialect="3.1", now=100, wall=WALL)
    row = core.open("tcp", "a:1", "b", 2, tunnel=tunnel, now=100, wall=WALL, handle=None)
    core.sample(101, WALL + 1, [(row, 1000, 4000)])
    core.sample(103, WALL + 3, [(row, 3000, 4000)])  # two seconds later: 2000 B up
    assert (row.up_rate, row.down_rate) == (1000, 0)
    assert (tunnel.up_rate, tunnel.up) == (1000, 3000)
    assert (core.up_rate, core.down_rate) == (1000, 0)
    core.close(row, 3500, 4000)  # 500 B more at its end: they count in the totals
    core.sample(104, WALL + 4, [])
    assert core.up_rate == 500 and core.total == (3500, 4000)
    assert tunnel.up == 3500 and tunnel.up_rate == 500
    assert [point[1] for point in core.history] == [1000, 1000, 500]


def test_a_sample_at_the_same_time_changes_nothing():
    core = board()
    core.sample(100, WALL, [])
    assert not core.history


def test_the_history_keeps_five_minutes():
    core = board()
    for second in range(1, HISTORY + 50):
        core.sample(100 + second, WALL + second, [])
    assert len(core.history) == HISTORY
    assert core.history[0][0] == WALL + 50


def test_past_the_table_s_bound_connections_are_counted_not_listed():
    core = board(max_connections=2)
    rows = [
        core.open("tcp", "a:1", "b", 2, tunnel=None, now=100, wall=WALL, handle=None)
        for _ in range(3)
    ]
    assert rows[2] is None and core.unlisted == 1 and len(core.connections) == 2
    assert shapes.connections(core, 100)["open"] == 3
    core.close(None, 7, 9)  # the unlisted one ends: its bytes still count
    assert core.unlisted == 0 and (core.closed.up, core.closed.down) == (7, 9)


def test_notes_are_a_bounded_ring_newest_first():
    core = board(max_notes=3)
    for number in range(5):
        core.note("warning", f"note {number}" + "x" * 1000, WALL + number)
    listed = shapes.notes(core)
    assert listed["total"] == 5
    assert [note["text"][:6] for note in listed["notes"]] == ["note 4", "note 3", "note 2"]
    assert all(len(note["text"]) <= 500 for note in listed["notes"])


def test_a_client_tunnel_goes_down_and_comes_back_with_a_new_since():
    core = board()
    tunnel = core.add_tunnel("s:1", user="", dialect="3.1", now=100, wall=WALL)
    core.set_state(tunnel, "down", 130, WALL + 30)
    shown = shapes.tunnels(core, 140)["tunnels"][0]
    assert shown["state"] == "down" and shown["for"] == 10
    assert shown["since"] == "2027-01-15T08:00:30.000Z"


def test_the_clash_shapes_have_string_ports_array_chains_and_iso_start():
    core = Board("server", 100.0)
    tunnel = core.add_tunnel("198.51.100.7:40000", user="alice", dialect="3.1", now=100, wall=WALL)
    row = core.open("udp", "198.51.100.7:40000", "10.1.2.3", 53, tunnel=tunnel, now=100,
                    wall=WALL, handle=None, user="alice")  # fmt: skip
    core.sample(101, WALL + 1, [(row, 100, 300)])
    clash = shapes.clash_connections(core)
    assert (clash["uploadTotal"], clash["downloadTotal"]) == (100, 300)
    entry = clash["connections"][0]
    assert entry["id"] == row.id and entry["chains"] == ["198.51.100.7:40000", "tunnel"]
    assert entry["start"] == "2027-01-15T08:00:00.000Z"
    metadata = entry["metadata"]
    assert metadata["destinationPort"] == "53" and metadata["sourcePort"] == "40000"
    assert metadata["destinationIP"] == "10.1.2.3" and metadata["network"] == "udp"
    assert shapes.clash_traffic(core) == {"up": 100, "down": 300}
    assert shapes.users(core) == [
        {"user": "alice", "tunnels": [tunnel.id], "connections": 1, "refusals": 0}
    ]


def test_the_page_s_snapshot_holds_the_busiest_rows_and_the_count_of_all():
    core = board()
    rows = [
        core.open("tcp", "a:1", f"h{n}", 80, tunnel=None, now=100, wall=WALL, handle=None)
        for n in range(shapes.PAGE_ROWS + 20)
    ]
    core.sample(101, WALL + 1, [(row, n, 0) for n, row in enumerate(rows)])
    snapshot = shapes.snapshot(core, 101, "0.1.0")
    assert snapshot["open"] == shapes.PAGE_ROWS + 20
    assert len(snapshot["connections"]) == shapes.PAGE_ROWS
    assert min(row["upload_rate"] for row in snapshot["connections"]) == 20
    assert "users" not in snapshot and len(snapshot["history"]) == 1

"""The balancer's playbooks: health, strategies and stickiness on a fake clock."""

from __future__ import annotations

import pytest

from jproxy.policy.backoff import retry_delay
from jproxy.tunnel.balance import (
    STICKY_HOSTS,
    Balancer,
    Health,
    Load,
    Strategy,
    least_loaded,
    missed_after,
)

A, B, C = 0, 1, 2


def balancer(strategy: Strategy = Strategy.FAILOVER, **options) -> Balancer:
    return Balancer(["a:1", "b:1", "c:1"], strategy, rand=lambda: 0.0, **options)


def test_failover_starts_on_the_first_server_and_wants_only_it() -> None:
    core = balancer()
    assert core.wanted(0.0) == [A]
    core.login_ok(A, 0.0)
    assert core.update(0.0, {A}) == ["failover: using server a:1"]
    assert core.choose("x.example", 0.0, {A}) == A


def test_a_missed_keepalive_brings_in_the_next_server_at_once() -> None:
    core = balancer()
    core.login_ok(A, 0.0)
    core.update(0.0, {A})
    core.missed(A, 7.0, "keepalive unanswered for 1.0s")
    assert core.servers[A].health is Health.FAILING
    assert core.wanted(7.0) == [A, B]  # B dialed now; A is probed again after its backoff
    assert core.may_dial(B, 7.0)
    # Only the stuck tunnel is up: nothing may take a new stream; the caller waits.
    assert core.choose("x", 7.0, {A}) is None
    core.login_ok(B, 7.1)
    lines = core.update(7.1, {A, B})
    assert lines == ["failover: now using server b:1 (a:1 failing: keepalive unanswered for 1.0s)"]
    assert core.choose("x", 7.1, {A, B}) == B


def test_fail_back_after_the_healthy_time_only() -> None:
    core = balancer(failback_after=3.0)
    core.login_failed(A, 0.0, "refused")
    core.login_ok(B, 0.1)
    core.update(0.1, {B})
    assert not core.may_dial(A, 0.05)
    assert core.may_dial(A, 0.1 + retry_delay(1, 0.0))
    core.login_ok(A, 5.0)  # the probe worked
    assert core.servers[A].health is Health.RECOVERING
    assert core.update(7.9, {A, B}) == []
    assert core.choose("x", 7.9, {A, B}) == B
    lines = core.update(8.0, {A, B})
    assert lines[0] == "server a:1 healthy again for 3s"
    assert core.choose("x", 8.0, {A, B}) == A
    assert core.wanted(8.0) == [A]  # B's tunnels close once their streams end


def test_a_recovering_server_serves_when_it_is_the_only_one_up() -> None:
    core = balancer()
    core.login_ok(A, 0.0)
    core.login_failed(A, 1.0, "lost")
    core.login_ok(A, 2.0)
    assert core.choose("x", 2.0, {A}) == A


def test_with_no_tunnel_anywhere_a_failing_server_is_tried_every_few_seconds() -> None:
    core = balancer()
    for _ in range(10):
        core.login_failed(A, 100.0, "refused")
    assert not core.may_dial(A, 103.9, alone=True)
    assert core.may_dial(A, 104.0, alone=True)
    assert not core.may_dial(A, 104.0)  # with another tunnel up, the full backoff holds


def test_backoff_grows_and_is_capped() -> None:
    delays = [retry_delay(n, 1.0) for n in range(1, 12)]
    assert delays == sorted(delays)
    assert delays[-1] == 30.0
    assert retry_delay(1, 0.0) == pytest.approx(0.1)


def test_a_refused_key_ends_only_before_any_login_and_only_when_every_server_refused() -> None:
    core = balancer()
    core.login_failed(A, 0.0, "key", final=True)
    assert core.servers[A].health is Health.REFUSED and not core.given_up
    assert core.wanted(0.0) == [B]
    core.login_failed(B, 0.0, "key", final=True)
    core.login_failed(C, 0.0, "key", final=True)
    assert core.given_up
    later = balancer()
    later.login_ok(A, 0.0)
    later.login_failed(A, 1.0, "key", final=True)  # a server restarting: retried
    assert later.servers[A].health is Health.FAILING


def test_fastest_takes_the_lowest_round_trip_with_hysteresis() -> None:
    core = balancer(Strategy.FASTEST)
    assert core.wanted(0.0) == [A, B, C]
    for server in (A, B):
        core.login_ok(server, 0.0)
    core.rtt_sample(A, 0.050, 0.0)
    core.rtt_sample(B, 0.010, 0.0)
    assert core.update(0.0, {A, B}) == ["fastest: using server b:1, round trip 10.0 ms"]
    core.rtt_sample(A, 0.009, 1.0)  # smoothed: still far above B's
    assert core.update(1.0, {A, B}) == []
    for _ in range(30):
        core.rtt_sample(A, 0.0095, 2.0)  # A now ~0.5 ms better: within the hysteresis
    assert core.update(2.0, {A, B}) == []
    for _ in range(30):
        core.rtt_sample(A, 0.001, 3.0)
    assert core.update(3.0, {A, B})[0].startswith("fastest: now using server a:1")


def test_round_robin_takes_each_healthy_server_in_turn() -> None:
    core = balancer(Strategy.ROUND_ROBIN)
    for server in (A, B, C):
        core.login_ok(server, 0.0)
    core.missed(C, 0.0, "silent")
    chosen = [core.choose(None, 0.0, {A, B, C}) for _ in range(4)]
    assert sorted(chosen) == [A, A, B, B]


def test_a_host_sticks_to_its_server_for_the_sticky_time() -> None:
    core = balancer(Strategy.ROUND_ROBIN, sticky_for=600.0)
    for server in (A, B):
        core.login_ok(server, 0.0)
    first = core.choose("site.example", 0.0, {A, B})
    others = {core.choose(f"other{n}.example", 1.0, {A, B}) for n in range(4)}
    assert others == {A, B}
    assert {core.choose("site.example", t, {A, B}) for t in (10.0, 300.0, 899.0)} == {first}
    # A stream refreshes the time; unused for longer than it, the host takes its turn again.
    moved = {core.choose("site.example", t, {A, B}) for t in (2000.0, 3000.0)}
    assert len(moved) == 2
    # A failing server loses its hosts at once.
    held = core.choose("site2.example", 3000.0, {A, B})
    core.missed(held, 3000.0, "silent")
    assert core.choose("site2.example", 3000.0, {A, B}) != held


def test_sticky_hosts_are_bounded() -> None:
    core = balancer(Strategy.ROUND_ROBIN)
    core.login_ok(A, 0.0)
    for n in range(STICKY_HOSTS + 10):
        core.choose(f"h{n}", 0.0, {A})
    assert len(core._sticky) == STICKY_HOSTS


def test_failover_ignores_stickiness() -> None:
    core = balancer(failback_after=1.0)
    core.login_ok(B, 0.0)
    core.login_failed(A, 0.0, "down")
    assert core.choose("site", 0.0, {B}) == B
    core.login_ok(A, 1.0)
    core.update(2.0, {A, B})
    assert core.choose("site", 2.0, {A, B}) == A


def test_the_least_loaded_tunnel_takes_a_new_stream() -> None:
    assert least_loaded([Load(2, 0), Load(1, 900), Load(1, 100)]) == 2
    assert least_loaded([Load(0, 0)]) == 0


def test_a_keepalive_is_missed_after_four_round_trips_within_bounds() -> None:
    assert missed_after(5.0, None) == 1.0
    assert missed_after(5.0, 0.4) == pytest.approx(1.6)
    assert missed_after(5.0, 2.0) == 2.5
    assert missed_after(0.3, 0.001) == 1.0

"""The admission cores: the pre-login budget and the tunnel slots, fed events."""

from __future__ import annotations

import pytest

from jproxy.policy.admission import (
    GREETED,
    KNOWN,
    Granted,
    PreLoginBudget,
    Refused,
    TunnelSlots,
    source_of,
)


def test_source_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2::9") == "2001:db8:1:2::/64"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("fe80::1%lo") == "fe80::/64"


def test_budget_admits_within_limits() -> None:
    budget = PreLoginBudget(total=3, per_address=2)
    assert [budget.admit(key, "a", 0.0) for key in (1, 2)] == [None, None]
    assert budget.admit(3, "b", 0.0) is None
    assert len(budget) == 3 and budget.waiting_from("a") == 2


def test_a_full_address_drops_its_own_oldest_once_it_waited_the_grace() -> None:
    budget = PreLoginBudget(total=100, per_address=2, grace=1.0)
    budget.admit("flood-1", "attacker", 0.0)
    budget.admit("flood-2", "attacker", 0.5)
    budget.admit("user", "user", 0.5)
    assert budget.admit("burst", "attacker", 0.9) is None  # a burst of fresh ones is let in
    assert budget.admit("flood-3", "attacker", 1.0) == "flood-1"
    assert budget.admit("flood-4", "attacker", 1.2) is None
    assert budget.admit("flood-5", "attacker", 1.5) == "flood-2"
    assert budget.waiting_from("user") == 1 and budget.waiting_from("attacker") == 4


def test_a_full_budget_drops_the_oldest_of_the_busiest_address() -> None:
    budget = PreLoginBudget(total=4, per_address=3)
    for key in ("a1", "b1", "b2", "b3"):
        budget.admit(key, key[0], 0.0)
    assert budget.admit("user", "u", 0.0) == "b1"
    assert budget.admit("c1", "c", 0.0) == "b2"  # a, b and u now hold one each
    assert budget.admit("c2", "c", 0.0) == "a1"  # a tie: the address that came first gives way
    assert budget.waiting_from("u") == 1


def test_a_flood_never_drops_a_newcomer_before_limit_more_arrive() -> None:
    """1,000 connections from 100 addresses: a real client's stays until its address is busiest."""
    budget = PreLoginBudget(total=128, per_address=16)
    for n in range(1000):
        budget.admit(n, f"10.0.0.{n % 100}", n / 100)
    budget.admit("real", "192.0.2.1", 10.0)
    dropped = [budget.admit(("late", n), f"10.0.0.{n % 100}", 10.0) for n in range(1000)]
    assert "real" not in dropped and budget.waiting_from("192.0.2.1") == 1
    assert len(budget) == 128


def test_the_connection_that_got_least_far_gives_way_first() -> None:
    budget = PreLoginBudget(total=4, per_address=4)
    for key in ("silent", "greeted", "known", "fresh"):
        budget.admit(key, "a", 0.0)
    budget.progress("greeted", GREETED)
    budget.progress("known", KNOWN)
    budget.progress("known", GREETED)  # never backwards
    budget.progress("gone", KNOWN)  # not waiting: nothing happens
    assert budget.admit("n1", "a", 0.0) == "silent"
    assert budget.admit("n2", "a", 0.0) == "fresh"
    assert budget.admit("n3", "a", 0.0) == "n1"  # the silent ones go, oldest first
    budget.progress("n2", GREETED)
    budget.progress("n3", GREETED)
    assert budget.admit("n4", "a", 0.0) == "greeted"  # none silent: the oldest greeted
    assert budget.admit("n5", "a", 0.0) == "n4"


def test_the_per_address_share_drops_the_least_far_of_those_past_the_grace() -> None:
    budget = PreLoginBudget(total=100, per_address=2, grace=1.0)
    budget.admit("idle", "a", 0.0)
    budget.admit("real", "a", 0.2)
    budget.progress("real", GREETED)
    budget.admit("idle2", "a", 0.3)
    assert budget.admit("burst", "a", 0.9) is None  # nobody has waited the grace yet
    assert budget.admit("n1", "a", 1.25) == "idle"
    assert budget.admit("n2", "a", 1.31) == "idle2"  # silent, though "real" came first
    assert budget.admit("n3", "a", 1.32) == "real"  # greeted, yet waited 1 s and more
    assert budget.waiting_from("a") == 4


def test_a_real_login_survives_a_flood_that_reopens_ten_times_the_budget() -> None:
    """1,280 re-opening connections from one address, and from 300: a real client that sent
    its hello keeps its place however many silent newcomers arrive, until it logs in."""
    for sources in (1, 300):
        budget = PreLoginBudget(total=128, per_address=16)
        for n in range(1280):
            budget.admit(n, f"10.0.{n % sources // 256}.{n % sources % 256}", n / 1000)
        budget.admit("real", "10.0.0.0", 1.3)
        budget.progress("real", GREETED)
        dropped = [
            budget.admit(("again", n), f"10.0.0.{n % sources % 256}", 1.3) for n in range(1280)
        ]
        assert "real" not in dropped
        budget.progress("real", KNOWN)
        assert len(budget) == 128 and budget.waiting_from("10.0.0.0") >= 1


def test_release_frees_the_place_and_tolerates_unknown_keys() -> None:
    budget = PreLoginBudget(total=1, per_address=1)
    budget.admit("a", "x", 0.0)
    budget.release("a")
    budget.release("a")
    assert budget.admit("b", "x", 0.0) is None and len(budget) == 1
    with pytest.raises(ValueError):
        budget.admit("b", "x", 0.0)


def test_proven_tunnels_respect_the_per_user_cap() -> None:
    slots = TunnelSlots(max_tunnels=10, max_per_user=2)
    assert slots.claim(1, "alice", proven=True) == Granted()
    assert slots.claim(2, "alice", proven=True) == Granted()
    assert slots.claim(3, "alice", proven=True) == Refused("alice already has 2 tunnels")
    assert slots.claim(4, "bob", proven=True) == Granted()
    slots.release(1)
    assert slots.claim(5, "alice", proven=True) == Granted()


def test_a_full_server_refuses_proven_logins() -> None:
    slots = TunnelSlots(max_tunnels=2, max_per_user=8)
    slots.claim(1, "alice", proven=True)
    slots.claim(2, "bob", proven=True)
    assert slots.claim(3, "carol", proven=True) == Refused("2 tunnels are open")


def test_replayed_legacy_logins_give_way_to_the_real_user() -> None:
    """--max-tunnels 4 filled by a 3.0 replayer of alice's hash: alice still gets in."""
    slots = TunnelSlots(max_tunnels=4, max_per_user=8)
    for n in range(4):
        assert slots.claim(("replay", n), "alice", proven=False) == Granted()
    assert slots.claim("alice", "alice", proven=False) == Granted((("replay", 0),))
    assert slots.prove("alice") == Granted()
    assert slots.claim("alice 3.1", "alice", proven=True) == Granted((("replay", 1),))
    assert slots.claim("bob", "bob", proven=True) == Granted((("replay", 2),))
    assert slots.proven_of("alice") == 2 and len(slots) == 4


def test_unproven_logins_of_one_user_are_capped_oldest_first() -> None:
    slots = TunnelSlots(max_tunnels=100, max_per_user=2)
    slots.claim("bob unproven", "bob", proven=False)
    slots.claim(1, "alice", proven=False)
    slots.claim(2, "alice", proven=False)
    assert slots.claim(3, "alice", proven=False) == Granted((1,))
    # A full server takes the user's own oldest unproven tunnel before anyone else's.
    slots = TunnelSlots(max_tunnels=2, max_per_user=8)
    slots.claim("bob unproven", "bob", proven=False)
    slots.claim("alice unproven", "alice", proven=False)
    assert slots.claim("alice", "alice", proven=True) == Granted(("alice unproven",))


def test_proving_counts_toward_the_cap() -> None:
    slots = TunnelSlots(max_tunnels=10, max_per_user=1)
    slots.claim("proven", "alice", proven=True)
    slots.claim("legacy", "alice", proven=False)
    assert slots.prove("legacy") == Refused("alice already has 1 tunnels")
    assert len(slots) == 1
    slots.release("proven")
    slots.claim("legacy", "alice", proven=False)
    assert slots.prove("legacy") == slots.prove("legacy") == Granted()

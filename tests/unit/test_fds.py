"""The fd budget core: the soft limit asked for at start, and which stream sockets are kept."""

from __future__ import annotations

import pytest

from jproxy.policy.fds import (
    MAX_SOFT_LIMIT,
    MIN_RESERVE,
    MIN_SHARE,
    FdBudget,
    fair_share,
    raised_soft_limit,
)

UNLIMITED = -1


@pytest.mark.parametrize(
    ("soft", "hard", "wanted"),
    [
        (1024, 524288, 524288),  # systemd's defaults: raised to the hard limit
        (1024, 1024, 1024),
        (4096, 4096, 4096),
        (1024, UNLIMITED, MAX_SOFT_LIMIT),
        (UNLIMITED, UNLIMITED, UNLIMITED),
        (2048, 1024, 2048),  # never lowered
    ],
)
def test_the_soft_limit_is_raised_to_the_hard_limit(soft, hard, wanted) -> None:
    assert raised_soft_limit(soft, hard, UNLIMITED) == wanted


def test_the_reserve_covers_the_tunnels_and_the_rest() -> None:
    budget = FdBudget.for_server(524288, max_tunnels=64)
    assert budget.reserve == 64 + MIN_RESERVE
    assert budget.for_streams == 524288 - 64 - MIN_RESERVE


def test_a_tiny_limit_keeps_half_for_streams() -> None:
    budget = FdBudget.for_server(256, max_tunnels=64)
    assert budget.reserve == 128 and budget.for_streams == 128


def test_a_stream_socket_in_the_reserve_is_refused() -> None:
    budget = FdBudget(limit=1024, reserve=192)
    assert budget.allows(0)
    assert budget.allows(831)
    assert not budget.allows(832)
    assert not budget.allows(1023)


def test_a_users_fair_share_shrinks_as_the_others_fill_the_budget() -> None:
    assert fair_share(704, 0) == 352  # alone: half
    assert fair_share(704, 352) == 176
    assert fair_share(704, 700) == MIN_SHARE  # never below the floor


def test_users_at_their_caps_leave_a_newcomer_a_share() -> None:
    """Greedy users, each taking fds while its share allows, settle at 1/(n+1) each."""
    for_streams, held = 704, [0, 0, 0]
    for _ in range(for_streams):
        for user in range(len(held)):
            if held[user] < fair_share(for_streams, sum(held) - held[user]):
                held[user] += 1
    assert sum(held) <= for_streams * 3 // 4 + 3
    assert fair_share(for_streams, sum(held)) >= for_streams // 8  # a fourth user gets in

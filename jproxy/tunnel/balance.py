"""Which server, and which of its tunnels, a new stream goes to: health, strategy, stickiness.

Sans-I/O: the client's tunnel pool (``jproxy.handlers.tunnel.pool``) reports what happened
(a login worked or failed, a keepalive came back after so long, one was missed) with the time,
and asks which servers to keep tunnels to and where a new stream goes. What to log comes back
as text from ``update``.

A server's health:

- ``UNKNOWN`` before its first login, ``UP`` once it logged in (or answered again long enough);
- ``FAILING`` after a failed login or connect, or a keepalive not answered in time; it is tried
  again when its backoff is over (``retry_at``);
- ``RECOVERING`` when a failing server logs in or answers again: it takes new streams only once
  it has stayed so for ``failback_after`` seconds (or when no other server has a tunnel up);
- ``REFUSED`` when it refused the key or the dialect before any login worked anywhere.

Strategies: ``failover`` sends new streams to the first healthy server of the list (an earlier
one that recovers gets them back after ``failback_after``); ``fastest`` to the healthy server
with the lowest keepalive round trip, switching only for a clear gain (``HYSTERESIS``);
``round-robin`` to each healthy server in turn. With ``fastest`` and ``round-robin`` a
destination host stays on the server it got for ``sticky_for`` seconds after its last stream,
so a site sees one exit address; ``failover`` has one server in use at a time anyway.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from jproxy.policy.backoff import retry_delay


class Strategy(enum.Enum):
    FAILOVER = "failover"
    FASTEST = "fastest"
    ROUND_ROBIN = "round-robin"


class Health(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    RECOVERING = "recovering"
    FAILING = "failing"
    REFUSED = "refused"


FAILBACK_AFTER = 30.0
"""Seconds a server that failed must answer again before it takes new streams back."""
STICKY_FOR = 600.0
"""Seconds a destination host stays on its server after its last stream."""
STICKY_HOSTS = 4096
"""Hosts remembered for stickiness; the one unused longest is forgotten first."""
HYSTERESIS = 0.2
"""``fastest`` moves to another server only when its round trip is this much lower (20%)..."""
HYSTERESIS_FLOOR = 0.002
"""...and at least this many seconds lower, so jitter of a millisecond never moves it."""
RTT_WEIGHT = 0.25
"""Weight of a new round-trip sample in the smoothed round trip (as TCP's SRTT uses 1/8)."""
RETRY_CAP_ALONE = 4.0
"""While no server has a tunnel up, a failing one is tried again at least this often: the
client is useless until one answers, and a connect attempt costs little."""
MISSED_FLOOR = 1.0
"""A keepalive is missed when unanswered for 4 round trips, and at least this long."""


def missed_after(keepalive: float, rtt: float | None) -> float:
    """Seconds after which an unanswered keepalive counts as missed: 4 smoothed round trips,
    at most half the keepalive interval (so that a stopped server is noticed well before its
    tunnel is declared dead), but never under ``MISSED_FLOOR``."""
    return max(MISSED_FLOOR, min(keepalive / 2, 4 * (rtt or 0.0)))


@dataclass
class Server:
    """What the balancer knows of one server of the list."""

    number: int
    """The place in the list, from 1."""
    name: str
    health: Health = Health.UNKNOWN
    rtt: float | None = None
    """The smoothed keepalive round trip, in seconds; None before the first."""
    since: float = 0.0
    """When the present health began."""
    failures: int = 0
    failed_at: float = 0.0
    retry_at: float = 0.0
    why: str = ""


@dataclass(frozen=True)
class Load:
    """One tunnel's share of the work, for ``least_loaded``."""

    channels: int
    in_flight: int


def least_loaded(loads: Sequence[Load]) -> int:
    """The index of the tunnel with the fewest open channels; ties: fewest bytes in flight."""
    return min(range(len(loads)), key=lambda i: (loads[i].channels, loads[i].in_flight))


class Balancer:
    def __init__(
        self,
        names: Sequence[str],
        strategy: Strategy = Strategy.FAILOVER,
        *,
        failback_after: float = FAILBACK_AFTER,
        sticky_for: float = STICKY_FOR,
        rand=random.random,
    ) -> None:
        if not names:
            raise ValueError("a balancer needs at least one server")
        self.servers = [Server(number + 1, name) for number, name in enumerate(names)]
        self.strategy = strategy
        self.failback_after = failback_after
        self.sticky_for = sticky_for
        self.logged_in = False
        """Whether any login worked yet: until then a refused key ends a server for good."""
        self._rand = rand
        self._sticky: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._current: int | None = None
        self._turn = 0

    # --- what happened ----------------------------------------------------------------------

    def login_ok(self, index: int, now: float) -> None:
        server = self.servers[index]
        self.logged_in = True
        if server.health in (Health.UNKNOWN, Health.UP):
            self._set(server, Health.UP, now, "")
        else:
            self._answered_again(server, now)

    def login_failed(self, index: int, now: float, why: str, *, final: bool = False) -> None:
        """A connect or login failed; ``final`` when retrying cannot help (a refused key or
        dialect): before any login worked, that server is given up."""
        server = self.servers[index]
        if final and not self.logged_in:
            self._set(server, Health.REFUSED, now, why)
            return
        self._failed(server, now, why)

    def rtt_sample(self, index: int, rtt: float, now: float) -> None:
        """A keepalive came back after ``rtt`` seconds."""
        server = self.servers[index]
        server.rtt = rtt if server.rtt is None else server.rtt + RTT_WEIGHT * (rtt - server.rtt)
        if server.health is Health.FAILING:
            self._answered_again(server, now)

    def missed(self, index: int, now: float, why: str) -> None:
        """A keepalive went unanswered too long: the server is failing (its tunnels stay; they
        die by themselves if it never answers)."""
        self._failed(self.servers[index], now, why)

    def _failed(self, server: Server, now: float, why: str) -> None:
        server.failures += 1
        server.failed_at = now
        server.retry_at = now + retry_delay(server.failures, self._rand())
        self._set(server, Health.FAILING, now, why)

    def _answered_again(self, server: Server, now: float) -> None:
        if server.health is not Health.RECOVERING:
            self._set(server, Health.RECOVERING, now, "")

    @staticmethod
    def _set(server: Server, health: Health, now: float, why: str) -> None:
        if health is not server.health:
            server.since = now
        server.health = health
        server.why = why
        if health is Health.UP:
            server.failures = 0

    # --- time passes ------------------------------------------------------------------------

    @property
    def given_up(self) -> bool:
        """Every server refused the key or the dialect: the client cannot go on."""
        return all(server.health is Health.REFUSED for server in self.servers)

    def update(self, now: float, usable: Collection[int]) -> list[str]:
        """Promote servers healthy for ``failback_after``; settle the server in use among
        ``usable`` (servers with a tunnel up). Returns log lines for what changed."""
        lines = []
        for server in self.servers:
            if server.health is Health.RECOVERING and now - server.since >= self.failback_after:
                self._set(server, Health.UP, now, "")
                lines.append(f"server {server.name} healthy again for {self.failback_after:g}s")
        current = self._pick(usable)
        if current != self._current and current is not None:
            lines.append(self._change_text(current))
        self._current = current if current is not None else self._current
        return lines

    def _change_text(self, new: int) -> str:
        server = self.servers[new]
        rtt = f", round trip {server.rtt * 1000:.1f} ms" if server.rtt is not None else ""
        if self._current is None:
            return f"{self.strategy.value}: using server {server.name}{rtt}"
        old = self.servers[self._current]
        why = f" ({old.name} {old.health.value}{': ' + old.why if old.why else ''})"
        return f"{self.strategy.value}: now using server {server.name}{rtt}{why}"

    def _candidates(self, usable: Collection[int]) -> list[int]:
        """Usable servers that may take new streams: healthy ones, else recovering ones."""
        for accepted in ((Health.UP, Health.UNKNOWN), (Health.RECOVERING,)):
            found = [i for i in sorted(usable) if self.servers[i].health in accepted]
            if found:
                return found
        return []

    def _pick(self, usable: Collection[int]) -> int | None:
        candidates = self._candidates(usable)
        if not candidates:
            return None
        current = self._current
        if self.strategy is Strategy.FAILOVER:
            return candidates[0]
        if self.strategy is Strategy.ROUND_ROBIN:
            return current if current in candidates else candidates[0]
        best = min(candidates, key=self._rtt_of)
        if current not in candidates:
            return best
        gain = self._rtt_of(current) - self._rtt_of(best)
        if gain > max(HYSTERESIS_FLOOR, HYSTERESIS * self._rtt_of(current)):
            return best
        return current

    def _rtt_of(self, index: int) -> float:
        rtt = self.servers[index].rtt
        return float("inf") if rtt is None else rtt

    @property
    def current(self) -> int | None:
        """The server new streams go to (for ``round-robin``: the last one chosen)."""
        return self._current

    def wanted(self, now: float) -> list[int]:
        """The servers to keep tunnels to (or to dial when their retry time has come).

        ``failover``: the first server that is up or not yet tried, and every earlier one
        (failing: probed with backoff; recovering: kept, to take over again). With none, all.
        The others: every server that has not refused.
        """
        alive = [i for i, s in enumerate(self.servers) if s.health is not Health.REFUSED]
        if self.strategy is not Strategy.FAILOVER:
            return alive
        for i in alive:
            if self.servers[i].health in (Health.UP, Health.UNKNOWN):
                return [j for j in alive if j <= i]
        return alive

    def may_dial(self, index: int, now: float, *, alone: bool = False) -> bool:
        """Whether a tunnel to this server may be dialed now: its backoff is over, or, while
        no server has a tunnel up (``alone``), ``RETRY_CAP_ALONE`` has passed."""
        server = self.servers[index]
        retry_at = server.retry_at
        if alone:
            retry_at = min(retry_at, server.failed_at + RETRY_CAP_ALONE)
        return server.health is not Health.REFUSED and now >= retry_at

    # --- choosing ---------------------------------------------------------------------------

    def choose(self, host: str | None, now: float, usable: Collection[int]) -> int | None:
        """The server for a new stream to ``host`` (None: a UDP association), among ``usable``
        (servers with a tunnel up); None when none of them may take it now."""
        candidates = self._candidates(usable)
        if not candidates:
            return None
        sticky = self.strategy is not Strategy.FAILOVER and host is not None and self.sticky_for
        if sticky:
            held = self._sticky.get(host)
            if held is not None and held[1] > now and held[0] in candidates:
                self._remember(host, held[0], now)
                return held[0]
        if self.strategy is Strategy.ROUND_ROBIN:
            self._turn = (self._turn + 1) % len(candidates)
            chosen = candidates[self._turn]
            self._current = chosen
        else:
            chosen = self._pick(usable)
        if sticky:
            self._remember(host, chosen, now)
        return chosen

    def _remember(self, host: str, index: int, now: float) -> None:
        self._sticky[host] = (index, now + self.sticky_for)
        self._sticky.move_to_end(host)
        while len(self._sticky) > STICKY_HOSTS:
            self._sticky.popitem(last=False)

"""Who gets a socket and a greenlet: connections before login, and logged-in tunnels, sans-I/O.

A connection that has not logged in costs a socket and a greenlet but proves nothing, so such
connections get their own small budget, per source address and in total, apart from the
logged-in tunnels (``PreLoginBudget``). A newcomer is always admitted: when its address holds
its share of connections that have waited ``grace`` seconds or more, one of them is dropped;
when the whole budget is full, one of anyone's. The one dropped is the one that got least far
(nothing well-formed sent, then a well-formed first message, then a known user's credentials);
among those, one of the busiest address, the oldest. A flood of idle, trickling or re-opening
connections thus costs the flooder its own connections and cannot keep out a real client,
whose first message comes with its connection and whose login takes milliseconds, while a burst
of fresh connections from one address (a browser, a NAT) is not cut by the per-address share.

Logged-in tunnels (``TunnelSlots``) are capped in all and per user. A 3.0 login proves nothing
until its first frame (the login hash travels in clear and ECB has no MAC): such an unproven
tunnel holds a slot, but never counts toward its user's cap, and any login that needs a slot
takes it, so a replayed 3.0 hash cannot lock the real user out.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


def source_of(host: str) -> str:
    """The budget's notion of one source: the address itself, or its /64 for IPv6."""
    if ":" not in host and "%" not in host:
        return host  # IPv4 text parses to itself (ipaddress takes only the standard form)
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host
    if address.version == 4:
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.ip_network(f"{address}/64", strict=False))


SILENT, GREETED, KNOWN = 0, 1, 2
"""How far a connection got before login: nothing well-formed yet; a well-formed first message
(the hello, the admin login request); credentials of a known user, being checked or proved."""


@dataclass
class _Waiting:
    since: float
    stage: int = SILENT


class PreLoginBudget:
    """At most ``total`` connections waiting for login; one source keeps ``per_address`` of them
    once they waited ``grace`` seconds.

    The connection that gives way is the one that got least far (``progress``), the oldest
    among those: a flood of idle, trickling or re-opening connections then only ever pushes
    out its own kind, while a real client, whose well-formed first message comes with its
    connection, moves ahead of them at once and keeps its place for the milliseconds its login
    takes, however fast the flood re-opens.
    """

    def __init__(self, total: int, per_address: int, grace: float = 1.0) -> None:
        if total < 1 or per_address < 1:
            raise ValueError("pre-login budgets must be at least 1")
        self.total = total
        self.per_address = per_address
        self.grace = grace
        self._waiting: dict[str, dict[Hashable, _Waiting]] = {}
        self._source: dict[Hashable, str] = {}

    def __len__(self) -> int:
        return len(self._source)

    def waiting_from(self, source: str) -> int:
        return len(self._waiting.get(source, ()))

    def admit(self, key: Hashable, source: str, now: float) -> Hashable | None:
        """Count ``key`` as waiting since ``now``; returns the connection to drop for it, if any."""
        if key in self._source:
            raise ValueError(f"{key!r} is already admitted")
        victim = None
        own = self._waiting.get(source)
        if own is not None and len(own) >= self.per_address:
            victim = _weakest(own, admitted_by=now - self.grace)
        if victim is None and len(self._source) >= self.total:
            victim = self._weakest_anywhere()
        if victim is not None:
            self.release(victim)
        self._waiting.setdefault(source, {})[key] = _Waiting(now)
        self._source[key] = source
        return victim

    def _weakest_anywhere(self) -> Hashable:
        """The budget is full: the least far of all, from the busiest source, the oldest."""
        best, rank = None, None
        for waiting in self._waiting.values():
            key = _weakest(waiting)
            entry = waiting[key]
            this = (entry.stage, -len(waiting), entry.since)
            if rank is None or this < rank:
                best, rank = key, this
        return best

    def progress(self, key: Hashable, stage: int) -> None:
        """``key`` got as far as ``stage`` (``GREETED``, ``KNOWN``); no-op when not waiting."""
        source = self._source.get(key)
        if source is not None:
            entry = self._waiting[source][key]
            entry.stage = max(entry.stage, stage)

    def release(self, key: Hashable) -> None:
        """``key`` logged in, failed or was dropped (no-op when it is not waiting)."""
        source = self._source.pop(key, None)
        if source is None:
            return
        waiting = self._waiting[source]
        del waiting[key]
        if not waiting:
            del self._waiting[source]


def _weakest(
    waiting: dict[Hashable, _Waiting], admitted_by: float | None = None
) -> Hashable | None:
    """The connection that got least far, the oldest first (``waiting`` is in admission
    order); only those admitted by ``admitted_by``, when given."""
    weakest, lowest = None, None
    for key, entry in waiting.items():
        if admitted_by is not None and entry.since > admitted_by:
            break  # the rest came later still
        if lowest is None or entry.stage < lowest:
            weakest, lowest = key, entry.stage
            if lowest == SILENT:
                break
    return weakest


@dataclass(frozen=True)
class Granted:
    """The tunnel has its slot once the ``evict`` tunnels (unproven ones) are closed."""

    evict: tuple[Hashable, ...] = ()


@dataclass(frozen=True)
class Refused:
    reason: str


@dataclass
class _Tunnel:
    user: str
    proven: bool


class TunnelSlots:
    """At most ``max_tunnels`` logged-in tunnels, at most ``max_per_user`` proven ones per user.

    Unproven tunnels (3.0, before their first well-formed frame) are at most ``max_per_user``
    per user too, the oldest giving way to a newer one of the same user.
    """

    def __init__(self, max_tunnels: int, max_per_user: int) -> None:
        if max_tunnels < 1 or max_per_user < 1:
            raise ValueError("tunnel limits must be at least 1")
        self.max_tunnels = max_tunnels
        self.max_per_user = max_per_user
        self._tunnels: OrderedDict[Hashable, _Tunnel] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tunnels)

    def proven_of(self, user: str) -> int:
        return sum(t.proven for t in self._tunnels.values() if t.user == user)

    def claim(self, key: Hashable, user: str, *, proven: bool) -> Granted | Refused:
        """A slot for a new tunnel of ``user``; on success it counts from now on."""
        if key in self._tunnels:
            raise ValueError(f"{key!r} already holds a slot")
        if proven and self.proven_of(user) >= self.max_per_user:
            return Refused(f"{user} already has {self.max_per_user} tunnels")
        evict: list[Hashable] = []
        if not proven:
            unproven = self._unproven(user)
            if len(unproven) >= self.max_per_user:
                evict.append(unproven[0])
        if len(self._tunnels) - len(evict) >= self.max_tunnels:
            candidates = [k for k in self._unproven(user) + self._unproven() if k not in evict]
            if not candidates:
                return Refused(f"{self.max_tunnels} tunnels are open")
            evict.append(candidates[0])
        for victim in evict:
            del self._tunnels[victim]
        self._tunnels[key] = _Tunnel(user, proven)
        return Granted(tuple(evict))

    def prove(self, key: Hashable) -> Granted | Refused:
        """An unproven tunnel sent a well-formed frame: it now counts toward its user's cap."""
        tunnel = self._tunnels[key]
        if tunnel.proven:
            return Granted()
        if self.proven_of(tunnel.user) >= self.max_per_user:
            del self._tunnels[key]
            return Refused(f"{tunnel.user} already has {self.max_per_user} tunnels")
        tunnel.proven = True
        return Granted()

    def release(self, key: Hashable) -> None:
        self._tunnels.pop(key, None)

    def holder(self, key: Hashable) -> str | None:
        """The user of the tunnel holding ``key``'s slot; None when it holds none."""
        tunnel = self._tunnels.get(key)
        return None if tunnel is None else tunnel.user

    def _unproven(self, user: str | None = None) -> list[Hashable]:
        """Unproven tunnels (of ``user``, or of anyone), oldest first."""
        return [
            key
            for key, tunnel in self._tunnels.items()
            if not tunnel.proven and (user is None or tunnel.user == user)
        ]

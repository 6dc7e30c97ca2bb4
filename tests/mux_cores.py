"""Cores of the tunnel's one multiplexer (jproxy.tunnel.mux) for the unit tests that play
them back to back with a fake clock, and what those tests read from their events."""

from __future__ import annotations

from jproxy.tunnel.mux import Channels, Do, Event
from schemas.jproxy import Dialect, Direction

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
MAX_MESSAGE = {Dialect.SECURE_3_1: 4063, Dialect.LEGACY_3_0: 4079}
"""The largest message that fits one frame, per dialect."""
SENT = (Do.SEND, Do.SEND_AFTER_DATA)


def core(sends: Direction, dialect: Dialect = Dialect.SECURE_3_1, **options) -> Channels:
    """A core of the end that sends ``sends``, at time 0."""
    return Channels(sends, dialect, max_message=MAX_MESSAGE[dialect], now=0.0, **options)


def messages(events: list[Event]) -> list[bytes]:
    """The messages among ``events``, for the other end to receive."""
    return [event.value for event in events if event.kind in SENT]


def kinds(events: list[Event]) -> list[Do]:
    return [event.kind for event in events]


def without_logs(events: list[Event]) -> list[Event]:
    return [event for event in events if event.kind not in (Do.WARNING, Do.INFO)]

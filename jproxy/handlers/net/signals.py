"""SIGTERM and SIGINT as an event of the gevent loop, for a graceful shutdown."""

from __future__ import annotations

import signal

import gevent
from gevent.event import AsyncResult


class Termination:
    """Catches SIGTERM and SIGINT from its creation on, so no signal meets the default action.

    Create it before announcing that the service is ready; ``wait`` blocks the calling
    greenlet until a signal arrives and returns the signal's name.
    """

    def __init__(self) -> None:
        self._received: AsyncResult = AsyncResult()
        self._handlers = [
            gevent.signal_handler(number, self._received.set, number.name)
            for number in (signal.SIGTERM, signal.SIGINT)
        ]

    def wait(self) -> str:
        try:
            return self._received.get()
        finally:
            for handler in self._handlers:
                handler.cancel()

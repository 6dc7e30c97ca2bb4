"""A listener's pre-login budget on greenlets: a connection that must give way is killed.

Each handler greenlet counts as waiting from the time it enters ``Doorway.waiting()`` until it
leaves that block or calls ``done_waiting()``; ``progressed()`` says how far its connection got
(the least far give way first). When
``jproxy.policy.admission.PreLoginBudget`` picks an
older waiting connection to make room, its greenlet gets ``Evicted`` (a ``GreenletExit``, so
the handler's ``finally`` blocks close its socket and nothing logs a traceback).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import gevent
from gevent import Greenlet

from jproxy.policy.admission import PreLoginBudget, source_of

log = logging.getLogger(__name__)


class Evicted(gevent.GreenletExit):
    """Dropped before login to make room for a newer connection."""


class Doorway:
    """The pre-login budget of one listener, over the greenlets of its connections."""

    def __init__(self, name: str, total: int, per_address: int) -> None:
        self.name = name
        self.budget = PreLoginBudget(total, per_address)
        self._doomed: set[Greenlet] = set()

    @contextmanager
    def waiting(self, host: str) -> Iterator[None]:
        """Count the current greenlet as a connection from ``host`` that has not logged in."""
        me = gevent.getcurrent()
        victim = self.budget.admit(me, source_of(host), time.monotonic())
        if victim is not None:
            self._doomed.add(victim)
            victim.kill(Evicted, block=False)
            log.debug("%s: dropped a waiting connection to admit one from %s", self.name, host)
        try:
            yield
        finally:
            self.budget.release(me)
            self._doomed.discard(me)

    def progressed(self, stage: int) -> None:
        """The current greenlet's connection got as far as ``stage``
        (``jproxy.policy.admission.GREETED`` or ``KNOWN``): it now gives way after those
        that got less far."""
        self.budget.progress(gevent.getcurrent(), stage)

    def done_waiting(self) -> None:
        """The current greenlet leaves the budget early; ``Evicted`` if it was just dropped."""
        me = gevent.getcurrent()
        if me in self._doomed:
            self._doomed.discard(me)
            raise Evicted()
        self.budget.release(me)

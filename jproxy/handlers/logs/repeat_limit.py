"""A bound on repeated log lines: a peer that makes us log per frame cannot flood the log.

Records are grouped by logger, level and message template (the text before ``%`` arguments are
filled in), so "unknown login hash %s" from a thousand peers is one group. Each group may log
``burst`` lines per ``window`` seconds; the rest are counted and, once the window is over, one
line says how many were suppressed. The groups remembered are bounded too. The access log's
lines are records, not repeats (one per connection, bounded by the connection limits), so
they are never grouped.

gevent's hub prints what escapes a greenlet or a loop callback straight to stderr;
``route_hub_errors`` sends it through logging instead, so the same bound holds for it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BURST = 20
WINDOW = 10.0
MAX_GROUPS = 1024
SWEEP_INTERVAL = 1.0
HUB_LOGGER = "gevent.hub"
"""The logger of what gevent's hub would have printed (an error no handler caught)."""
ACCESS_LOGGER = "gjproxy.access"
"""The logger of the access log's JSON lines when no ``--access-log`` file is given."""


@dataclass
class _Group:
    start: float
    count: int = 0
    suppressed: int = 0


class RepeatLimiter(logging.Filter):
    """A filter for ``handler``: at most ``burst`` records of one group per ``window`` s."""

    def __init__(
        self,
        handler: logging.Handler,
        *,
        burst: int = BURST,
        window: float = WINDOW,
        max_groups: int = MAX_GROUPS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.handler = handler
        self.burst = burst
        self.window = window
        self.max_groups = max_groups
        self._clock = clock
        self._groups: OrderedDict[tuple[str, int, str], _Group] = OrderedDict()
        self._next_sweep = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == ACCESS_LOGGER:
            return True
        now = self._clock()
        self._sweep(now)
        key = (record.name, record.levelno, str(record.msg))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(now)
            while len(self._groups) > self.max_groups:
                self._groups.popitem(last=False)
        self._groups.move_to_end(key)
        group.count += 1
        if group.count <= self.burst:
            return True
        group.suppressed += 1
        return False

    def _sweep(self, now: float) -> None:
        """End the groups whose window is over, saying what each suppressed."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        ended = [key for key, group in self._groups.items() if now - group.start >= self.window]
        reports = [(key, self._groups.pop(key).suppressed) for key in ended]
        for (name, level, template), suppressed in reports:
            if suppressed:
                self.handler.handle(self._summary(name, level, template, suppressed))

    def _summary(self, name: str, level: int, template: str, count: int) -> logging.LogRecord:
        return logging.LogRecord(
            name,
            level,
            __file__,
            0,
            "suppressed %d similar lines in %g s: %r",
            (count, self.window, template),
            None,
        )


def repeat_limited(handler: logging.Handler) -> logging.Handler:
    """``handler`` with a ``RepeatLimiter`` of the default bounds."""
    handler.addFilter(RepeatLimiter(handler))
    return handler


def route_hub_errors(hub: Any) -> None:
    """What ``hub`` would print (an exception that escaped a greenlet or a loop callback) goes
    to the log at ERROR instead, one template for all, so a flood of them is bounded like any
    other repeated line (gevent lets an application replace ``print_exception`` on the hub)."""
    logger = logging.getLogger(HUB_LOGGER)

    def print_exception(context: object, kind: type, value: BaseException, tb: Any) -> None:
        logger.error("uncaught in %s: %r", context, value, exc_info=(kind, value, tb))

    hub.print_exception = print_exception

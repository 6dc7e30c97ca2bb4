"""The repeated-line limiter, fed records with a fake clock."""

from __future__ import annotations

import logging
import types

from jproxy.handlers.logs.repeat_limit import (
    ACCESS_LOGGER,
    HUB_LOGGER,
    RepeatLimiter,
    route_hub_errors,
)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _setup(**options) -> tuple[logging.Logger, _Collect, _Clock]:
    handler, clock = _Collect(), _Clock()
    handler.addFilter(RepeatLimiter(handler, clock=clock, **options))
    logger = logging.getLogger(f"test.logs.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger, handler, clock


def test_a_flood_of_one_template_is_cut_and_counted() -> None:
    logger, handler, clock = _setup(burst=3, window=10.0)
    for n in range(1000):
        logger.warning("%s: unknown login hash %s...", f"127.0.0.1:{n}", "ab")
        clock.now += 0.001
    logger.info("a different line")
    assert len(handler.lines) == 4
    clock.now = 10.5
    logger.warning("%s: unknown login hash %s...", "127.0.0.1:1", "ab")
    assert handler.lines[4] == (
        "suppressed 997 similar lines in 10 s: '%s: unknown login hash %s...'"
    )
    assert handler.lines[5] == "127.0.0.1:1: unknown login hash ab..."


def test_each_template_has_its_own_burst() -> None:
    logger, handler, _ = _setup(burst=2)
    for _ in range(5):
        logger.warning("one %d", 1)
        logger.warning("two %d", 2)
    assert handler.lines == ["one 1", "two 2", "one 1", "two 2"]


def test_the_groups_remembered_are_bounded() -> None:
    logger, handler, _ = _setup(burst=1, max_groups=10)
    limiter = handler.filters[0]
    for n in range(1000):
        logger.warning(f"template {n}")  # a template per line: the worst case for the bound
    assert len(limiter._groups) == 10
    assert len(handler.lines) == 1000


def test_access_records_are_never_grouped() -> None:
    """Every connection's JSON line reaches the log, though all share the template "%s"."""
    handler, clock = _Collect(), _Clock()
    handler.addFilter(RepeatLimiter(handler, clock=clock, burst=3))
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(handler)
    try:
        for n in range(100):
            logger.warning("%s", f'{{"stream": {n}}}')
    finally:
        logger.removeHandler(handler)
    assert handler.lines == [f'{{"stream": {n}}}' for n in range(100)]


def test_what_the_hub_would_print_goes_through_the_limiter() -> None:
    """gevent's hub calls ``print_exception``; routed, a flood of them is bounded."""
    handler, clock = _Collect(), _Clock()
    handler.addFilter(RepeatLimiter(handler, clock=clock, burst=3))
    hub_logger = logging.getLogger(HUB_LOGGER)
    hub_logger.addHandler(handler)
    hub = types.SimpleNamespace()
    try:
        route_hub_errors(hub)
        for n in range(100):
            error = AttributeError(f"object {n} has no attribute 'throw'")
            hub.print_exception(f"<callback {n}>", AttributeError, error, None)
    finally:
        hub_logger.removeHandler(handler)
    assert len(handler.lines) == 3
    assert (
        handler.lines[0]
        == "uncaught in <callback 0>: AttributeError(\"object 0 has no attribute 'throw'\")"
    )

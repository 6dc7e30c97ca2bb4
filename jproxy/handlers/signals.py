"""Waiting for SIGTERM or SIGINT inside the gevent loop, for a graceful shutdown."""

from __future__ import annotations

import signal

import gevent
from gevent.event import AsyncResult


def wait_for_termination() -> str:
    """Block the calling greenlet until SIGTERM or SIGINT; returns the signal's name."""
    received: AsyncResult = AsyncResult()
    handlers = [
        gevent.signal_handler(number, received.set, number.name)
        for number in (signal.SIGTERM, signal.SIGINT)
    ]
    try:
        return received.get()
    finally:
        for handler in handlers:
            handler.cancel()

"""glibc's heap, tuned for a relay: keep what one received chunk needs instead of giving it back.

A chunk's buffers (its frames opened, a stream's data joined: up to a few hundred KiB) are
freed at the top of the heap. glibc gives that top back to the kernel once 128 KiB are free
there, and takes it again for the next chunk: about five ``brk`` calls and fresh zeroed pages
per chunk. Once a burst of connections had moved glibc's thresholds, a 3.0 download ran at
half speed for it (``bench/tunnel.py``: 350 against 700 MB/s). Keeping up to 4 MiB at the top
and serving blocks under 1 MiB from the heap ends the churn for a bounded amount of memory.

That reserve is only the top of the heap. After a burst (64 tunnels x 16 streams, each with
its buffers), the freed blocks lie all over the heap, below blocks still in use, where no
threshold returns them: the server stayed at 72 MB after it, against 44 MB idle.
Most of it was not even free: the burst's tunnels and streams wait in reference cycles for
Python's oldest garbage generation. ``HeapTrimmer``, once a burst has mostly ended
(``worth_trimming``), runs a full ``gc.collect()`` and then ``malloc_trim(0)``, which gives
every free page of the heap back (``madvise``): after the same burst the server is at 51 MB,
and the next bursts peak where the first did instead of higher (93, 109 MB without it). It
costs some milliseconds once per burst, never under a steady load.
"""

from __future__ import annotations

import ctypes
import gc
import logging
from collections.abc import Callable

import gevent

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameters (malloc.h)."""
TRIM_THRESHOLD = 4 << 20
MMAP_THRESHOLD = 1 << 20


def keep_heap_reserve() -> bool:
    """Tune this process's malloc; ``False`` where it is not glibc's (nothing changes then)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    )


TRIM_INTERVAL = 0.5
"""Seconds between looks at the number of open connections (a look costs nothing)."""
BURST = 64
"""Open connections at the peak that make a burst worth trimming after."""


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = (ctypes.c_size_t,)
    return trim


def worth_trimming(peak: int, open_now: int) -> bool:
    """A burst happened (``BURST`` connections or more open at once since the last trim) and
    has mostly ended (at most half of its peak is still open). A steady load, however many
    short connections come and go, never trims."""
    return peak >= BURST and open_now <= peak // 2


class HeapTrimmer:
    """Every ``interval`` s a look at ``open_now()``, the open connections; ``gc.collect()``
    and ``malloc_trim(0)`` when ``worth_trimming`` (then the peak starts again from now)."""

    def __init__(self, open_now: Callable[[], int], interval: float = TRIM_INTERVAL) -> None:
        self.open_now = open_now
        self.interval = interval
        self.trims = 0
        self._trim = _malloc_trim()
        self._peak = 0
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        if self._trim is not None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def look(self) -> bool:
        """One look at the load; whether it trimmed."""
        open_now = self.open_now()
        self._peak = max(self._peak, open_now)
        if self._trim is None or not worth_trimming(self._peak, open_now):
            return False
        gc.collect()  # the burst's tunnels and streams that wait in reference cycles go first
        self._trim(0)
        self.trims += 1
        log.debug("heap trimmed after a burst (peak %d open, %d now)", self._peak, open_now)
        self._peak = open_now
        return True

    def _run(self) -> None:
        while True:
            gevent.sleep(self.interval)
            self.look()

"""glibc's heap, tuned for a relay: keep what one received chunk needs instead of giving it back.

A chunk's buffers (its frames opened, a stream's data joined: up to a few hundred KiB) are
freed at the top of the heap. glibc gives that top back to the kernel once 128 KiB are free
there, and takes it again for the next chunk: about five ``brk`` calls and fresh zeroed pages
per chunk. Once a burst of connections had moved glibc's thresholds, a 3.0 download ran at
half speed for it (``bench/tunnel.py``: 350 against 700 MB/s). Keeping up to 4 MiB at the top
and serving blocks under 1 MiB from the heap ends the churn for a bounded amount of memory.
"""

from __future__ import annotations

import ctypes

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

"""The relay's heap tuning: a chunk-sized block freed stays in the process for the next chunk,
instead of going back to the kernel and coming again (``brk``/``mmap`` and zeroed pages)."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import sys
from jproxy.handlers.net.heap import keep_heap_reserve

def data_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmData:"):
            return int(line.split()[1])

if sys.argv[1] == "tuned":
    assert keep_heap_reserve()
before = data_kib()
block = bytes(600 * 1024)  # one chunk's joined data
del block
print(data_kib() - before)
"""


def kept_kib(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    return int(run.stdout)


def test_a_freed_chunk_stays_for_the_next_one() -> None:
    assert kept_kib("default") < 100  # glibc gave the block back (it was mapped on its own)
    assert kept_kib("tuned") >= 600  # kept at the top of the heap, for the next chunk

"""When the server gives a burst's memory back (``HeapTrimmer``'s rule)."""

from __future__ import annotations

from jproxy.handlers.net.heap import BURST, worth_trimming


def test_a_trim_waits_for_a_burst_to_end() -> None:
    assert not worth_trimming(peak=BURST - 1, open_now=0)  # no burst: nothing to gain
    assert not worth_trimming(peak=1024, open_now=900)  # the load holds (or churns steadily)
    assert worth_trimming(peak=1024, open_now=12)
    assert worth_trimming(peak=BURST, open_now=BURST // 2)

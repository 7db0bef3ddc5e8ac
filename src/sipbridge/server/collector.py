"""The cyclic garbage collector's settings for a serving process (`sipbridge serve`, and the
bare SIP user agent `bench/sip.py` measures).

By default CPython collects its youngest generation after every 700 net allocations of
container objects. A SIP call allocates that many in about one call, and keeps some for its
transactions' 32 s linger (RFC 3261 s17), so at a few thousand calls/s the collector ran
thousands of times a second over the calls in flight and made 40-45% of the CPU of a bare UAS
(issue 18: 150 of 340 us per call, measured in-process). Collecting every 20,000 net
allocations lets most of a call's objects die by reference counting first (they are never
traversed), and cuts that to about a fifth; a young collection then walks at most some tens
of thousands of objects (around a millisecond). Everything loaded before serving is frozen
out of the collector's generations for good.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000


def tune_collector() -> None:
    """Freeze what is loaded now, and collect the young generation less often."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)

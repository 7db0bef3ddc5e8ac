"""The collector settings of a serving process (src/sipbridge/server/collector.py)."""

from __future__ import annotations

import gc

from sipbridge.server.collector import YOUNG_THRESHOLD, tune_collector


def test_startup_objects_frozen_and_the_young_generation_collected_less_often() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    kept = [object() for _ in range(10)]  # something alive to freeze
    try:
        tune_collector()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > frozen
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
    assert kept

"""A service process tunes the cyclic garbage collector once it is built (shared/cli.py)."""

import gc

from shared.cli import GC_YOUNG_THRESHOLD, tune_gc


def test_tune_gc_freezes_the_start_up_heap_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0  # what start-up built is no longer scanned
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.isenabled()  # cycles are still collected, only less often
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

"""A service's process collects its young garbage less often and never walks what start-up made."""

from __future__ import annotations

import gc

from shared.service import GC_YOUNG_THRESHOLD, tune_gc


def test_a_service_collects_young_garbage_less_often_and_freezes_its_start_up_objects():
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD > before[0]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

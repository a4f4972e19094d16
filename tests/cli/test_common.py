import gc
import sys
from collections.abc import Iterator

import pytest

from meterline.cli.common import tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    interval = sys.getswitchinterval()
    yield
    gc.set_threshold(*threshold)
    sys.setswitchinterval(interval)
    gc.unfreeze()


def test_tune_gc_freezes_the_startup_heap_collects_the_young_generation_less_often_and_shortens_the_gil_interval(
    restore_gc: None,
) -> None:
    gc.unfreeze()
    tune_gc()
    assert gc.get_freeze_count() > 0  # full collections no longer walk what startup loaded
    assert gc.get_threshold()[0] == 10_000
    assert sys.getswitchinterval() == pytest.approx(0.001)  # a writer waits at most 1 ms for the GIL

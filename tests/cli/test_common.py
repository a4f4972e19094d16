import gc
from collections.abc import Iterator

import pytest

from meterline.cli.common import tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


def test_tune_gc_freezes_the_startup_heap_and_collects_the_young_generation_less_often(
    restore_gc: None,
) -> None:
    gc.unfreeze()
    tune_gc()
    assert gc.get_freeze_count() > 0  # full collections no longer walk what startup loaded
    assert gc.get_threshold()[0] == 10_000

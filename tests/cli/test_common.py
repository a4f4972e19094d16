import gc
import sys
from collections.abc import Iterator

import pytest

from meterline.cli.common import SWITCH_INTERVAL_S, tune_process


@pytest.fixture
def restore_interpreter() -> Iterator[None]:
    interval, threshold = sys.getswitchinterval(), gc.get_threshold()
    yield
    sys.setswitchinterval(interval)
    gc.set_threshold(*threshold)
    gc.unfreeze()


def test_tune_process_shortens_the_gil_switch_interval_and_freezes_the_startup_heap(
    restore_interpreter: None,
) -> None:
    sys.setswitchinterval(0.005)
    tune_process()
    # The writer threads take the GIL back after every statement: 0.5 ms, not CPython's 5 ms.
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
    assert SWITCH_INTERVAL_S < 0.005
    assert gc.get_threshold()[0] == 10_000
    assert gc.get_freeze_count() > 0

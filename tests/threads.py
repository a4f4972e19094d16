"""Running a test's work on several threads at once."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def run_concurrently(work: Callable[[int], object], threads: int) -> None:
    """Call `work(0)` … `work(threads - 1)`, each on its own thread, all at once; wait for all,
    then raise the first exception any of them raised (a failing thread fails the test)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(work, n) for n in range(threads)]
    for future in futures:
        future.result()

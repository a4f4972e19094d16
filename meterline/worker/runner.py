"""The worker: runs the scheduled jobs in a background loop (or once, for tests and the CLI).

It posts through the batcher it is given (the server's own, when it runs
in-process with `meterline serve --dev`; its own under `meterline worker`), and
never starts or stops that batcher.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from meterline.clock import Clock
from meterline.config import Settings
from meterline.db.engine import Database
from meterline.ledger.batcher import LedgerBatcher
from meterline.ledger.signing import Signer
from meterline.worker.scheduler import Job, Scheduler
from meterline.worker.tasks import JobContext, default_jobs, make_dispatcher, network_passes

log = logging.getLogger(__name__)

_MIN_TICK_S = 0.05
_MAX_TICK_S = 5.0


class BackgroundLoop:
    """`work()` again and again on a thread of its own; a pass that moved nothing (or failed)
    waits `interval_s` (doubling while it keeps failing, up to a minute)."""

    def __init__(self, name: str, work: Callable[[], int], interval_s: float) -> None:
        self.name, self.work, self.interval_s = name, work, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"meterline-{name}", daemon=True)

    def start(self) -> BackgroundLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s did not stop within %.0fs", self.name, timeout)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                moved = self.work()
                failures = 0
            except Exception:  # the database or NATS restarting, say: log, back off, go on
                failures += 1
                moved = 0
                log.exception("%s pass failed", self.name)
            if not moved:
                self._stop.wait(min(self.interval_s * 2 ** min(failures, 6), 60.0))


class Worker:
    def __init__(
        self,
        *,
        db: Database,
        clock: Clock,
        batcher: LedgerBatcher,
        settings: Settings,
        signer: Signer,
        jobs: list[Job] | None = None,
    ) -> None:
        self.context = JobContext(db=db, clock=clock, batcher=batcher, settings=settings, signer=signer,
                                  events=make_dispatcher(db, clock, settings))
        self.scheduler = Scheduler(db, clock, jobs if jobs is not None else default_jobs(self.context))
        intervals = [j.interval_s for j in self.scheduler.jobs] or [1.0]
        # Wake often enough to catch the most frequent job; due-ness is judged by the clock.
        self.tick_s = min(max(min(intervals), _MIN_TICK_S), _MAX_TICK_S)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loops: list[BackgroundLoop] = []

    def run_once(self, *, force: bool = False) -> dict[str, int]:
        """Run every due job once (every job with `force`); {job name: items handled}.

        A job that failed is absent from the result; its error is logged and stored in
        `scheduled_jobs.last_error`.
        """
        return self.scheduler.run_due(force=force)

    def start(self) -> Worker:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._loops = [BackgroundLoop(name, work, self.context.settings.events_interval_s).start()
                       for name, work in network_passes(self.context).items()]
        self._thread = threading.Thread(target=self._loop, name="meterline-worker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the job in progress finishes."""
        self._stop.set()
        for loop in self._loops:  # (each stops after its pass: at most a webhook round's deadline)
            loop.stop(self.context.events.lease_s)
        self._loops = []
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("worker did not stop within %.0fs", timeout)
                return  # its job still holds its lock; the process's exit releases it
            self._thread = None
        self.scheduler.close()
        self.context.events.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        log.info("worker started: %s", ", ".join(j.name for j in self.scheduler.jobs))
        failures = 0
        while not self._stop.is_set():
            try:
                self.run_once()
                failures = 0
            except Exception:  # never let one bad pass (e.g. the database restarting) kill the loop
                failures += 1
                log.exception("worker pass failed")
            # Back off while the database keeps failing; real time here, not domain time.
            self._stop.wait(min(self.tick_s * (2 ** min(failures, 6)), 60.0))
        log.info("worker stopped")

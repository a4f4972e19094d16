"""The validation audit log's write path: an in-memory queue drained in batches.

A validation must not wait for an INSERT, so the hot path only appends a record
to a bounded deque (O(1), no lock beyond the GIL-atomic append). A daemon thread
drains it every `interval_s` — or as soon as a batch is full — with one
multi-row INSERT per batch. When the queue is full the record is dropped and
counted (`meterline_license_audit_dropped_total`): a burst beyond what the
database can absorb degrades the log, never the validation latency. Entries that
fail to write are counted as dropped too, after a logged error.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque

from prometheus_client import Counter

from meterline.db.engine import Database
from meterline.licensing.service import AuditRecord, licensing_service

log = logging.getLogger(__name__)

AUDIT_WRITTEN = Counter("meterline_license_audit_written_total", "License audit entries written")
AUDIT_DROPPED = Counter("meterline_license_audit_dropped_total",
                        "License audit entries dropped (queue full or write failed)")

_BUFFERS: weakref.WeakSet[AuditBuffer] = weakref.WeakSet()


class AuditBuffer:
    def __init__(self, db: Database, *, max_queue: int = 100_000, batch: int = 1000,
                 interval_s: float = 0.1) -> None:
        self.db = db
        self.max_queue = max_queue
        self.batch = batch
        self.interval_s = interval_s
        self._queue: deque[AuditRecord] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        _BUFFERS.add(self)

    def append(self, record: AuditRecord) -> None:
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            AUDIT_DROPPED.inc()
            return
        self._queue.append(record)
        if self._thread is None:
            self.start()
        elif len(self._queue) >= self.batch and not self._wake.is_set():
            self._wake.set()  # (set takes a lock: not again while the thread has yet to wake)

    def pending(self) -> int:
        return len(self._queue)

    def flush(self) -> int:
        """Write everything queued now (the thread, the worker job and shutdown all call this)."""
        written = 0
        with self._flush_lock:
            while self._queue:
                records: list[AuditRecord] = []
                while self._queue and len(records) < self.batch:
                    records.append(self._queue.popleft())
                try:
                    with self.db.session() as session:
                        licensing_service.write_audit(session, records)
                except Exception:
                    log.exception("could not write %d license audit entries", len(records))
                    self.dropped += len(records)
                    AUDIT_DROPPED.inc(len(records))
                    break
                written += len(records)
                AUDIT_WRITTEN.inc(len(records))
        return written

    def start(self) -> None:
        with self._flush_lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="meterline-license-audit", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self.flush()


def flush_all() -> int:
    """Flush every audit buffer of this process (the worker's `licensing.flush_audit` job)."""
    return sum(buf.flush() for buf in list(_BUFFERS))

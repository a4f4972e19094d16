"""What a running server holds: settings, database, clock, ledger and sample batchers, signing key.

Built once by `create_app` and stored on ``app.state.runtime``; request
dependencies read it from there, so tests can build an app around a test
database and a frozen clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meterline.clock import Clock, SystemClock
from meterline.config import Settings
from meterline.db.engine import Database
from meterline.ledger.batcher import LedgerBatcher
from meterline.ledger.signing import Signer
from meterline.licensing.runtime import LicensingRuntime, shared_runtime
from meterline.rentals.sampler import SampleBatcher


@dataclass
class Runtime:
    settings: Settings
    db: Database
    clock: Clock = field(default_factory=SystemClock)
    batcher: LedgerBatcher | None = None
    signer: Signer | None = None
    samples: SampleBatcher | None = None
    licensing: LicensingRuntime | None = None

    def __post_init__(self) -> None:
        if self.batcher is None:
            self.batcher = LedgerBatcher(
                self.db,
                self.clock,
                window_ms=self.settings.batch_window_ms,
                max_transfers=self.settings.batch_max_transfers,
                overlap=self.settings.ledger_overlap,
            )
        if self.samples is None:
            self.samples = SampleBatcher(self.db, self.clock, window_ms=self.settings.batch_window_ms,
                                         pace_ms=self.settings.sample_pace_ms)
        if self.licensing is None:
            self.licensing = shared_runtime(self.db, self.settings)

    @property
    def ledger(self) -> LedgerBatcher:
        assert self.batcher is not None
        return self.batcher

    @property
    def sampler(self) -> SampleBatcher:
        assert self.samples is not None
        return self.samples

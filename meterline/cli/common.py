"""Shared CLI plumbing: settings from the environment plus `--database-url`."""

from __future__ import annotations

import gc
import sys

from meterline.config import Settings, set_settings


def load_settings(database_url: str | None = None, **overrides: object) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if database_url:
        values["database_url"] = database_url
    settings = Settings(**values)  # type: ignore[arg-type]
    set_settings(settings)
    return settings


# How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms).
SWITCH_INTERVAL_S = 0.0005


def tune_process() -> None:
    """Tune the interpreter for a long-running process with a hot path (server, worker).

    Called once startup is done.

    The garbage collector: everything loaded by then — modules, the app, its routes and
    schemas — is moved out of the collector's reach with `gc.freeze()`, so full
    collections stop walking it; and the youngest generation is collected every 10,000
    net allocations instead of 700. A request or a batch allocates many short-lived
    objects that reference counting frees; with the defaults, collections of a large heap
    landed in the middle of commits and showed up as tail latency.

    The GIL switch interval: the group-commit writer threads (ledger, samples, usage)
    release the GIL for every database call and fsync, and must take it back before the
    next statement — while the event loop, busy with requests, holds it. With CPython's
    5 ms interval each of those re-acquisitions could wait 5 ms, so a commit of a few
    statements took 10+ ms and every request waiting on it paid that (measured: 32
    clients posting single transfers went from ~1,200 to ~1,800–2,300 req/s in-process
    at 0.5–1 ms). Shorter than 0.5 ms measured worse: switches start to cost more than
    they save.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    sys.setswitchinterval(SWITCH_INTERVAL_S)

"""A progress bar on stderr for the long jobs: units done, sessions, rate and ETA.

Drawn with tqdm (extra ``cli``) only when stderr is a terminal and ``--no-progress``
was not given, so logs and pipes stay clean. Example::

    bar = ProgressBar("backfill", enabled=sys.stderr.isatty())
    job = BackfillJob(source, target, progress=bar)
    try:
        await job.run(units)
    finally:
        bar.close()
"""

from __future__ import annotations

import sys
import time
from typing import Any

from sessionstore.jobs.units import WorkUnit

__all__ = ["ProgressBar"]


class ProgressBar:
    """Implements :class:`~sessionstore.jobs.engine.JobProgress` with a tqdm bar.

    The bar counts units (so its ETA covers the whole plan, resumed units included);
    its postfix shows sessions processed and their rate in this run.
    """

    def __init__(self, description: str, *, enabled: bool) -> None:
        self._description = description
        self._enabled = enabled
        self._bar: Any = None
        self._records = 0
        self._failed = 0
        self._started = time.monotonic()
        self._last_postfix = 0.0

    def started(self, *, total: int, skipped: int) -> None:
        """Create the bar, starting at the units already done."""
        self._started = time.monotonic()
        if not self._enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # the cli extra is not installed: no bar
            return
        self._bar = tqdm(
            total=total,
            initial=skipped,
            unit="unit",
            desc=self._description,
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.05,
        )

    def advanced(self, records: int) -> None:
        """Count sessions; refresh the postfix at most twice a second."""
        self._records += records
        now = time.monotonic()
        if self._bar is not None and now - self._last_postfix >= 0.5:
            self._last_postfix = now
            self._bar.set_postfix_str(self._postfix(now), refresh=False)

    def unit_finished(self, unit: WorkUnit, ok: bool) -> None:
        """One more unit done (or failed)."""
        if not ok:
            self._failed += 1
        if self._bar is not None:
            self._bar.update(1)

    def _postfix(self, now: float) -> str:
        rate = self._records / max(now - self._started, 1e-9)
        failed = f", {self._failed} failed" if self._failed else ""
        return f"{self._records:,} sessions, {rate:,.0f}/s{failed}"

    def close(self) -> None:
        """Draw the final state and release the terminal line."""
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(time.monotonic()), refresh=True)
            self._bar.close()
            self._bar = None

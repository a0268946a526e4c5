"""Progress and logging are hooks, not baked into executors (Dask callbacks, Kedro hooks)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

logger = logging.getLogger(__name__)


class RunHooks:
    """Override what you need; every method is a no-op by default."""

    def on_phase(self, phase: str, total: int) -> None: ...

    def on_item(self, key: str, status: str) -> None: ...

    def on_phase_end(self, phase: str) -> None: ...

    def on_run_end(self, report: dict[str, Any]) -> None: ...


class ProgressHooks(RunHooks):
    """A tqdm bar (items/s, ETA) on a terminal; a log line every ``every_s`` otherwise."""

    def __init__(self, stream: Any = None, every_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self._bar: Any = None
        self._phase = ""
        self._done = self._total = 0
        self._last = 0.0

    def on_phase(self, phase: str, total: int) -> None:
        self._phase, self._done, self._total, self._last = phase, 0, total, time.monotonic()
        if self.tty and total:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=phase,
                unit="item",
                file=self.stream,
                dynamic_ncols=True,
                leave=False,
            )

    def on_item(self, key: str, status: str) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)
        elif time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            logger.info("%s: %d/%d items", self._phase, self._done, self._total)

    def on_phase_end(self, phase: str) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

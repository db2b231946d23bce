"""Progress with rate and ETA for long work.

A tqdm bar when stderr is a terminal; otherwise (spark-submit, Airflow logs) a
log line at most every ``every_seconds``, so logs stay readable.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("courier.progress")


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:d}:{secs:02d}"


class Progress:
    """Count work done towards ``total`` and report rate and ETA."""

    def __init__(
        self,
        what: str,
        total: int | None,
        unit: str = "it",
        every_seconds: float = 10.0,
        interactive: bool | None = None,
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.done = 0
        self.every_seconds = every_seconds
        self.started = time.perf_counter()
        self._last_report = self.started
        interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar = None
        if interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=unit, dynamic_ncols=True)

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.total is None or self.rate == 0:
            return None
        return (self.total - self.done) / self.rate

    def line(self, extra: str = "") -> str:
        total = f"/{self.total:,}" if self.total is not None else ""
        eta = self.eta_seconds
        eta_text = f", ETA {format_duration(eta)}" if eta is not None else ""
        extra_text = f", {extra}" if extra else ""
        return (
            f"{self.what}: {self.done:,}{total} {self.unit} "
            f"({self.rate:,.1f} {self.unit}/s{eta_text}{extra_text})"
        )

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if extra:
                self._bar.set_postfix_str(extra)
            return
        now = time.perf_counter()
        finished = self.total is not None and self.done >= self.total
        if finished or now - self._last_report >= self.every_seconds:
            self._last_report = now
            log.info(self.line(extra))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

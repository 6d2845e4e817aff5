"""A small progress bar (no dependency): redrawn in place on a terminal, one final line otherwise."""
from __future__ import annotations

import sys
import time
from typing import IO, Callable


class ProgressBar:
    """Progress over ``total`` items, with a description and a free-form status (loss, accuracy, ...)."""

    def __init__(self, total: int, desc: str = "", file: IO[str] | None = None, enabled: bool = True,
                 width: int = 24, min_interval: float = 0.1) -> None:
        self.total, self.desc, self.width, self.min_interval = max(total, 1), desc, width, min_interval
        self.file = sys.stderr if file is None else file
        self.enabled = enabled
        self.interactive = enabled and getattr(self.file, "isatty", lambda: False)()
        self.count = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0

    def update(self, n: int, status: str | Callable[[], str] = "") -> None:
        """Advance by ``n`` items and show ``status`` (or what it returns, if a function: it is called
        only when the bar is drawn); redraws at most every ``min_interval`` seconds."""
        self.count += n
        if not self.interactive:
            return
        now = time.perf_counter()
        if now - self._last_draw >= self.min_interval or self.count >= self.total:
            self._last_draw = now
            self.file.write("\r" + self._line(status() if callable(status) else status, now))
            self.file.flush()

    def close(self, status: str = "") -> None:
        """Finish the bar with a final ``status``."""
        if not self.enabled:
            return
        line = self._line(status, time.perf_counter())
        self.file.write(("\r" + line if self.interactive else line) + "\n")
        self.file.flush()

    def _line(self, status: str, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        frac = min(self.count / self.total, 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        rate = self.count / elapsed
        return f"{self.desc} [{bar}] {self.count}/{self.total} {elapsed:5.1f}s {rate:,.0f} img/s {status}".rstrip()

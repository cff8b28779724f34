"""One progress display for a dataset run, shown by rank 0 for all processes: a tqdm bar (images, images/s,
ETA) on a terminal, else a plain line at most every ``interval`` seconds (logs stay readable)."""
from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """``update(done)`` with the number of images done so far by all processes (of ``total``);
    ``initial`` were done before this run started (a resumed run) and do not count for the speed."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "",
                 interval: float = 30.0, stream=None):
        self.total, self.initial, self.enabled, self.desc = total, initial, enabled, desc
        self.stream = stream or sys.stderr
        self.interval, self.start, self.last_line = interval, time.monotonic(), 0.0
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="img", desc=desc or None, file=self.stream,
                            leave=False, dynamic_ncols=True)
        self.done = initial

    def update(self, done: int) -> None:
        if not self.enabled or done == self.done:
            return
        if self.bar is not None:
            self.bar.update(done - self.done)
        self.done = done
        now = time.monotonic()
        if self.bar is None and (now - self.last_line >= self.interval or done >= self.total):
            self.last_line = now
            self.write(self.line(now))

    def line(self, now: float) -> str:
        """``desc: done/total images, R img/s, ETA T`` (speed over this run's images only)."""
        elapsed = max(now - self.start, 1e-9)
        rate = (self.done - self.initial) / elapsed
        eta = f", ETA {_duration((self.total - self.done) / rate)}" if 0 < rate and self.done < self.total else ""
        return f"{self.desc + ': ' if self.desc else ''}{self.done}/{self.total} images, {rate:.2f} img/s{eta}"

    def write(self, line: str) -> None:
        """A log line that does not break the bar."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

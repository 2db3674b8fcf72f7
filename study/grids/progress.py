"""One progress line for a whole grid launch: runs done / running / failed, and the ETA.

On a terminal it is a tqdm bar (on stderr) that the launcher's own lines print above; in a log
file (no terminal) it is a line after each run ends, e.g.
``[6/15] 5 done, 1 diverged; 2 running; elapsed 4.1 min, ETA 6.2 min``.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable

from tqdm import tqdm


class GridProgress:
    def __init__(self, total: int, name: str, log: Callable[[str], None], tty: bool | None = None) -> None:
        self.total, self.log = total, log
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.counts: Counter[str] = Counter()
        self.running = 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, desc=name, unit="run", disable=not self.tty, dynamic_ncols=True,
                        file=sys.stderr, leave=True)

    @property
    def ended(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        outcomes = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items())) or "none ended"
        return f"{outcomes}; {self.running} running"

    def eta_s(self) -> float | None:
        """Remaining time at the mean pace so far (runs of one grid are alike in length)."""
        if not self.ended:
            return None
        return (time.perf_counter() - self.t0) / self.ended * (self.total - self.ended)

    def say(self, message: str) -> None:
        """A launcher line, printed above the bar when there is one."""
        if self.tty:
            with tqdm.external_write_mode(file=sys.stderr):
                self.log(message)
        else:
            self.log(message)

    def start(self) -> None:
        self.running += 1
        self.bar.set_postfix_str(self.summary())

    def end(self, outcome: str) -> None:
        self.running -= 1
        self.counts[outcome] += 1
        self.bar.set_postfix_str(self.summary(), refresh=False)
        self.bar.update(1)
        if not self.tty:
            eta = self.eta_s()
            self.log(f"  [{self.ended}/{self.total}] {self.summary()}; elapsed "
                     f"{(time.perf_counter() - self.t0) / 60:.1f} min"
                     + (f", ETA {eta / 60:.1f} min" if eta is not None and self.ended < self.total else ""))

    def stop(self) -> None:
        self.running = 0
        self.bar.close()

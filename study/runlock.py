"""One writer per run directory: an exclusive ``flock`` on ``<run>/.lock`` held while training.

The kernel drops the lock when its process dies, however it dies (SIGKILL included), so a free
lock under a ``running`` record means the trainer is gone. Two launchers racing for one run:
the first trainer takes the lock, the second exits with :data:`study.status.BUSY_EXIT` having
written nothing. ``flock`` works on local disks and on NFSv4 (emulated with POSIX locks).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

NAME = ".lock"


class Busy(RuntimeError):
    """Another live process trains this run."""


class RunLock:
    """``with RunLock(d):`` holds ``d/.lock`` exclusively, or raises :class:`Busy`."""

    def __init__(self, directory: Path, wait_s: float = 5.0) -> None:
        self.path = Path(directory) / NAME
        self.wait_s = wait_s  # rides out another process's brief shared probe (``held``)
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise Busy(f"{self.path.parent}: another process is training this run") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def held(directory: Path) -> bool:
    """Whether a live process holds ``directory``'s run lock (a non-blocking shared probe)."""
    try:
        fd = os.open(Path(directory) / NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False

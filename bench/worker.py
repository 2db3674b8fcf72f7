"""A JSON-lines worker in another Python environment (the PyTorch side), with time limits.

The worker blocks on stdin between commands, so while the JAX side times its steps the torch
side is idle, and the orchestrator alternates rounds between them. A command that does not
answer within its limit (a torch.compile that runs away on CPU) kills the worker and raises
``TimeoutError``; the orchestrator records that configuration as not measured.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TORCH_PYTHON = ROOT / ".venv-torch" / "bin" / "python"


class WorkerError(RuntimeError):
    """The worker answered with an error or died."""


class Worker:
    def __init__(self, python: str | Path = TORCH_PYTHON, script: str | Path | None = None,
                 env: dict[str, str] | None = None):
        script = script or Path(__file__).with_name("torch_side.py")
        self.proc = subprocess.Popen(
            [str(python), str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, bufsize=1, env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: a kill also ends inductor's compilers
        )

    def ask(self, timeout: float = 600.0, **cmd: Any) -> dict[str, Any]:
        """Sends one command and waits at most ``timeout`` seconds for its answer."""
        if self.proc.poll() is not None:
            raise WorkerError(f"worker exited with status {self.proc.returncode}")
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.close(kill=True)
                    raise TimeoutError(f"{cmd.get('cmd')}: no answer in {timeout:.0f} s")
                line = self.proc.stdout.readline()
                if not line:
                    raise WorkerError(f"worker exited with status {self.proc.wait()}")
                reply = json.loads(line)
                if "error" in reply:
                    raise WorkerError(reply["error"])
                return reply
        finally:
            sel.close()

    def close(self, kill: bool = False) -> None:
        if kill:
            try:  # the worker and whatever it started (torch.compile's compile subprocesses)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                try:
                    self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                    self.proc.stdin.flush()
                    self.proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""The trainer's bookkeeping, kept out of its loop: periodic actions, step timing, divergence,
and the run record's side of a run (metrics, evaluations, checkpoints, the final record).

:func:`study.engine.train.train` reads top to bottom because everything here is one call away.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import signal
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

from study.engine.checkpoint import Checkpointer
from study.environment import peak_rss_gb
from study.record import RunRecord
from study.status import Status, complete

log = logging.getLogger("study.engine.train")
EVAL_KEYS = ("top1", "top5", "ema_top1", "eval_step")


@dataclasses.dataclass(frozen=True)
class Every:
    """True at every ``k``-th step and at the last one (logging, evaluation, checkpoints)."""

    k: int
    total: int

    def __call__(self, step: int) -> bool:
        return step % self.k == 0 or step == self.total


class StepTimer:
    """The first step's wall time is the compile; the step time is the median of the rest."""

    def __init__(self, compile_s: float | None = None, step_ms: float | None = None) -> None:
        self.compile_s = compile_s  # a resumed run keeps the compile of its first attempt
        self._restored_ms = step_ms
        self.times: list[float] = []

    def add(self, seconds: float) -> None:
        if self.compile_s is None:
            self.compile_s = seconds
        else:
            self.times.append(seconds)

    def step_ms(self) -> float | None:
        return 1000 * statistics.median(self.times) if self.times else self._restored_ms


class Throughput:
    """Images per second over the steps since the last call to :meth:`rate`."""

    def __init__(self, batch: int) -> None:
        self.batch, self.t, self.n = batch, time.perf_counter(), 0

    def tick(self) -> None:
        self.n += 1

    def rate(self) -> float:
        now = time.perf_counter()
        ips = self.n * self.batch / max(now - self.t, 1e-9)
        self.t, self.n = now, 0
        return ips


def divergence(last: dict[str, float], loss_bound: float) -> str | None:
    """Why the run diverged (non-finite loss or parameters, a loss above the bound), or None."""
    loss = last["loss"]
    if not math.isfinite(loss):
        return "non-finite loss"
    if loss > loss_bound:
        return f"loss {loss:.4g} > loss_bound"
    if not last["params_finite"]:
        return "non-finite parameters"
    return None


def who() -> dict[str, Any]:
    """Which process wrote a record, and when (a ``running`` record's heartbeat)."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def train_metrics(last: dict[str, float]) -> dict[str, float]:
    """The train-step metrics in ``last`` (without the evaluation's)."""
    return {k: v for k, v in last.items() if k not in EVAL_KEYS}


class Books:
    """What a run writes while it trains: metrics rows, evaluations, checkpoints and result.json.

    ``last`` holds the latest train metrics and evaluation; it travels in every checkpoint, so a
    run restored at its final step reports exactly what the uninterrupted run would (issue 16).
    """

    def __init__(self, rec: RunRecord, ckpt: Checkpointer, iterator: Any, *, start: int,
                 resumed: bool, meta: dict, total: int, steps_per_epoch: float, batch: int,
                 evaluate: Callable[[Any, Any], tuple[float, float]], progress: bool) -> None:
        self.rec, self.ckpt, self.it = rec, ckpt, iterator
        self.total, self.steps_per_epoch, self.evaluator = total, steps_per_epoch, evaluate
        self.metrics = rec.metrics_log(start if resumed else None)
        self.timer = StepTimer(meta.get("compile_s"), meta.get("step_time_ms"))
        self.speed = Throughput(batch)
        self.last: dict[str, float] = dict(meta.get("last") or rec.last_rows(start))
        self.recorded = False  # the final record is written: a later exception must not replace it
        self.bar = None
        if progress and rec.writable:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        rec.write_result(self.running(start))

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch

    def running(self, step: int) -> dict[str, Any]:
        return {"status": Status.RUNNING, "steps": step, "total_steps": self.total,
                "last_checkpoint": self.rec.last_checkpoint(), **who()}

    def step_done(self, step: int, metrics: dict[str, Any]) -> None:
        self.last.update({k: float(v) for k, v in metrics.items()})
        self.speed.tick()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.last['loss']:.3f}", refresh=False)

    def log_train(self, step: int) -> None:
        ips = self.speed.rate()
        self.metrics.write({"step": step, "epoch": self.epoch(step), "kind": "train",
                            **train_metrics(self.last), "images_per_s": ips})
        if self.bar is None and self.rec.writable:
            log.info("step %d/%d loss %.4f lr %.4g clip %.3f %.0f img/s", step, self.total,
                     self.last["loss"], self.last["lr"], self.last["clip_fraction"], ips)

    def evaluate(self, step: int, state: dict) -> None:
        """Top-1 and top-5 of the parameters; the EMA's top-1 only at the last step.

        The EMA is what the run reports at its end; evaluating it every epoch as well doubled the
        evaluation cost (0.35 s a pass over the 10k Fashion-MNIST test images at 14 px, 8 s of a
        3-minute local run) for a curve no figure or claim reads.
        """
        top1, top5 = self.evaluator(state["params"], state["rest"])
        row = {"top1": top1, "top5": top5}
        if step == self.total:
            row["ema_top1"], _ = self.evaluator(state["ema"], state["rest"])
        self.metrics.write({"step": step, "epoch": self.epoch(step), "kind": "eval", **row})
        if self.rec.writable:
            log.info("eval step %d: %s", step, " ".join(f"{k} {v:.4f}" for k, v in row.items()))
        self.last.update(**row, eval_step=step)

    def save(self, step: int, state: dict) -> None:
        self.ckpt.save(step, state, self.it, {"step": step, "epoch": self.epoch(step), "last": self.last,
                                              "compile_s": self.timer.compile_s,
                                              "step_time_ms": self.timer.step_ms()})
        self.rec.write_result(self.running(step))

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        result.update(total_steps=self.total, compile_s=self.timer.compile_s,
                      step_time_ms=self.timer.step_ms(), peak_rss_gb=peak_rss_gb(), **who())
        if result["status"] == Status.DONE and not complete(result):
            raise RuntimeError(f"final metrics missing: {result}")  # never a bare 'done'
        self.rec.write_result(result)
        self.recorded = True
        self.ckpt.close()
        self.metrics.close()
        if self.bar is not None:
            self.bar.close()
        return result

    def diverged(self, step: int, why: str) -> dict[str, Any]:
        self.metrics.write({"step": step, "kind": "train", **train_metrics(self.last)})
        log.warning("diverged at step %d: %s", step, why)
        return self.finish({"status": Status.DIVERGED, "steps": step, "reason": why, "top1": None,
                            "top5": None, "ema_top1": None, "last_metrics": train_metrics(self.last)})

    def interrupted(self, step: int, state: dict, sig: int) -> dict[str, Any]:
        self.save(step, state)
        log.warning("%s: checkpointed at step %d, exiting", signal.Signals(sig).name, step)
        return self.finish({"status": Status.INTERRUPTED, "steps": step,
                            "error": signal.Signals(sig).name, "last_checkpoint": step})

    def done(self, step: int) -> dict[str, Any]:
        return self.finish({"status": Status.DONE, "steps": step, "top1": self.last.get("top1"),
                            "top5": self.last.get("top5"), "ema_top1": self.last.get("ema_top1"),
                            "final_loss": self.last.get("loss")})

"""The one vocabulary of a run's state (read from a run directory by :class:`study.record.RunRecord`).

A run directory's ``result.json`` holds what the trainer last wrote: ``running`` (with its pid,
host and a heartbeat), then exactly one final record. The trainer holds an exclusive lock on
``<run>/.lock`` while it runs (:mod:`study.runlock`), so a ``running`` record whose lock is free
belongs to a process that died without a word (SIGKILL, a lost node): it reads as
``interrupted`` and a relaunch resumes it from its last checkpoint.
"""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    DONE = "done"  # trained to the end, with every final metric
    DIVERGED = "diverged"  # stopped on a non-finite or unbounded loss: a result, not a failure
    INCOMPLETE = "incomplete"  # says done but lacks its metrics (an old or damaged record)
    FAILED = "failed"  # an exception or a fatal signal, recorded in result.json
    INTERRUPTED = "interrupted"  # checkpointed and stopped (SIGTERM, preemption) or died silently
    RUNNING = "running"  # a live trainer holds the run's lock
    PENDING = "pending"  # directory made, trainer not started
    MISSING = "missing"  # never launched


FINISHED = (Status.DONE, Status.DIVERGED)
# The metrics a finished training run must carry; a latency or signal run carries its own.
FINAL_METRICS = ("top1", "top5", "ema_top1", "final_loss")
TASK_METRICS = {"latency": ("latency_ms",), "signal": ("signal_var_last",)}
# Exit status of a trainer that found its run directory locked by another live trainer.
BUSY_EXIT = 75


def complete(result: dict) -> bool:
    """Whether a ``done`` record carries every metric it must."""
    needed = TASK_METRICS.get(result.get("task"), FINAL_METRICS)
    return all(result.get(k) is not None for k in needed)


def finished(result: dict) -> bool:
    """Whether a result record ends its run: diverged, or done with all its metrics."""
    st = result.get("status")
    return st == Status.DIVERGED or (st == Status.DONE and complete(result))

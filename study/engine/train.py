"""The trainer: one linear function you can read top to bottom (in the spirit of big_vision).

``study train --workdir DIR [--config FILE] [--set key=value ...]``. Relaunching on the same
directory resumes from its newest good checkpoint. One process trains a run directory at a time
(a lock, :mod:`study.runlock`), and any death it can see (an exception, submitit's requeue exit)
is written to ``result.json`` with the step and the last checkpoint. Divergence (non-finite loss or parameters,
or a loss above ``loss_bound``) ends the run cleanly with status ``diverged``: it is a result,
and the process exits 0 so a grid goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from study import config as config_lib
from study import models
from study.engine import checkpoint, compile_cache, input_pipeline, optim, trace_cache
from study.engine.bookkeeping import Books, Every, divergence, who
from study.engine.checkpoint import Checkpointer
from study.engine.step import make_eval_step, make_train_step, put, split_model
from study.environment import environment
from study.record import RunRecord
from study.runlock import RunLock
from study.status import Status

log = logging.getLogger(__name__)


class _Signals:
    """SIGTERM / SIGUSR2 / SIGHUP set a flag; the loop checkpoints at the next step boundary.

    A handler installed before ours (submitit's: on USR2 it checkpoints the submission,
    requeues the job and exits) is called after our checkpoint, outside signal context, so a
    preempted or timed-out SLURM job saves its exact step and is then requeued.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP)) -> None:
        self.received: int | None = None
        self.previous = {sig: signal.signal(sig, self._handler) for sig in signals}

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum

    def chain(self, signum: int) -> None:
        """Run the handler ours replaced for ``signum``, if it was a Python one."""
        prev = self.previous.get(signum)
        if callable(prev):
            prev(signum, None)


def evaluate(eval_step, params, rest, data, batch: int, sharding) -> tuple[float, float]:
    """Top-1 and top-5 over the whole eval split (each process feeds its slice of every batch)."""
    nproc, pid = jax.process_count(), jax.process_index()
    c1 = c5 = n = 0
    for b in input_pipeline.eval_batches(data):
        x, y = np.asarray(b["image"]), np.asarray(b["label"], np.int32)
        n += len(y)
        if len(y) < batch:  # pad to a full batch (one compiled shape) with labels that never match
            pad = batch - len(y)
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.full((pad,), -1, y.dtype)])
        per = batch // nproc
        x, y = x[pid * per:(pid + 1) * per], y[pid * per:(pid + 1) * per]
        a, b5 = eval_step(params, rest, put(x, sharding), put(y, sharding))
        c1, c5 = c1 + int(a), c5 + int(b5)
    return c1 / n, c5 / n


def maybe_initialize_distributed() -> None:
    """Multi-process: inside a SLURM step with several tasks, join one JAX job.

    ``jax.distributed.initialize()`` reads SLURM's variables and binds one GPU per task
    (library-notes §2d), so launch one task per GPU. CPU processes need gloo for their
    collectives (XLA's CPU client has none by default); GPUs use NCCL.
    """
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ:
        if not jax.distributed.is_initialized():
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize()


def replicate(tree: Any, sharding: NamedSharding) -> Any:
    """Every process's identical copy of ``tree`` → arrays replicated over the global mesh."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    glob = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        checkpoint.to_storable(tree))
    return checkpoint.from_storable(glob, tree)


def _all_agree(flag: bool) -> bool:
    """Whether any process has ``flag`` (a signal reaches the tasks at different steps)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def _death_record(e: BaseException, step: int, total: int | None, rec: RunRecord) -> dict:
    """What result.json says about a run ended by an exception (SystemExit included)."""
    if isinstance(e, (SystemExit, KeyboardInterrupt)):  # submitit's requeue exit, Ctrl-C
        st, why = Status.INTERRUPTED, f"{type(e).__name__}({getattr(e, 'code', '')})"
    else:
        st, why = Status.FAILED, f"{type(e).__name__}: {e}"
    return {"status": st, "error": why, "steps": step, "total_steps": total,
            "last_checkpoint": rec.last_checkpoint(), **who()}


def _check_devices(cfg: dict[str, Any]) -> None:
    """Batch sizes the devices of every process can share (before anything is written)."""
    n_dev = jax.device_count()
    micro = cfg["batch_size"] // cfg["accum_steps"]
    if micro % n_dev:
        raise config_lib.ConfigError(
            f"batch_size: {cfg['batch_size']} / accum_steps {cfg['accum_steps']} = {micro} is "
            f"not divisible by the {n_dev} devices")
    if cfg["eval_batch_size"] % n_dev:
        raise config_lib.ConfigError(
            f"eval_batch_size: {cfg['eval_batch_size']} is not divisible by the {n_dev} devices")


def train(workdir: str | Path, cfg: dict[str, Any], *, progress: bool | None = None) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns what it writes to ``result.json``."""
    if cfg["task"] == "latency":  # the variants grid times steps instead of training
        from study.engine import latency

        return latency.run(workdir, cfg)
    if cfg["task"] == "signal":  # the signal grid measures the model at initialisation
        from study.engine import signal_run

        return signal_run.run(workdir, cfg)
    maybe_initialize_distributed()
    cache = compile_cache.enable()  # the runs of a grid share their shapes: compile once
    # Everything that can reject the config happens before the run directory is touched.
    _check_devices(cfg)
    primary = jax.process_index() == 0  # process 0 owns the run directory
    rec = RunRecord(workdir, writable=primary)
    if (previous := rec.begin(cfg)) is not None:
        log.info("%s already %s; nothing to train", rec.dir, previous["status"])
        return previous
    preset = models.PRESETS[cfg["model"]]
    data = input_pipeline.build(cfg, cfg["image_size"] or preset.train_resolution,
                                cfg["eval_image_size"] or preset.test_resolution)
    rec.dir.mkdir(parents=True, exist_ok=True)
    with RunLock(rec.dir) if primary else contextlib.nullcontext():
        if (previous := rec.begin(cfg)) is not None:  # finished while we waited for the lock
            return previous
        where: dict[str, Any] = {"step": 0, "total": None, "books": None}  # for a death record
        try:
            return _train(rec, cfg, data, where, sys.stderr.isatty() if progress is None else progress, cache)
        except BaseException as e:
            if primary and not (where["books"] and where["books"].recorded):
                rec.write_result(_death_record(e, where["step"], where["total"], rec))
            raise


def _train(rec: RunRecord, cfg: dict[str, Any], data: input_pipeline.Data, where: dict,
           progress: bool, cache: str | None) -> dict:
    """The trainer proper, top to bottom; ``where`` tracks the step for a death record."""
    steps_per_epoch = data.train_size / cfg["batch_size"]
    total = cfg["steps"] or max(1, math.ceil(cfg["epochs"] * steps_per_epoch))
    where["total"] = total
    dtype = jnp.bfloat16 if cfg["dtype"] == "bfloat16" else jnp.float32

    # Model, optimizer and state.
    overrides = {"in_channels": data.channels, **cfg["model_overrides"]}
    model = models.create(cfg["model"], rngs=nnx.Rngs(params=cfg["seed"], dropout=cfg["seed"] + 1),
                          num_classes=data.num_classes, **overrides)
    g_train, g_eval, params, rest = split_model(model)
    lr = optim.schedule(cfg, steps_per_epoch, total)
    tx = optim.optimizer(cfg, lr)
    state = dict(params=params, rest=rest, opt=tx.init(params),
                 ema=jax.tree.map(jnp.copy, params), step=jnp.zeros((), jnp.int32))

    # Data parallel over every device of every process: the batch axis is sharded, the state
    # replicated. The state is placed before the restore so orbax reads onto the same mesh.
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    batch_sharding = NamedSharding(mesh, P("data"))
    state = replicate(state, NamedSharding(mesh, P()))

    # Resume from the newest good checkpoint, data iterator included.
    it = input_pipeline.iterator(data)
    ckpt = Checkpointer(rec.dir / "checkpoints", cfg["keep_checkpoints"])
    restored = ckpt.restore(state, it)
    start, meta = 0, {}
    if restored is not None:
        start, state, meta = restored
        log.info("resumed from step %d", start)
    where["step"] = start
    rec.write_config(cfg)
    rec.write_environment({**environment(), "resumed_from_step": start if restored is not None else None,
                           "jax_compilation_cache": cache})

    # The compiled steps.
    common = dict(mean=data.mean, std=data.std, dtype=dtype)
    # What the traces depend on beyond the arguments: the config (a seed changes only values)
    # and what the data contributes (the schedule's length, the normalisation, the classes).
    key = None if cache is None else json.dumps(
        {"config": {k: v for k, v in cfg.items() if k != "seed"}, "train_size": data.train_size,
         "total": total, "classes": data.num_classes, **common}, sort_keys=True, default=str)
    train_step = make_train_step(
        g_train, tx, lr, num_classes=data.num_classes, label_smoothing=cfg["label_smoothing"],
        ema_decay=cfg["ema_decay"], **common, cache_key=key)
    eval_fn = make_eval_step(g_eval, **common)
    eval_step = jax.jit(eval_fn) if key is None else trace_cache.cached_jit(eval_fn, "eval_step", key)
    books = where["books"] = Books(
        rec, ckpt, it, start=start, resumed=restored is not None, meta=meta, total=total,
        steps_per_epoch=steps_per_epoch, batch=cfg["batch_size"], progress=progress,
        evaluate=lambda p, r: evaluate(eval_step, p, r, data, cfg["eval_batch_size"], batch_sharding))
    log_every, ckpt_every = Every(cfg["log_every"], total), Every(cfg["checkpoint_every"], total)
    eval_every = Every(cfg["eval_every"] or max(1, math.ceil(steps_per_epoch)), total)
    # SLURM sends SIGTERM on requeue and preemption, USR2 before the time limit (submitit's
    # --signal); a terminal's hangup is SIGHUP. All three checkpoint and stop.
    signals = _Signals()

    step = start
    while step < total:
        batch = next(it)
        t0 = time.perf_counter()
        state, m = train_step(state, batch, batch_sharding)
        m = jax.device_get(m)
        books.timer.add(time.perf_counter() - t0)  # the first call compiles: timed apart
        step += 1
        where["step"] = step
        books.step_done(step, m)
        if why := divergence(books.last, cfg["loss_bound"]):
            return books.diverged(step, why)  # a result, not a crash
        if log_every(step):
            books.log_train(step)
        if eval_every(step):
            books.evaluate(step, state)
        if ckpt_every(step):
            books.save(step, state)
        if step < total and _all_agree(signals.received is not None):
            sig = signals.received or signal.SIGTERM
            books.interrupted(step, state, sig)
            signals.chain(sig)  # under submitit: requeue (and exit) now that the step is saved
            raise SystemExit(128 + sig)
    if books.last.get("eval_step") != total:  # restored at the end from a checkpoint without its eval
        books.evaluate(total, state)
    return books.done(step)

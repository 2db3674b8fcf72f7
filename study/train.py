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
import datetime
import logging
import math
import os
import signal
import socket
import statistics
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
from study import checkpoint, input_pipeline, models, optim, rundir
from study import status as run_status
from study.checkpoint import Checkpointer
from study.runlock import RunLock
from study.step import make_eval_step, make_train_step, put, split_model

log = logging.getLogger("study.train")


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


def _death_record(e: BaseException, step: int, total: int, workdir: Path) -> dict:
    """What result.json says about a run ended by an exception (SystemExit included)."""
    if isinstance(e, (SystemExit, KeyboardInterrupt)):  # submitit's requeue exit, Ctrl-C
        st, why = run_status.Status.INTERRUPTED, f"{type(e).__name__}({getattr(e, 'code', '')})"
    else:
        st, why = run_status.Status.FAILED, f"{type(e).__name__}: {e}"
    return {"status": st, "error": why, "steps": step, "total_steps": total,
            "last_checkpoint": rundir.last_checkpoint(workdir), **_who()}


def _who() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def train(
    workdir: str | Path, cfg: dict[str, Any], *, progress: bool | None = None,
) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns what it writes to ``result.json``."""
    workdir = Path(workdir)
    if cfg["task"] == "latency":  # the variants grid times steps instead of training
        from study import latency

        return latency.run(workdir, cfg)
    maybe_initialize_distributed()
    # Everything that can reject the config happens before the run directory is touched.
    n_dev = jax.device_count()
    micro = cfg["batch_size"] // cfg["accum_steps"]
    if micro % n_dev:
        raise config_lib.ConfigError(
            f"batch_size: {cfg['batch_size']} / accum_steps {cfg['accum_steps']} = {micro} is "
            f"not divisible by the {n_dev} devices"
        )
    if (workdir / "config.json").exists():
        if rundir.read_json(workdir / "config.json") != rundir.normalize(cfg):
            raise config_lib.ConfigError(
                f"workdir: {workdir} holds a run with a different config; use a new directory"
            )
    preset = models.PRESETS[cfg["model"]]
    data = input_pipeline.build(
        cfg, cfg["image_size"] or preset.train_resolution,
        cfg["eval_image_size"] or preset.test_resolution,
    )
    if cfg["eval_batch_size"] % n_dev:
        raise config_lib.ConfigError(
            f"eval_batch_size: {cfg['eval_batch_size']} is not divisible by the {n_dev} devices"
        )
    # Process 0 owns the run directory: it alone holds the lock and writes files.
    primary = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)
    with RunLock(workdir) if primary else contextlib.nullcontext():
        previous = rundir.read_json(workdir / "result.json") if (workdir / "result.json").exists() else {}
        if run_status.finished(previous):
            log.info("%s already %s; nothing to train", workdir, previous["status"])
            return previous
        where = {"step": 0, "total": None, "recorded": False}  # for the record of a death
        try:
            return _train(workdir, cfg, data, primary, where, progress)
        except BaseException as e:
            if primary and not where["recorded"]:
                rundir.write_json(workdir / "result.json",
                                  _death_record(e, where["step"], where["total"], workdir))
            raise


def _train(workdir: Path, cfg: dict[str, Any], data: input_pipeline.Data, primary: bool,
           where: dict, progress: bool | None) -> dict:
    """The trainer proper, top to bottom; ``where`` tracks the step for a death record."""
    n_dev = jax.device_count()
    steps_per_epoch = data.train_size / cfg["batch_size"]
    total = cfg["steps"] or max(1, math.ceil(cfg["epochs"] * steps_per_epoch))
    where["total"] = total
    eval_every = cfg["eval_every"] or max(1, math.ceil(steps_per_epoch))
    dtype = jnp.bfloat16 if cfg["dtype"] == "bfloat16" else jnp.float32
    write_json = rundir.write_json if primary else (lambda path, obj: None)

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
    mesh = jax.make_mesh((n_dev,), ("data",))
    batch_sharding = eval_sharding = NamedSharding(mesh, P("data"))
    state = replicate(state, NamedSharding(mesh, P()))

    it = input_pipeline.iterator(data)
    ckpt = Checkpointer(workdir / "checkpoints", cfg["keep_checkpoints"])
    restored = ckpt.restore(state, it)
    start, meta = 0, {}
    if restored is not None:
        start, state, meta = restored
        log.info("resumed from step %d", start)
    where["step"] = start
    write_json(workdir / "config.json", cfg)
    env = rundir.environment()
    env["resumed_from_step"] = start if restored is not None else None
    write_json(workdir / "environment.json", env)
    metrics = rundir.MetricsLog(workdir / "metrics.jsonl", start if restored is not None else None,
                                enabled=primary)
    running = lambda s: {"status": run_status.Status.RUNNING, "steps": s, "total_steps": total,  # noqa: E731
                         "last_checkpoint": rundir.last_checkpoint(workdir), **_who()}
    write_json(workdir / "result.json", running(start))

    common = dict(mean=data.mean, std=data.std, dtype=dtype)
    train_step = make_train_step(
        g_train, tx, lr, num_classes=data.num_classes, label_smoothing=cfg["label_smoothing"],
        ema_decay=cfg["ema_decay"], **common)
    eval_step = jax.jit(make_eval_step(g_eval, **common))
    # SLURM sends SIGTERM on requeue and preemption, USR2 before the time limit (submitit's
    # --signal); a terminal's hangup is SIGHUP. All three checkpoint and stop.
    signals = _Signals()
    show = (sys.stderr.isatty() if progress is None else progress) and primary
    bar = None
    if show:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    times: list[float] = []
    compile_s = meta.get("compile_s")
    # The last train metrics and evaluation travel in the checkpoint, so a run restored at its
    # final step reports exactly what the uninterrupted run would (issue 16).
    last: dict[str, float] = dict(meta.get("last") or rundir.last_rows(workdir / "metrics.jsonl", start))

    def step_ms() -> float | None:
        return 1000 * statistics.median(times) if times else meta.get("step_time_ms")

    def save(step: int) -> None:
        ckpt.save(step, state, it, {"step": step, "epoch": step / steps_per_epoch, "last": last,
                                    "compile_s": compile_s, "step_time_ms": step_ms()})
        write_json(workdir / "result.json", running(step))

    def finish(result: dict) -> dict:
        result.update(total_steps=total, compile_s=compile_s, step_time_ms=step_ms(), **_who())
        if result["status"] == run_status.Status.DONE and not run_status.complete(result):
            raise RuntimeError(f"final metrics missing: {result}")  # never a bare 'done'
        write_json(workdir / "result.json", result)
        where["recorded"] = True
        ckpt.close()
        if bar is not None:
            bar.close()
        return result

    def evaluate_all(step: int) -> None:
        top1, top5 = evaluate(eval_step, state["params"], state["rest"], data,
                              cfg["eval_batch_size"], eval_sharding)
        ema1, _ = evaluate(eval_step, state["ema"], state["rest"], data,
                           cfg["eval_batch_size"], eval_sharding)
        metrics.write({"step": step, "epoch": step / steps_per_epoch, "kind": "eval",
                       "top1": top1, "top5": top5, "ema_top1": ema1})
        if primary:
            log.info("eval step %d: top1 %.4f top5 %.4f ema_top1 %.4f", step, top1, top5, ema1)
        last.update(top1=top1, top5=top5, ema_top1=ema1, eval_step=step)

    step = start
    window_t, window_n = time.perf_counter(), 0
    while step < total:
        batch = next(it)
        t0 = time.perf_counter()
        state, m = train_step(state, batch, batch_sharding)
        m = jax.device_get(m)
        dt = time.perf_counter() - t0
        if compile_s is None:
            compile_s = dt  # the first call compiles; excluded from the step time
        else:
            times.append(dt)
        step += 1
        where["step"] = step
        window_n += 1
        last.update({k: float(v) for k, v in m.items()})
        loss = last["loss"]
        if not (math.isfinite(loss) and loss <= cfg["loss_bound"] and last["params_finite"]):
            why = "non-finite loss" if not math.isfinite(loss) else (
                f"loss {loss:.4g} > loss_bound" if loss > cfg["loss_bound"] else "non-finite parameters")
            metrics.write({"step": step, "kind": "train", **m_of(last)})
            log.warning("diverged at step %d: %s", step, why)
            return finish({"status": run_status.Status.DIVERGED, "steps": step, "reason": why,
                           "top1": None, "top5": None, "ema_top1": None, "last_metrics": m_of(last)})
        if step % cfg["log_every"] == 0 or step == total:
            now = time.perf_counter()
            ips = window_n * cfg["batch_size"] / max(now - window_t, 1e-9)
            window_t, window_n = now, 0
            metrics.write({"step": step, "epoch": step / steps_per_epoch, "kind": "train",
                           **m_of(last), "images_per_s": ips})
            if bar is None and primary:
                log.info("step %d/%d loss %.4f lr %.4g clip %.3f %.0f img/s", step, total, loss,
                         last["lr"], last["clip_fraction"], ips)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if step % eval_every == 0 or step == total:
            evaluate_all(step)
        if step % cfg["checkpoint_every"] == 0 or step == total:
            save(step)
        if step < total and _all_agree(signals.received is not None):
            save(step)
            sig = signals.received or signal.SIGTERM
            log.warning("%s: checkpointed at step %d, exiting", signal.Signals(sig).name, step)
            finish({"status": run_status.Status.INTERRUPTED, "steps": step,
                    "error": signal.Signals(sig).name, "last_checkpoint": step})
            signals.chain(sig)  # under submitit: requeue (and exit) now that the step is saved
            raise SystemExit(128 + sig)
    if last.get("eval_step") != total:  # restored at the end from a checkpoint without its eval
        evaluate_all(total)
    return finish({"status": run_status.Status.DONE, "steps": step, "top1": last.get("top1"),
                   "top5": last.get("top5"), "ema_top1": last.get("ema_top1"),
                   "final_loss": last.get("loss")})


def m_of(last: dict) -> dict:
    """The train-step metrics in ``last`` (without the evaluation's)."""
    return {k: v for k, v in last.items() if k not in ("top1", "top5", "ema_top1", "eval_step")}

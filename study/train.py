"""The trainer: one linear function you can read top to bottom (in the spirit of big_vision).

``study train --workdir DIR [--config FILE] [--set key=value ...]``. Relaunching on the same
directory resumes from its newest good checkpoint. Divergence (non-finite loss or parameters,
or a loss above ``loss_bound``) ends the run cleanly with status ``diverged``: it is a result,
and the process exits 0 so a grid goes on.
"""

from __future__ import annotations

import logging
import math
import signal
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
from study import input_pipeline, models, optim, rundir
from study.checkpoint import Checkpointer
from study.step import make_eval_step, make_train_step, split_model

log = logging.getLogger("study.train")


class _Signals:
    """SIGTERM / SIGUSR2 set a flag; the loop checkpoints at the next step boundary."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR2)) -> None:
        self.received: int | None = None
        for sig in signals:
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum


def evaluate(eval_step, params, rest, data, batch: int, sharding) -> tuple[float, float]:
    """Top-1 and top-5 over the whole eval split (every process sees all of it)."""
    c1 = c5 = n = 0
    for b in input_pipeline.eval_batches(data):
        x, y = np.asarray(b["image"]), np.asarray(b["label"], np.int32)
        n += len(y)
        if len(y) < batch:  # pad to a full batch (one compiled shape) with labels that never match
            pad = batch - len(y)
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.full((pad,), -1, y.dtype)])
        a, b5 = eval_step(params, rest, jax.device_put(x, sharding), jax.device_put(y, sharding))
        c1, c5 = c1 + int(a), c5 + int(b5)
    return c1 / n, c5 / n


def maybe_initialize_distributed() -> None:
    """Multi-host: inside a SLURM step with several tasks, join the JAX cluster.

    ``jax.distributed.initialize()`` reads SLURM's variables and binds one GPU per task
    (library-notes §2d), so launch one task per GPU.
    """
    import os

    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ:
        if not jax.distributed.is_initialized():
            jax.distributed.initialize()


def train(
    workdir: str | Path, cfg: dict[str, Any], *, progress: bool | None = None,
    handle_signals: bool = True,
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
        previous = rundir.read_json(workdir / "result.json") if (workdir / "result.json").exists() else {}
        if previous.get("status") in ("done", "diverged"):
            log.info("%s already %s; nothing to train", workdir, previous["status"])
            return previous
    preset = models.PRESETS[cfg["model"]]
    data = input_pipeline.build(
        cfg, cfg["image_size"] or preset.train_resolution,
        cfg["eval_image_size"] or preset.test_resolution,
    )
    if cfg["eval_batch_size"] % n_dev:
        raise config_lib.ConfigError(
            f"eval_batch_size: {cfg['eval_batch_size']} is not divisible by the {n_dev} devices"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = data.train_size / cfg["batch_size"]
    total = cfg["steps"] or max(1, math.ceil(cfg["epochs"] * steps_per_epoch))
    eval_every = cfg["eval_every"] or max(1, math.ceil(steps_per_epoch))
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

    # Data parallel over every device: the batch axis is sharded, the state replicated.
    mesh = jax.make_mesh((n_dev,), ("data",))
    batch_sharding = eval_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    it = input_pipeline.iterator(data)
    ckpt = Checkpointer(workdir / "checkpoints", cfg["keep_checkpoints"])
    restored = ckpt.restore(state, it)
    start = 0
    if restored is not None:
        start, state, _ = restored
        log.info("resumed from step %d", start)
    state = jax.device_put(state, replicated)
    rundir.write_json(workdir / "config.json", cfg)
    env = rundir.environment()
    env["resumed_from_step"] = start if restored is not None else None
    rundir.write_json(workdir / "environment.json", env)
    metrics = rundir.MetricsLog(workdir / "metrics.jsonl", start if restored is not None else None)
    rundir.write_json(workdir / "result.json", {"status": "running", "steps": start, "total_steps": total})

    common = dict(mean=data.mean, std=data.std, dtype=dtype)
    train_step = make_train_step(
        g_train, tx, lr, num_classes=data.num_classes, label_smoothing=cfg["label_smoothing"],
        ema_decay=cfg["ema_decay"], **common)
    eval_step = jax.jit(make_eval_step(g_eval, **common))
    # Under submitit, its own SIGUSR2 handler requeues the job (and it ignores SIGTERM, which
    # SLURM sends on requeue or preemption): the trainer then takes SIGTERM only.
    signals = _Signals() if handle_signals else _Signals((signal.SIGTERM,))
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def save(step: int) -> None:
        ckpt.save(step, state, it, {"step": step, "epoch": step / steps_per_epoch})

    def finish(result: dict) -> dict:
        result.update(total_steps=total, compile_s=compile_s, step_time_ms=step_ms())
        rundir.write_json(workdir / "result.json", result)
        ckpt.close()
        if bar is not None:
            bar.close()
        return result

    times: list[float] = []
    compile_s = None
    step_ms = lambda: 1000 * statistics.median(times) if times else None  # noqa: E731
    last: dict[str, float] = {}
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
        window_n += 1
        last = {k: float(v) for k, v in m.items()}
        loss = last["loss"]
        if not (math.isfinite(loss) and loss <= cfg["loss_bound"] and last["params_finite"]):
            why = "non-finite loss" if not math.isfinite(loss) else (
                f"loss {loss:.4g} > loss_bound" if loss > cfg["loss_bound"] else "non-finite parameters")
            metrics.write({"step": step, "kind": "train", **last})
            log.warning("diverged at step %d: %s", step, why)
            return finish({"status": "diverged", "steps": step, "reason": why, "top1": None,
                           "top5": None, "ema_top1": None, "last_metrics": last})
        if step % cfg["log_every"] == 0 or step == total:
            now = time.perf_counter()
            ips = window_n * cfg["batch_size"] / max(now - window_t, 1e-9)
            window_t, window_n = now, 0
            row = {"step": step, "epoch": step / steps_per_epoch, "kind": "train", **last,
                   "images_per_s": ips}
            metrics.write(row)
            if bar is None:
                log.info("step %d/%d loss %.4f lr %.4g clip %.3f %.0f img/s", step, total, loss,
                         last["lr"], last["clip_fraction"], ips)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if step % eval_every == 0 or step == total:
            top1, top5 = evaluate(eval_step, state["params"], state["rest"], data,
                                  cfg["eval_batch_size"], eval_sharding)
            ema1, _ = evaluate(eval_step, state["ema"], state["rest"], data,
                               cfg["eval_batch_size"], eval_sharding)
            metrics.write({"step": step, "epoch": step / steps_per_epoch, "kind": "eval",
                           "top1": top1, "top5": top5, "ema_top1": ema1})
            log.info("eval step %d: top1 %.4f top5 %.4f ema_top1 %.4f", step, top1, top5, ema1)
            last.update(top1=top1, top5=top5, ema_top1=ema1)
        if step % cfg["checkpoint_every"] == 0 or step == total:
            save(step)
        if signals.received is not None and step < total:
            save(step)
            log.warning("signal %d: checkpointed at step %d, exiting", signals.received, step)
            finish({"status": "interrupted", "steps": step})
            raise SystemExit(128 + signals.received)
    return finish({"status": "done", "steps": step, "top1": last.get("top1"),
                   "top5": last.get("top5"), "ema_top1": last.get("ema_top1"),
                   "final_loss": last.get("loss")})

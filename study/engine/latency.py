"""Training-step latency by the paper's protocol (NFNets App. A.2).

The median time of a full training step (forward, backward, AGC, weight decay, Nesterov SGD,
EMA) over steady-state steps, with the batch already on the device; the first call (XLA
compilation) is timed and reported separately. Synthetic data: no dataset needed. The paper used
32 images on one V100 in fp16, or 32 per TPUv3 core in bf16.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from study import config as config_lib
from study import models
from study.engine import optim
from study.engine.step import make_train_step, split_model


@dataclasses.dataclass
class Prepared:
    """A built model's jitted train step, its state and a fixed batch already on the device."""

    step: Callable[[dict, dict], tuple[dict, dict]]
    state: dict
    data: dict
    info: dict[str, Any]

    def run(self, steps: int) -> list[float]:
        """Runs ``steps`` steps; the wall time of each, waited until its results exist."""
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.state, m = self.step(self.state, self.data)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
        return times


def prepare(
    model: str, *, batch: int = 32, resolution: int | None = None, dtype: str = "float32",
    seed: int = 0, agc: bool = True, **overrides: Any,
) -> Prepared:
    """Builds ``model`` and its full train step (``agc=False``: the same step without AGC)."""
    if model not in models.PRESETS:
        raise ValueError(f"model: unknown {model!r}; valid: {', '.join(models.names())}")
    preset = models.PRESETS[model]
    res = resolution or preset.train_resolution
    cfg = config_lib.resolve({"model": model, "batch_size": batch, "dtype": dtype, "agc": agc})
    net = models.create(model, rngs=nnx.Rngs(params=seed, dropout=seed + 1), **overrides)
    g_train, _, params, rest = split_model(net)
    lr = optim.schedule(cfg, 1000.0, 100_000)
    tx = optim.optimizer(cfg, lr)
    num_classes, channels = net.cfg.num_classes, net.cfg.in_channels
    step = make_train_step(
        g_train, tx, lr, num_classes=num_classes, label_smoothing=0.1, ema_decay=0.99999,
        mean=(0.5,) * channels, std=(0.25,) * channels,
        dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
    )
    rng = np.random.default_rng(seed)
    x = jax.device_put(rng.integers(0, 256, (batch, res, res, channels), dtype=np.uint8))
    y = jax.device_put(rng.integers(0, num_classes, (batch,)).astype(np.int32))
    state = dict(params=params, rest=rest, opt=tx.init(params),
                 ema=jax.tree.map(jnp.copy, params), step=jnp.zeros((), jnp.int32))
    info = {"model": model, "batch": batch, "resolution": res, "dtype": dtype, "agc": agc,
            "params": models.count_params(net)}
    return Prepared(step, state, {"image": [x], "label": [y]}, info)


def measure(
    model: str, *, batch: int = 32, resolution: int | None = None, steps: int = 20,
    warmup: int = 3, dtype: str = "float32", seed: int = 0, **overrides: Any,
) -> dict[str, Any]:
    """Builds ``model`` and times ``steps`` training steps after ``warmup`` untimed ones."""
    p = prepare(model, batch=batch, resolution=resolution, dtype=dtype, seed=seed, **overrides)
    compile_s = p.run(1)[0]
    p.run(warmup)
    times = p.run(steps)
    med = statistics.median(times)
    dev = jax.devices()[0]
    return {
        "model": model, "batch": batch, "resolution": p.info["resolution"], "dtype": dtype,
        "median_step_ms": 1000 * med, "images_per_s": batch / med, "compile_s": compile_s,
        "min_step_ms": 1000 * min(times), "max_step_ms": 1000 * max(times),
        "steps_timed": steps, "device_kind": dev.device_kind, "platform": dev.platform,
        "device_count": jax.device_count(),
    }


def run(workdir: str | Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """A ``task: latency`` run (the variants grid): times ``cfg``'s model into ``workdir``.

    Same run directory as a training run (config.json, environment.json, result.json), so grids,
    status and the results table treat it alike. ``steps`` is the number of timed steps (0: 20);
    ``image_size`` 0 means the model's train resolution, as the paper's protocol.
    """
    from study.environment import environment, peak_rss_gb
    from study.record import RunRecord
    from study.status import Status

    from study.engine import compile_cache

    cache = compile_cache.enable()
    rec = RunRecord(workdir)
    previous = rec.begin(cfg)  # the guard training runs use too
    if previous is not None:
        return previous
    rec.dir.mkdir(parents=True, exist_ok=True)
    rec.write_config(cfg)
    rec.write_environment({**environment(), "jax_compilation_cache": cache})
    rec.write_result({"status": Status.RUNNING})
    steps = cfg["steps"] or 20
    out = measure(cfg["model"], batch=cfg["batch_size"], resolution=cfg["image_size"] or None,
                  steps=steps, warmup=max(1, min(3, steps // 5)), dtype=cfg["dtype"],
                  seed=cfg["seed"], **cfg["model_overrides"])
    # The fastest and slowest timed step: a latency claim is decided only where ranges separate.
    result = {"status": Status.DONE, "task": "latency", "latency_ms": out["median_step_ms"],
              "latency_min_ms": out["min_step_ms"], "latency_max_ms": out["max_step_ms"],
              "step_time_ms": out["median_step_ms"], "images_per_s": out["images_per_s"],
              "compile_s": out["compile_s"], "steps": steps, "batch": out["batch"],
              "resolution": out["resolution"], "dtype": out["dtype"],
              "device_kind": out["device_kind"], "device_count": out["device_count"],
              "peak_rss_gb": peak_rss_gb()}
    rec.write_result(result)
    return result

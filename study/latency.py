"""Training-step latency by the paper's protocol (NFNets App. A.2).

The median time of a full training step (forward, backward, AGC, weight decay, Nesterov SGD,
EMA) over steady-state steps, with the batch already on the device; the first call (XLA
compilation) is timed and reported separately. Synthetic data: no dataset needed. The paper used
32 images on one V100 in fp16, or 32 per TPUv3 core in bf16.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from study import config as config_lib
from study import models, optim
from study.step import make_train_step, split_model


def measure(
    model: str, *, batch: int = 32, resolution: int | None = None, steps: int = 20,
    warmup: int = 3, dtype: str = "float32", seed: int = 0, **overrides: Any,
) -> dict[str, Any]:
    """Builds ``model`` and times ``steps`` training steps after ``warmup`` untimed ones."""
    if model not in models.PRESETS:
        raise ValueError(f"model: unknown {model!r}; valid: {', '.join(models.names())}")
    preset = models.PRESETS[model]
    res = resolution or preset.train_resolution
    cfg = config_lib.resolve({"model": model, "batch_size": batch, "dtype": dtype})
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
    data = {"image": [x], "label": [y]}
    state = dict(params=params, rest=rest, opt=tx.init(params),
                 ema=jax.tree.map(jnp.copy, params), step=jnp.zeros((), jnp.int32))
    t0 = time.perf_counter()
    state, m = step(state, data)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, m = step(state, data)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, data)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    dev = jax.devices()[0]
    return {
        "model": model, "batch": batch, "resolution": res, "dtype": dtype,
        "median_step_ms": 1000 * med, "images_per_s": batch / med, "compile_s": compile_s,
        "steps_timed": steps, "device_kind": dev.device_kind, "platform": dev.platform,
        "device_count": jax.device_count(),
    }

"""A ``task: signal`` run: signal propagation at initialisation (NFNets §3; Brock et al. 2021a).

One run measures one model at one seed: the average squared channel mean and the average channel
variance of the residual stream after every block, for a Gaussian input of ``batch_size`` images
at ``image_size`` px (0: 64). A BatchNorm model runs on its batch statistics, as at the first
training step; an NF model's skip gains are set to 1, so the α² schedule it is designed for is
visible (:func:`study.models.signal_prop.signal_propagation`). The rows go to ``signal.json``;
``result.json`` gets their summary, so status, resume and the results table treat the run as
any other, and seeds (different initialisations) give the claims their intervals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_RESOLUTION = 64


def profile_shape(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """Whether the per-block variance resets at every stage's first block and grows inside every
    stage: the shape a BN-ResNet's residual stream has at initialisation."""
    var = [r["avg_var"] for r in rows]
    stage = [r["stage"] for r in rows]
    resets = [var[i] < var[i - 1] for i in range(1, len(var)) if stage[i] != stage[i - 1]]
    grows = [var[i] > var[i - 1] for i in range(1, len(var)) if stage[i] == stage[i - 1]]
    return {"resets_at_transitions": all(resets), "grows_within_stages": all(grows)}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The scalars ``result.json`` carries (the per-block rows stay in ``signal.json``)."""
    var = np.array([r["avg_var"] for r in rows])
    sq = np.array([r["avg_sq_mean"] for r in rows])
    expected = np.array([r["expected_var"] for r in rows])
    out = {"signal_blocks": len(rows), "signal_var_first": float(var[0]), "signal_var_last": float(var[-1]),
           "signal_var_max": float(var.max()), "signal_mean_shift_max": float((sq / var).max()),
           **profile_shape(rows)}
    if np.isfinite(expected).all():  # NF models: the deviation from the designed α² schedule
        out["signal_schedule_error_max"] = float(np.abs(var / expected - 1).max())
    return out


def run(workdir: str | Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Measures ``cfg``'s model at initialisation into ``workdir``; returns its result."""
    import jax
    from flax import nnx

    from study import models
    from study.engine import compile_cache
    from study.environment import environment
    from study.models.signal_prop import signal_propagation
    from study.record import RunRecord
    from study.status import Status

    cache = compile_cache.enable()
    rec = RunRecord(workdir)
    if (previous := rec.begin(cfg)) is not None:
        return previous
    rec.dir.mkdir(parents=True, exist_ok=True)
    rec.write_config(cfg)
    rec.write_environment({**environment(), "jax_compilation_cache": cache})
    rec.write_result({"status": Status.RUNNING})
    model = models.create(cfg["model"], rngs=nnx.Rngs(cfg["seed"]), **cfg["model_overrides"])
    res = cfg["image_size"] or DEFAULT_RESOLUTION
    x = jax.random.normal(jax.random.key(10_000 + cfg["seed"]),
                          (cfg["batch_size"], res, res, model.cfg.in_channels))
    batch_stats = models.PRESETS[cfg["model"]].family == "resnet"
    rows = signal_propagation(model, x, batch_stats=batch_stats)
    rec.write_signal(rows)
    result = {"status": Status.DONE, "task": "signal", "resolution": res, "batch": cfg["batch_size"],
              "batch_stats": batch_stats, **summary(rows)}
    rec.write_result(result)
    return result

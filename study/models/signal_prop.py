"""Signal propagation at initialisation (Brock et al. 2021a, "Characterizing signal propagation
to close the performance gap in unnormalized ResNets", Figure 1; NFNets §3).

For each residual block, the average over channels of the squared channel mean and of the channel
variance of the block's output (the official ``base.signal_metrics``). For an NF network the
variance should follow the α² schedule: 1 + α² after a transition block, + α² per block after it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from study.models.nfnet import NFConfig, expected_variances


def signal_propagation(
    model: nnx.Module, x: jax.Array, *, skip_gain: float | None = 1.0, batch_stats: bool = False
) -> list[dict[str, float]]:
    """Per-block ``avg_sq_mean`` and ``avg_var`` of the residual stream for input ``x`` (NHWC).

    The model is run in eval mode on a copy. SkipInit zero-initialises every residual branch, so
    at true initialisation an NF network's residual stream does not grow at all; ``skip_gain``
    (default 1) replaces the skip gains for the measurement so the plot shows the α² schedule
    the β scalings are designed for. ``None`` keeps the model's own gains.
    Rows also carry ``expected_var`` for NF models (NaN for BatchNorm ResNets).
    ``batch_stats=True`` runs BatchNorm on the batch's statistics, as at the first training step
    (the BN-ResNet curve of the signal-propagation plots); by default the running averages.
    """
    graphdef, state = nnx.split(model)
    if skip_gain is not None:
        state = jax.tree_util.tree_map_with_path(
            lambda p, v: jnp.full_like(v, skip_gain) if "skip_gain" in jax.tree_util.keystr(p) else v,
            state,
        )

    @jax.jit
    def run(state, x):
        m = nnx.merge(graphdef, state)
        m.train() if batch_stats else m.eval()
        outs: list[jax.Array] = []
        m.features(x, collect=outs)
        return [
            (jnp.mean(jnp.mean(o, axis=(0, 1, 2)) ** 2), jnp.mean(jnp.var(o, axis=(0, 1, 2))))
            for o in outs
        ]

    stats = jax.device_get(run(state, x))
    cfg = model.cfg
    expected = (
        expected_variances(cfg.depths, cfg.alpha) if isinstance(cfg, NFConfig) else [np.nan] * len(stats)
    )
    stage_of = [s for s, d in enumerate(cfg.depths) for _ in range(d)]
    return [
        dict(block=i, stage=stage_of[i], avg_sq_mean=float(m), avg_var=float(v), expected_var=float(e))
        for i, ((m, v), e) in enumerate(zip(stats, expected))
    ]

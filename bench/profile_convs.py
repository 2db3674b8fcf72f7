"""Where a train step's time goes: every convolution of a model, timed alone on XLA:CPU.

``python -m bench.profile_convs nf-resnet-nano 256 [--resolution 28]`` prints, per conv of the
network (shapes captured from a forward pass), the forward, input-gradient and kernel-gradient
times and GFLOP/s, next to the peak conv kernel of bench/peak.py, then the totals against the
whole measured step. It is the profile behind BENCHMARKS.md's MFU discussion; not part of
`make bench` (one compilation per shape).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp


def conv_shapes(model: str, batch: int, resolution: int) -> list[dict[str, Any]]:
    from flax import nnx

    from study import models
    from study.models import ws_conv

    seen: list[dict[str, Any]] = []
    original = ws_conv.conv2d

    def spy(x, w, stride, padding, groups=1):
        seen.append(dict(x=tuple(x.shape), w=tuple(w.shape), stride=stride, padding=padding,
                         groups=groups))
        return original(x, w, stride, padding, groups)

    net = nnx.eval_shape(lambda: models.create(model, rngs=nnx.Rngs(0), convention="timm"))
    ws_conv.conv2d = spy
    try:
        x = jax.ShapeDtypeStruct((batch, resolution, resolution, net.cfg.in_channels), jnp.float32)
        g, s = nnx.split(net)
        jax.eval_shape(lambda s, x: nnx.merge(g, s)(x), s, x)
    finally:
        ws_conv.conv2d = original
    return seen


def _time(fn, *args, n: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def profile(model: str, batch: int, resolution: int) -> list[dict[str, Any]]:
    from study.models.ws_conv import conv2d

    rows = []
    for c in conv_shapes(model, batch, resolution):
        x = jnp.ones(c["x"], jnp.float32)
        w = jnp.ones(c["w"], jnp.float32) * 0.01
        f = lambda x, w, c=c: conv2d(x, w, c["stride"], c["padding"], c["groups"])  # noqa: E731
        out = jax.eval_shape(f, x, w)
        flop = 2 * out.shape[0] * out.shape[1] * out.shape[2] * c["w"][0] * c["w"][1] * c["w"][2] * c["w"][3]
        loss = lambda x, w: jnp.sum(f(x, w))  # noqa: E731
        t = {"fwd": _time(jax.jit(f), x, w),
             "dx": _time(jax.jit(jax.grad(loss, 0)), x, w) ,
             "dw": _time(jax.jit(jax.grad(loss, 1)), x, w)}
        rows.append({**c, "gflop": flop / 1e9, **{k: v for k, v in t.items()}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("batch", type=int)
    ap.add_argument("--resolution", type=int, default=None)
    a = ap.parse_args()
    from bench.peak import Peak
    from study import models

    res = a.resolution or models.PRESETS[a.model].train_resolution
    peak = Peak()
    rows = profile(a.model, a.batch, res)
    conv_peak = statistics.median(peak.round()["conv"] for _ in range(5)) / 1e9
    print(f"{a.model} batch {a.batch} at {res}px; peak conv {conv_peak:.1f} GFLOP/s")
    print(f"{'input':>18} {'kernel':>16} s g  {'fwd ms':>7} {'dx ms':>7} {'dw ms':>7}  GFLOP/s fwd/dx/dw")
    tot = {"fwd": 0.0, "dx": 0.0, "dw": 0.0, "gflop": 0.0}
    for r in rows:
        rate = [r["gflop"] / r[k] for k in ("fwd", "dx", "dw")]
        print(f"{str(r['x']):>18} {str(r['w']):>16} {r['stride']} {r['groups']}  "
              f"{1e3 * r['fwd']:7.2f} {1e3 * r['dx']:7.2f} {1e3 * r['dw']:7.2f}  "
              + "/".join(f"{v:.1f}" for v in rate))
        for k in tot:
            tot[k] += r[k]
    conv_s = tot["fwd"] + tot["dx"] + tot["dw"]
    print(f"convs alone: {1e3 * conv_s:.1f} ms for {3 * tot['gflop']:.2f} GFLOP = "
          f"{3 * tot['gflop'] / conv_s:.1f} GFLOP/s ({3 * tot['gflop'] / conv_s / conv_peak:.0%} of peak);"
          f" fwd {1e3 * tot['fwd']:.1f} ms, dx {1e3 * tot['dx']:.1f} ms, dw {1e3 * tot['dw']:.1f} ms")


if __name__ == "__main__":
    main()

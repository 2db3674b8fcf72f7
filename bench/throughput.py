"""Train-step throughput: this project (JAX) against timm's NormFreeNet in PyTorch, same CPU.

Both sides build the same network (the project's preset with ``convention="timm"`` is timm's
NormFreeNet with bench/torch_side.py's config: equal parameter counts are checked for every
config and, for the nano presets, equal logits after loading the torch weights into the JAX
model), take the same synthetic uint8 batch at the same resolution in float32, and run the same
training step (normalise, forward, label-smoothed cross-entropy, backward, AGC, weight decay,
Nesterov SGD, EMA) on the same number of threads. Timing rounds alternate between the sides
(JAX, torch eager, torch.compile, a peak-kernel round), and each side's median step time over
all rounds is compared: the ratio is JAX images/s over the faster PyTorch mode's.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from bench.peak import Peak
from bench.worker import Worker, WorkerError

TMP = Path(__file__).resolve().parent / "tmp"


@dataclasses.dataclass(frozen=True)
class Config:
    model: str
    resolution: int
    batch: int
    modes: tuple[str, ...] = ("eager",)  # PyTorch modes: eager, compile
    steps: int = 2  # steps per round and side
    rounds: int = 5
    agc_off: bool = False  # also time the same JAX step without AGC (the AGC overhead)
    data_wait_steps: int = 0  # then run the trainer's loop on real data with this step


def train_flops(model: str, resolution: int) -> float:
    """FLOPs of one training image: 2 × the paper's MAC count × 3 (forward + backward)."""
    from study import models

    return 6.0 * models.flops(model, resolution, convention="timm")


def _torch_env() -> dict[str, str]:
    # torch.compile's caches live under bench/tmp, so a second `make bench` reuses them.
    return {"TORCHINDUCTOR_CACHE_DIR": str(TMP / "inductor"), "TRITON_CACHE_DIR": str(TMP / "triton")}


def check_parity(worker: Worker, model: str) -> float:
    """Max |Δlogits| after loading the torch model's weights into ours (eval mode)."""
    from flax import nnx

    from study import models
    from study.models.convert import from_timm

    path = TMP / f"parity-{model}.npz"
    worker.ask(cmd="parity", path=str(path))
    with np.load(path) as z:
        sd = {k[3:]: z[k] for k in z.files if k.startswith("sd/")}
        x, want = z["input"], z["logits"]
    net = models.create(model, rngs=nnx.Rngs(0), convention="timm")
    from_timm(sd, net)
    net.eval()
    got = np.asarray(net(np.transpose(x, (0, 2, 3, 1))))
    path.unlink()
    return float(np.max(np.abs(got - want)))


class TorchPool:
    """The long-lived eager worker (importing torch costs seconds) and fresh compile workers."""

    def __init__(self, python: str | Path | None = None, script: str | Path | None = None) -> None:
        self.eager: Worker | None = None
        self.args = {k: v for k, v in (("python", python), ("script", script)) if v}

    def get(self, mode: str) -> Worker:
        if mode == "compile":
            return Worker(env=_torch_env(), **self.args)
        if self.eager is None or self.eager.proc.poll() is not None:
            self.eager = Worker(env=_torch_env(), **self.args)
        return self.eager

    def release(self, mode: str, w: Worker, failed: bool = False) -> None:
        if mode == "compile" or failed:
            w.close(kill=failed)
            if w is self.eager:
                self.eager = None

    def close(self) -> None:
        if self.eager is not None:
            self.eager.close()
            self.eager = None


def compare(cfg: Config, *, threads: int, compile_limit_s: float, pool: TorchPool,
            peak: Peak | None = None, parity: bool = False, deadline: float | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """One configuration: JAX vs each PyTorch mode, interleaved; returns medians and ratios."""
    from study.engine import latency

    TMP.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = dataclasses.asdict(cfg)
    t0 = time.perf_counter()
    prepared = latency.prepare(cfg.model, batch=cfg.batch, resolution=cfg.resolution,
                               convention="timm")
    out["jax_first_step_s"] = prepared.run(1)[0]
    prepared.run(1)
    out["params"] = prepared.info["params"]
    sides = {"jax": prepared}
    if cfg.agc_off:
        sides["jax_no_agc"] = latency.prepare(cfg.model, batch=cfg.batch, resolution=cfg.resolution,
                                              agc=False, convention="timm")
        sides["jax_no_agc"].run(2)
    workers: dict[str, Worker] = {}
    out["torch"] = {}
    out["jax_setup_s"] = time.perf_counter() - t0
    for mode in cfg.modes:
        w = pool.get(mode)
        limit = compile_limit_s if mode == "compile" else 300.0
        try:
            info = w.ask(timeout=limit, cmd="setup", model=cfg.model, batch=cfg.batch,
                         resolution=cfg.resolution, mode=mode, threads=threads)
            w.ask(timeout=limit, cmd="run", steps=1)
        except (TimeoutError, WorkerError) as e:
            pool.release(mode, w, failed=True)
            out["torch"][mode] = {"error": str(e)}
            log(f"    torch {mode}: not measured ({e})")
            continue
        if info["params"] != out["params"]:
            raise RuntimeError(f"{cfg.model}: torch has {info['params']} parameters, "
                               f"JAX {out['params']}: not the same network")
        out["torch"][mode] = {"first_step_s": info["first_step_s"], "threads": info["threads"]}
        workers[mode] = w
    if parity and "eager" in workers:
        out["parity_max_abs_logits"] = check_parity(workers["eager"], cfg.model)
    times: dict[str, list[float]] = {**{k: [] for k in sides}, **{m: [] for m in workers}}
    rounds: dict[str, list[float]] = {k: [] for k in times}  # per-round sums, for paired ratios
    peaks: list[dict[str, float]] = []
    try:
        for r in range(cfg.rounds):
            if r >= 2 and deadline is not None and time.perf_counter() > deadline:
                log(f"    stopped after {r} rounds: time budget")
                break
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]  # ABBA: no order bias
            for k in order:
                t = sides[k].run(cfg.steps)
                times[k] += t
                rounds[k].append(sum(t))
            for mode, w in workers.items():
                t = w.ask(timeout=600, cmd="run", steps=cfg.steps)["times"]
                times[mode] += t
                rounds[mode].append(sum(t))
            if peak is not None:
                peaks.append(peak.round())
    finally:
        for mode, w in workers.items():
            pool.release(mode, w)
    med = {k: statistics.median(v) for k, v in times.items() if v}

    def paired(a: str, b: str) -> float:
        # Median over rounds of a/b, each pair timed back to back: slow load drift cancels.
        return statistics.median(x / y for x, y in zip(rounds[a], rounds[b]))

    if cfg.agc_off:
        out["agc_overhead"] = paired("jax", "jax_no_agc") - 1
    if cfg.data_wait_steps:
        from bench import data

        out["data_wait"] = data.data_wait(prepared, cfg.data_wait_steps)
    del prepared, sides
    gc.collect()
    out["median_step_s"] = med
    out["images_per_s"] = {k: cfg.batch / v for k, v in med.items()}
    torch_modes = [m for m in workers if m in med]
    if torch_modes:
        best = min(torch_modes, key=lambda m: med[m])
        out["best_torch"] = best
        out["ratio_vs"] = {m: paired(m, "jax") for m in torch_modes}
        out["ratio_vs_torch"] = out["ratio_vs"][best]
    flops = train_flops(cfg.model, cfg.resolution) * cfg.batch
    out["train_gflop_per_step"] = flops / 1e9
    out["jax_gflops"] = flops / med["jax"] / 1e9
    if peaks:
        for kind in ("conv", "matmul"):
            p = statistics.median(r[kind] for r in peaks)
            out[f"peak_{kind}_gflops"] = p / 1e9
            out[f"mfu_{kind}"] = flops / med["jax"] / p
    out["rounds_run"] = len(rounds["jax"])
    out["wall_s"] = time.perf_counter() - t0
    return out


def torch_peak(pool: TorchPool, threads: int) -> dict[str, float]:
    """PyTorch's own matmul / conv FLOP/s on the same threads (for reference)."""
    return pool.get("eager").ask(timeout=120, cmd="peak", threads=threads)


def jax_threads() -> int:
    """Threads XLA:CPU uses for one computation: the cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

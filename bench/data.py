"""Input pipeline speed (grain) against what the train step consumes, and data wait in a run.

- Fashion-MNIST (in memory, the local default's data) and an ImageNet-style JPEG folder (made
  here: 375×500 JPEGs, the ILSVRC median size, decoded with the paper's train augmentation:
  Inception crop, flip, resize) read through :mod:`study.input_pipeline`, images/s alone.
- Data wait: the trainer's loop (``study/engine/train.py``: ``next(iterator)``, the step with the
  batch put on the device, metrics fetched to the host every step) on real Fashion-MNIST
  batches; the fraction of its wall time spent in ``next``. The step is the benchmark's
  already compiled one for the same shapes, so this costs no compilation.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

TMP = Path(__file__).resolve().parent / "tmp"


def _cfg(**kw: Any) -> dict[str, Any]:
    from study import config as config_lib

    return config_lib.resolve(kw)


def pipeline_rate(cfg: dict[str, Any], resolution: int, batches: int, warmup: int = 2) -> dict:
    """Images/s of ``cfg``'s training iterator alone (after ``warmup`` batches)."""
    from study.engine import input_pipeline

    data = input_pipeline.build(cfg, resolution, resolution)
    it = input_pipeline.iterator(data)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    return {"dataset": cfg["dataset"], "batch": cfg["batch_size"], "resolution": resolution,
            "workers": cfg["data_workers"], "batches": batches,
            "images_per_s": batches * cfg["batch_size"] / dt}


def jpeg_folder(root: Path, classes: int = 4, per_class: int = 32) -> Path:
    """An ImageNet-style ``train/<class>/*.JPEG`` tree of 375×500 photos-like JPEGs (cached)."""
    from PIL import Image

    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / "train" / f"n{c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = 375, 500
            base = np.add.outer(np.linspace(0, 200, h), np.linspace(0, 55, w))[..., None]
            img = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=90)
            (d / f"img_{i:04d}.JPEG").write_bytes(buf.getvalue())
    (root / "val").mkdir(exist_ok=True)
    for c in range(classes):  # the pipeline builds an eval split too; one image per class
        src = root / "train" / f"n{c:08d}" / "img_0000.JPEG"
        (root / "val" / f"n{c:08d}").mkdir(exist_ok=True)
        (root / "val" / f"n{c:08d}" / "img_0000.JPEG").write_bytes(src.read_bytes())
    done.touch()
    return root


def fashion_mnist_rate(batch: int, batches: int, resolution: int = 14) -> dict:
    """At the local grids' resolution (14 px, a 2×2 area average of the 28 px images)."""
    return pipeline_rate(_cfg(dataset="fashion_mnist", batch_size=batch, image_size=resolution),
                         resolution, batches)


def jpeg_rate(batch: int, resolution: int, batches: int, workers: int = 0) -> dict:
    root = jpeg_folder(TMP / "jpeg")
    cfg = _cfg(dataset="imagenet", data_dir=str(root), batch_size=batch, data_workers=workers,
               eval_batch_size=4)
    return pipeline_rate(cfg, resolution, batches)


def data_wait(prepared: Any, steps: int, warmup: int = 3) -> dict:
    """The trainer's loop on Fashion-MNIST with ``prepared``'s step (same batch shape)."""
    from study.engine import input_pipeline

    batch, res = prepared.info["batch"], prepared.info["resolution"]
    data = input_pipeline.build(_cfg(dataset="fashion_mnist", batch_size=batch, image_size=res), res, res)
    it = input_pipeline.iterator(data)
    # One device here: the step's own host-to-device put (the trainer's mesh sharding is the
    # same placement, but would recompile the step for a new input sharding).
    sharding = None
    state, wait, total = prepared.state, 0.0, 0.0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        b = next(it)
        t1 = time.perf_counter()
        state, m = prepared.step(state, b, sharding)
        jax.device_get(m)
        if i >= warmup:
            wait += t1 - t0
            total += time.perf_counter() - t0
    prepared.state = state
    return {"dataset": "fashion_mnist", "batch": batch, "steps": steps, "wait_s": wait,
            "loop_s": total, "data_wait_fraction": wait / total,
            "images_per_s": steps * batch / total}

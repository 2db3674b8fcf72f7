"""XLA:CPU flags this project runs with by default: dots (convolutions included) and reductions in YNNPACK.

XLA:CPU's default convolution gradients (the input- and kernel-gradient convolutions) run at a
quarter of its forward convolution's FLOP/s on this project's shapes. With its YNNPACK library
fusions on, the same backward pass reaches the forward's rate: measured on a 2-core AMD EPYC
(BENCHMARKS.md), a 32×28×28×128→128 3×3 conv's forward + both gradients went from 16.6 to
62 GFLOP/s, and the nf-resnet-nano train step at batch 1024 from 657 to 1,769 images/s. Results
are bit-identical from run to run and across thread counts, but not bit-identical to XLA's
default path (float32 rounding), so the flags are recorded in every run's environment.json.

Dots and reductions, not elementwise fusions. YNNPACK's elementwise fusions materialise every
broadcast operand at the activation's full shape (ReLU's zero, BatchNorm's per-channel scale):
with ``dot,eltwise,reduce`` (the default until 2026-12-05) whole train steps ran slower. One
core, forward + backward at batch 256, 14 px: nfnet-nano 116.8 → 72.3 ms, resnet-nano 39.5 →
29.0 ms. Its reduction fusions are what AGC's unit-wise norms and BatchNorm's statistics need:
without them (``dot``, 1b55284 to 98baa8b) they are XLA's slow column reductions. AGC alone on
NF-ResNet-50's gradients: 48.1 ms with ``dot``, 10.6 ms with ``dot,reduce``; the trainer's step
at batch 256 (14 px, one core): nf-resnet-nano 25.0 → 23.1 ms, resnet-nano 30.4 → 25.6 ms.

The flags are set in ``XLA_FLAGS`` when ``study`` is imported, before JAX starts its CPU
backend; they do nothing on GPU or TPU. A user's own setting of the same flag wins, and
``STUDY_XLA_DEFAULTS=0`` turns the defaults off (XLA's stock CPU path).
"""

from __future__ import annotations

import os

CPU_DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": "dot,reduce"}


def apply(environ: dict[str, str] | os._Environ = os.environ) -> str:
    """Adds :data:`CPU_DEFAULTS` to ``environ['XLA_FLAGS']`` where not already set; returns it."""
    flags = environ.get("XLA_FLAGS", "")
    if environ.get("STUDY_XLA_DEFAULTS", "1") != "0":
        extra = [f"--{k}={v}" for k, v in CPU_DEFAULTS.items() if f"--{k}=" not in flags]
        flags = " ".join([flags, *extra]).strip()
        if flags:
            environ["XLA_FLAGS"] = flags
    return flags

"""Multiply-accumulate counting, the way the paper counts FLOPs.

The NFNet paper's "FLOPs" are multiply-accumulates of convolutions and fully-connected layers
(squeeze-excite and classifier included) at the test resolution; biases, activations, pooling and
weight standardisation are not counted (deepmind-research/nfnets `base.count_conv_flops`,
`NFBlock.count_flops`). Layers call :func:`record` from their ``__call__``; the count is only
taken inside :func:`counting`, which runs under ``jax.eval_shape`` so nothing is computed.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_COUNTER: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "study_mac_counter", default=None
)


def record(macs: float) -> None:
    """Adds ``macs`` (per example) to the active counter, if any."""
    box = _COUNTER.get()
    if box is not None:
        box[0] += float(macs)


@contextlib.contextmanager
def counting() -> Iterator[list[float]]:
    """Context in which layers add their MACs to the yielded one-element list."""
    box = [0.0]
    token = _COUNTER.set(box)
    try:
        yield box
    finally:
        _COUNTER.reset(token)

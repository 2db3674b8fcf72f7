"""Helpers shared by the tests (never imported by the package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def corrupt_checkpoint(directory: Path, step: int) -> None:
    """Damages the saved state of ``step`` in a checkpoint directory (the restore fallback's test)."""
    files = [f for f in (directory / str(step) / "state").rglob("*") if f.is_file() and f.stat().st_size > 0]
    assert files, f"no saved state under {directory / str(step)}"
    for f in files:
        f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's TensorBoard event files, read by TensorBoard's own reader
    (orphaned steps of an interrupted attempt purged, as the TensorBoard UI does)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

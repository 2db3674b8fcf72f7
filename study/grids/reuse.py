"""Runs another grid already trained: a run's id is the hash of its resolved config, so the same id
in two grids is the same training run. The agc grid's AGC cell at batch 4096 and λ 0.04 is also a
cell of the λ grid; rather than train it twice, a grid adopts the finished copy before it launches.

An adopted run is copied (without its checkpoints: a finished run never resumes) into the grid's
own directory, so results, report and status read it like any other run, and ``reused.json`` in it
names where it came from. ``study grid run --no-reuse`` trains every run itself.
"""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from study.grids.grid import Grid, Run
from study import runlock
from study.record import RunRecord
from study.status import FINISHED, Status

PROVENANCE = "reused.json"


def finished_copy(run: Run, root: str | Path) -> Path | None:
    """The directory of a finished run with this run's id in another grid at the same scale."""
    for src in sorted(Path(root).glob(f"*/{run.scale}/{run.run_id}")):
        if src.parent.parent.name != run.grid and RunRecord(src).status() in FINISHED:
            return src
    return None


def adopt(grid: Grid, root: str | Path, log: Callable[[str], None] = print) -> list[str]:
    """Copies in every run this grid has not started that another grid finished; returns their ids.

    The copy is assembled beside the target and renamed into place, so an interrupted adoption
    leaves no half-copied run that would read as finished."""
    adopted = []
    for run in grid.runs:
        dest = run.directory(root)
        if run.record(root).status() != Status.MISSING:
            continue
        src = finished_copy(run, root)
        if src is None:
            continue
        tmp = dest.with_name(f".{dest.name}.adopting")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoints", runlock.NAME))
        origin = f"{src.parent.parent.name}/{src.parent.name}/{src.name}"
        (tmp / PROVENANCE).write_text(json.dumps({
            "from": origin,
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}) + "\n")
        tmp.rename(dest)
        adopted.append(run.run_id)
        log(f"  reused    {run.run_id} {run.label} {run.varied} seed={run.config['seed']}: "
            f"trained by {origin}")
    return adopted

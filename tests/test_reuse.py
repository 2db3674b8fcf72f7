"""A grid adopts the runs another grid finished with the same resolved config, instead of training them."""

import json
import shutil
import subprocess
import sys

from study.grids import grid, reuse
from study.status import Status
from tests.test_grid import GOOD, write

# The same base and scale as GOOD: its "nf" cell with AGC is the same run in both grids.
OTHER = (GOOD.replace("name: tiny", "name: other").replace("axes: {agc: [true, false]}", "set: {agc: true}")
         .replace("{model: resnet-nano, agc: false}", "{model: resnet-nano, agc: false, label_smoothing: 0.0}"))
DONE = {"status": "done", "top1": 0.5, "top5": 0.9, "ema_top1": 0.5, "final_loss": 1.0, "steps": 3}


def _finish(run, root, result):
    rec = run.record(root)
    rec.dir.mkdir(parents=True)
    (rec.dir / "checkpoints" / "3").mkdir(parents=True)
    (rec.dir / "metrics.jsonl").write_text('{"step": 3, "loss": 1.0}\n')
    rec.write_result(result)


def test_a_grid_adopts_a_finished_identical_run_and_says_where_it_came_from(tmp_path):
    root = tmp_path / "runs"
    tiny = grid.load(write(tmp_path, GOOD), "smoke")
    other = grid.load(write(tmp_path, OTHER, "other.yaml"), "smoke")
    shared = {r.run_id for r in tiny.runs} & {r.run_id for r in other.runs}
    assert len(shared) == 1 and len(other.runs) == 2  # AGC on: shared; the BN run is not

    nf_agc = next(r for r in tiny.runs if r.run_id in shared)
    _finish(nf_agc, root, DONE)
    said = []
    assert reuse.adopt(other, root, log=said.append) == [nf_agc.run_id]
    copy = next(r for r in other.runs if r.run_id in shared).record(root)
    assert copy.status() == Status.DONE and copy.result()["top1"] == 0.5
    assert (copy.dir / "metrics.jsonl").read_text() == '{"step": 3, "loss": 1.0}\n'
    assert not (copy.dir / "checkpoints").exists()  # a finished run never resumes
    assert json.loads((copy.dir / reuse.PROVENANCE).read_text())["from"] == f"tiny/smoke/{nf_agc.run_id}"
    assert len(said) == 1 and "tiny/smoke" in said[0]
    assert reuse.adopt(other, root, log=said.append) == []  # already there: nothing to do


def test_an_unfinished_run_is_not_adopted_and_no_reuse_trains_it(tmp_path):
    root = tmp_path / "runs"
    tiny = grid.load(write(tmp_path, GOOD), "smoke")
    other_path = write(tmp_path, OTHER.split("  - label: bn")[0] + "seeds" + OTHER.split("seeds")[1],
                       "other.yaml")
    other = grid.load(other_path, "smoke")
    (nf_agc,) = other.runs
    source = next(r for r in tiny.runs if r.run_id == nf_agc.run_id)
    _finish(source, root, {"status": "interrupted", "steps": 2})
    assert reuse.adopt(other, root, log=print) == []
    assert not nf_agc.record(root).dir.exists()

    # Finished, the CLI adopts it and trains nothing; with --no-reuse it trains its own.
    source.record(root).write_result(DONE)
    cmd = [sys.executable, "-m", "study.cli", "grid", "run", str(other_path), "--scale", "smoke",
           "--runs-dir", str(root)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "reused" in r.stdout and "nothing to train" in r.stdout
    assert nf_agc.record(root).status() == Status.DONE
    assert (nf_agc.record(root).dir / reuse.PROVENANCE).exists()

    shutil.rmtree(nf_agc.record(root).dir)
    r = subprocess.run(cmd + ["--no-reuse"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "reused" not in r.stdout and not (nf_agc.record(root).dir / reuse.PROVENANCE).exists()
    assert nf_agc.record(root).status() == Status.DONE and nf_agc.record(root).result()["top1"] != 0.5

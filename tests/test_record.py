"""The run record: the one reader and writer of a run directory (state, guard, metrics,
TensorBoard mirror)."""

import json

import numpy as np
import pytest

from study import config as config_lib
from study.record import MetricsLog, RunRecord
from study.runlock import RunLock
from study.status import Status
from tests.helpers import tensorboard_scalars


def test_status_of_every_kind_of_directory(tmp_path):
    rec = RunRecord(tmp_path / "run")
    assert rec.status() == Status.MISSING and rec.result() == {}
    rec.dir.mkdir()
    assert rec.status() == Status.PENDING
    with RunLock(rec.dir):
        assert rec.status() == Status.RUNNING  # no result yet, but a live trainer holds the lock
        rec.write_result({"status": "running", "steps": 3})
        assert rec.status() == Status.RUNNING
    assert rec.status() == Status.INTERRUPTED  # its process is gone
    rec.write_result({"status": "done", "top1": 0.5})
    assert rec.status() == Status.INCOMPLETE  # done without every final metric
    rec.write_result({"status": "done", "top1": 0.5, "top5": 0.9, "ema_top1": 0.5, "final_loss": 1.0})
    assert rec.status() == Status.DONE and rec.finished()
    (rec.dir / "result.json").write_text("{not json")
    assert rec.status() == Status.FAILED and rec.result() == {}


def test_begin_refuses_another_config_and_returns_a_finished_result(tmp_path):
    cfg = config_lib.resolve({"dataset": "synthetic", "steps": 3})
    rec = RunRecord(tmp_path)
    assert rec.begin(cfg) is None
    rec.write_config(cfg)
    assert rec.begin(cfg) is None  # same config, not finished: resume
    with pytest.raises(config_lib.ConfigError, match="holds a run with a different config"):
        rec.begin({**cfg, "steps": 4})
    done = {"status": "done", "top1": 0.5, "top5": 0.9, "ema_top1": 0.5, "final_loss": 1.0}
    rec.write_result(done)
    assert rec.begin(cfg) == done
    rec.write_result({"status": "diverged", "top1": None})
    assert rec.begin(cfg)["status"] == "diverged"  # a result too: never retrained


def test_a_read_only_record_writes_nothing(tmp_path):
    rec = RunRecord(tmp_path, writable=False)  # every process but the first of a multi-process run
    rec.write_config({"a": 1})
    rec.write_result({"status": "running"})
    log = rec.metrics_log(None)
    log.write({"step": 1, "kind": "train", "loss": 1.0})
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_metrics_resume_drops_later_rows_in_the_log_and_in_tensorboard(tmp_path):
    rec = RunRecord(tmp_path)
    log = rec.metrics_log(None)
    for s in range(1, 9):  # an attempt that got to step 8, last checkpoint at 5
        log.write({"step": s, "epoch": s / 4, "kind": "train", "loss": 10.0 + s, "finite": True})
    log.write({"step": 4, "kind": "eval", "top1": 0.25})
    log.close()
    log = rec.metrics_log(5)
    for s in range(6, 11):
        log.write({"step": s, "epoch": s / 4, "kind": "train", "loss": 20.0 + s})
    log.close()
    rows = rec.metrics()
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 11))
    assert [r["loss"] for r in rows if r["kind"] == "train"][4:6] == [15.0, 26.0]
    tb = tensorboard_scalars(tmp_path)
    assert tb["train/loss"] == [(s, 10.0 + s) for s in range(1, 6)] + [(s, 20.0 + s) for s in range(6, 11)]
    assert tb["eval/top1"] == [(4, 0.25)] and "train/finite" not in tb  # bools are not scalars
    # A fresh start (no resume) leaves no stale curves behind.
    log = rec.metrics_log(None)
    log.write({"step": 1, "kind": "train", "loss": 1.0})
    log.close()
    assert tensorboard_scalars(tmp_path)["train/loss"] == [(1, 1.0)]


def test_metrics_skip_a_line_cut_by_a_crash(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "kind": "train", "loss": 1.0}) + '\n{"step": 2, "ki')
    assert RunRecord(tmp_path).metrics() == [{"step": 1, "kind": "train", "loss": 1.0}]


def test_log_write_is_json_for_numpy_values(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", None)
    log.write({"step": 1, "kind": "train", "loss": np.float32(0.5)})
    log.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 0.5


def test_top1_tail_gain_is_the_rise_over_the_last_quarter(tmp_path):
    rec = RunRecord(tmp_path / "r")
    rec.dir.mkdir()
    assert rec.top1_tail_gain() is None  # no evaluations
    rows = [{"kind": "eval", "step": s, "top1": t} for s, t in
            [(100, 0.50), (200, 0.70), (301, 0.80), (401, 0.83)]]
    rows += [{"kind": "train", "step": s, "loss": 1.0 / s} for s in range(1, 401, 10)]
    (rec.dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # 3/4 of the run is step 300.75, between the evaluations at 200 and 301: interpolated
    assert rec.top1_tail_gain() == pytest.approx(0.83 - (0.70 + 0.10 * 100.75 / 101))
    # one evaluation per epoch of 3 epochs: the last quarter, not the last third (0.02)
    rows = [{"kind": "eval", "step": s, "top1": t} for s, t in [(234, 0.80), (468, 0.85), (703, 0.87)]]
    (rec.dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert rec.top1_tail_gain() == pytest.approx(0.87 - (0.85 + 0.02 * (527.25 - 468) / 235))
    # nothing at or before 3/4: the last quarter is not measured
    (rec.dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows[-1:] * 1 + [
        {"kind": "eval", "step": 600, "top1": 0.86}]) + "\n")
    assert rec.top1_tail_gain() is None
    (rec.dir / "metrics.jsonl").write_text(json.dumps(rows[-1]) + "\n")
    assert rec.top1_tail_gain() is None  # a single evaluation has nothing to compare with

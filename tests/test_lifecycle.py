"""A run's life and death: no silent death, one writer per run, a launcher that leaves no orphan.

Every wait here is on a condition (a checkpoint on disk, a pid gone), never a fixed sleep.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from study.grids import grid
from study.record import RunRecord
from study.status import BUSY_EXIT, Status
from tests.test_train import SMOKE, rows, study

LONG = ["dataset=synthetic", "synthetic_size=512", "batch_size=32", "log_every=1",
        "eval_every=100", "checkpoint_every=5", "steps=400"]
GRID = """name: life
base: {dataset: synthetic, synthetic_size: 512, batch_size: 32, log_every: 1, eval_every: 100,
       checkpoint_every: 5, steps: 400, eval_batch_size: 128}
blocks:
  - label: nf
seeds: [0]
scales:
  smoke: {}
"""


def train_args(workdir, sets):
    args = [sys.executable, "-m", "study.cli", "train", "--workdir", str(workdir)]
    for s in sets:
        args += ["--set", s]
    return args


def wait_for(cond, timeout=180, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def checkpointed(d):
    return lambda: any(p.name.isdigit() for p in (Path(d) / "checkpoints").glob("*"))


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is not alive.
    return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"


def result(d):
    return json.loads((Path(d) / "result.json").read_text())


def sig_ignored(pid, sig):
    line = [l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("SigIgn")][0]
    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)


def test_trainer_outlives_its_reader_and_ignores_sigpipe(tmp_path):
    """CI's -13 deaths: the CLI reset SIGPIPE to its default for `train`, so an EPIPE on any
    pipe or socket killed the trainer. Reproduced without the fix: 1 of 3 runs saving a
    checkpoint every step died of SIGPIPE inside orbax's save, stdout and stderr being files.
    Here the trainer's only reader goes away after 200 bytes (`| head -c 200`), and it must
    still finish with every metric."""
    d = tmp_path / "run"
    p = subprocess.Popen(train_args(d, SMOKE[:-2] + ["steps=60", "checkpoint_every=1"]),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert len(p.stdout.read(200)) == 200
    assert sig_ignored(p.pid, signal.SIGPIPE)  # the condition the deaths needed, gone
    p.stdout.close()  # the reader leaves; the trainer writes a log line per step after this
    assert p.wait(timeout=300) == 0
    assert result(d)["status"] == "done" and result(d)["top1"] is not None
    assert [r["step"] for r in rows(d)] == list(range(1, 61))


def test_listing_into_a_closed_pipe_ends_quietly(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID)
    p = subprocess.Popen([sys.executable, "-m", "study.cli", "grid", "status", str(path), "--scale",
                          "smoke", "--runs-dir", str(tmp_path / "runs")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()  # `| head` that has already gone
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err, err


def test_an_exception_is_recorded_with_its_step_and_checkpoint(tmp_path):
    d = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys
        from study import cli
        from study.engine import train
        real = train.evaluate
        def evaluate(*a, **k):
            raise RuntimeError("boom in eval")
        train.evaluate = evaluate
        sys.exit(cli.main({train_args(d, SMOKE)[3:]!r}))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "boom in eval" in r.stderr
    res = result(d)
    assert res["status"] == "failed" and res["error"] == "RuntimeError: boom in eval"
    assert res["steps"] == 10 and res["last_checkpoint"] == 5 and res["total_steps"] == 24
    assert RunRecord(d).status() == Status.FAILED


def test_a_killed_run_is_interrupted_not_running_and_one_writer_per_run(tmp_path):
    d = tmp_path / "run"
    first = subprocess.Popen(train_args(d, LONG), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(checkpointed(d), what="a checkpoint")
    assert RunRecord(d).status() == Status.RUNNING and result(d)["pid"] == first.pid
    # A second trainer on the same directory writes nothing and says why.
    before = (d / "metrics.jsonl").read_text()
    second = study(d, *LONG, check=False, timeout=300)
    assert second.returncode == BUSY_EXIT and "another process is training" in second.stderr
    assert (d / "metrics.jsonl").read_text().startswith(before)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert result(d)["status"] == "running"  # what it last wrote ...
    assert RunRecord(d).status() == Status.INTERRUPTED  # ... but its lock died with it


def launcher(path, runs, *extra):
    return subprocess.Popen([sys.executable, "-m", "study.cli", "grid", "run", str(path), "--scale",
                             "smoke", "--runs-dir", str(runs), "--jobs", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("retries", [1, 0])
def test_launcher_resumes_a_run_killed_by_a_signal_and_says_so(tmp_path, retries):
    path = tmp_path / "g.yaml"
    path.write_text(GRID)
    run = grid.load(path, "smoke").runs[0]
    d = run.directory(tmp_path / "runs")
    p = launcher(path, tmp_path / "runs", "--retries", str(retries))
    wait_for(checkpointed(d), what="a checkpoint")
    wait_for(lambda: (d / "result.json").exists() and result(d).get("pid"), what="the trainer's pid")
    os.kill(result(d)["pid"], signal.SIGKILL)  # what the OOM killer does
    out, err = p.communicate(timeout=600)
    if retries:
        assert p.returncode == 0, err
        assert f"retry     {run.run_id} died of SIGKILL; resuming from step" in out
        assert result(d)["status"] == "done"
        assert json.loads((d / "environment.json").read_text())["resumed_from_step"] >= 5
    else:
        assert p.returncode == 1 and f"1 run(s) failed: {run.run_id}" in err
        res = result(d)
        assert res["status"] == "failed" and res["error"] == "SIGKILL" and res["returncode"] == -9
        assert res["last_checkpoint"] >= 5 and res["steps"] >= res["last_checkpoint"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_stopping_the_launcher_stops_and_checkpoints_its_runs(tmp_path, sig):
    path = tmp_path / "g.yaml"
    path.write_text(GRID)
    d = grid.load(path, "smoke").runs[0].directory(tmp_path / "runs")
    p = launcher(path, tmp_path / "runs")
    wait_for(checkpointed(d), what="a checkpoint")
    wait_for(lambda: result(d).get("pid"), what="the trainer's pid")
    child = result(d)["pid"]
    p.send_signal(sig)  # SIGKILL: the trainer learns it through PR_SET_PDEATHSIG
    p.wait(timeout=120)
    wait_for(lambda: not alive(child), timeout=120, what="the trainer to stop")
    res = result(d)
    assert res["status"] == "interrupted" and res["error"] == "SIGTERM", res
    assert res["last_checkpoint"] == res["steps"] < 400
    if sig != signal.SIGKILL:
        assert p.returncode == 130


def test_two_launchers_on_one_grid_train_each_run_once(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID.replace("steps: 400", "steps: 30").replace("seeds: [0]", "seeds: [0, 1]"))
    g = grid.load(path, "smoke")
    a, b = launcher(path, tmp_path / "runs"), launcher(path, tmp_path / "runs")
    outs = [p.communicate(timeout=600) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    for r in g.runs:
        d = r.directory(tmp_path / "runs")
        assert result(d)["status"] == "done"
        assert [row["step"] for row in rows(d)] == list(range(1, 31))  # one writer, no repeats
        assert json.loads((d / "environment.json").read_text())["resumed_from_step"] is None


FINAL_KEYS = ("status", "steps", "total_steps", "top1", "top5", "ema_top1", "final_loss")


def test_killed_right_after_the_final_checkpoint_resumes_to_the_full_result(tmp_path):
    """Issue 16: SIGKILL between the final checkpoint and the final result.json (a hook at that
    exact point, no sleep). The relaunch must end as the uninterrupted run did."""
    study(tmp_path / "a", *SMOKE)
    d = tmp_path / "b"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from study.engine import checkpoint
        from study import cli
        real = checkpoint.Checkpointer.save
        def save(self, step, *a, **k):
            real(self, step, *a, **k)
            if step == 24:
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.Checkpointer.save = save
        sys.exit(cli.main({train_args(d, SMOKE)[3:]!r}))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert result(d)["status"] == "running" and RunRecord(d).status() == Status.INTERRUPTED
    study(d, *SMOKE)
    a, b = result(tmp_path / "a"), result(d)
    assert {k: b[k] for k in FINAL_KEYS} == {k: a[k] for k in FINAL_KEYS}
    assert b["top1"] is not None and b["final_loss"] is not None
    assert rows(tmp_path / "a") == rows(d) and rows(tmp_path / "a", "eval") == rows(d, "eval")


def test_done_without_metrics_is_an_error_naming_the_run(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID.replace("steps: 400", "steps: 6"))
    run = grid.load(path, "smoke").runs[0]
    runs = tmp_path / "runs"
    p = launcher(path, runs)
    assert p.wait(timeout=300) == 0
    d = run.directory(runs)
    good = result(d)
    (d / "result.json").write_text(json.dumps({"status": "done", "steps": 6, "top1": None}))
    r = subprocess.run([sys.executable, "-m", "study.cli", "grid", "status", str(path), "--scale",
                        "smoke", "--runs-dir", str(runs)], capture_output=True, text=True)
    assert r.returncode == 1 and run.run_id in r.stderr and "without its final metrics" in r.stderr
    assert "incomplete" in r.stdout
    from study.analysis import results

    assert results.table(grid.load(path, "smoke"), runs)["status"].tolist() == ["incomplete"]
    # A relaunch re-evaluates from the final checkpoint and writes the full result.
    p = launcher(path, runs)
    assert p.wait(timeout=300) == 0
    assert {k: result(d)[k] for k in FINAL_KEYS} == {k: good[k] for k in FINAL_KEYS}


def test_a_death_between_checkpoint_and_result_write_records_the_checkpointed_step(tmp_path):
    # The race CI hit: SIGKILL after orbax committed step 5 but before result.json said so.
    from study.grids.launch import _settle

    path = tmp_path / "g.yaml"
    path.write_text(GRID)
    run = grid.load(path, "smoke").runs[0]
    d = run.directory(tmp_path / "runs")
    (d / "checkpoints" / "5").mkdir(parents=True)
    rec = RunRecord(d)
    rec.write_result({"status": "running", "steps": 0, "total_steps": 400, "last_checkpoint": None})
    assert _settle(run, tmp_path / "runs", -signal.SIGKILL) == Status.FAILED
    res = result(d)
    assert res["error"] == "SIGKILL" and res["steps"] == 5 and res["last_checkpoint"] == 5

"""Grid files: expansion, identity, malformed files, idempotent local launch, results table."""

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from study.grids import grid

GOOD = """# A tiny grid.
# Launch: study grid run THIS --scale smoke
name: tiny
base: {dataset: synthetic, synthetic_size: 256, steps: 3, batch_size: 16, log_every: 1,
       eval_batch_size: 64}
blocks:
  - label: nf
    axes: {agc: [true, false]}
  - label: bn
    set: {model: resnet-nano, agc: false}
seeds: [0]
scales:
  smoke: {}
  local: {base: {steps: 5}}
"""


def write(tmp_path, text, name="g.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_expansion_identity_and_scales(tmp_path):
    g = grid.load(write(tmp_path, GOOD), "smoke")
    assert [r.label for r in g.runs] == ["nf", "nf", "bn"]
    assert g.header.startswith("A tiny grid.")
    ids = [r.run_id for r in g.runs]
    assert len(set(ids)) == 3
    assert grid.load(write(tmp_path, GOOD), "smoke").runs[0].run_id == ids[0]  # stable hash
    assert grid.load(write(tmp_path, GOOD), "local").runs[0].run_id != ids[0]
    assert g.runs[0].directory("R") == Path("R/tiny/smoke") / ids[0]


def test_zip_product_seeds_and_paper_agc_grid():
    g = grid.load("ablations/agc.yaml", "local")
    assert len(g.runs) == 27  # 3 batch sizes × (AGC, no AGC, BN) × 3 seeds
    nf = [r for r in g.runs if r.label == "nf-resnet"]
    assert {(r.config["batch_size"], r.config["accum_steps"]) for r in nf} == {(256, 1), (1024, 4), (4096, 16)}
    assert {r.config["agc"] for r in nf} == {True, False}
    assert {r.config["seed"] for r in g.runs} == {0, 1, 2}
    assert all(r.config["image_size"] == 14 and r.config["epochs"] == 20
               and r.config["warmup_epochs"] == 5 for r in g.runs)
    assert all(r.config["model"] == "resnet-nano" and r.config["model_overrides"]["zero_init_residual"]
               for r in g.runs if r.label == "bn-resnet")
    paper = grid.load("ablations/agc.yaml", "paper")  # expands without the cluster's data
    assert {r.config["model"] for r in paper.runs} == {"nf-resnet-50", "resnet-50"}


def test_block_seeds_and_the_step_budget(tmp_path):
    text = GOOD.replace("    set: {model: resnet-nano, agc: false}",
                        "    set: {model: resnet-nano, agc: false}\n    seeds: [0, 1, 2]")
    g = grid.load(write(tmp_path, text), "smoke")
    assert [(r.label, r.config["seed"]) for r in g.runs] == [("nf", 0), ("nf", 0), ("bn", 0), ("bn", 1), ("bn", 2)]
    # budget: steps gives every batch size the smallest batch's optimizer and warmup steps.
    epochs = """name: b
base: {dataset: fashion_mnist, epochs: 2, warmup_epochs: 0.5, image_size: 14}
blocks:
  - label: nf
    zip: [{batch_size: [256, 1024], accum_steps: [1, 4]}]
seeds: [0]
scales: {local: {}}
"""
    by_epochs = grid.load(write(tmp_path, epochs), "local", check_paths=False)
    assert [r.config["steps"] for r in by_epochs.runs] == [0, 0]  # 469 and 118 steps, from the epochs
    by_steps = grid.load(write(tmp_path, epochs + "budget: steps\n"), "local", check_paths=False)
    cfgs = [r.config for r in by_steps.runs]
    assert [c["steps"] for c in cfgs] == [469, 469]  # ceil(2 · 60000 / 256)
    from study.engine.optim import schedule

    warm = [int(round(c["warmup_epochs"] * 60000 / c["batch_size"])) for c in cfgs]
    assert warm == [117, 117]  # half an epoch at batch 256, for both
    lr = schedule(cfgs[1], 60000 / 1024, 469)
    assert float(lr(117)) == pytest.approx(0.4) and float(lr(50)) < 0.4  # peak 0.1 · 1024/256 after warmup
    with pytest.raises(grid.GridError, match="budget: unknown 'images'"):
        grid.load(write(tmp_path, epochs + "budget: images\n"), "local", check_paths=False)


def test_the_launcher_starts_the_longest_runs_first(tmp_path):
    from study.grids import launch

    text = GOOD.replace("  - label: bn\n    set: {model: resnet-nano, agc: false}",
                        "  - label: long\n    set: {agc: false, steps: 30}")
    g = grid.load(write(tmp_path, text), "smoke")
    todo, _ = launch._triage(g, tmp_path / "runs", print)
    assert todo[0].label == "long" and [r.label for r in todo[1:]] == ["nf", "nf"]
    # Seeds share a compiled step, nothing else does (λ, lr, AGC are constants of the trace):
    # the first seed of every cell starts before any second seed.
    seeds = GOOD.replace("seeds: [0]", "seeds: [0, 1]")
    g = grid.load(write(tmp_path, seeds), "smoke")
    todo, _ = launch._triage(g, tmp_path / "runs", print)
    keys = [launch.compile_key(r.config) for r in todo]
    assert len(set(keys)) == 3 and len(set(keys[:3])) == 3
    assert [r.config["seed"] for r in todo] == [0, 0, 0, 1, 1, 1]



def test_the_launcher_ends_on_the_runs_its_first_seeds_showed_short(tmp_path):
    """Seeds of a shape take as long as its first run: once that has run, the next start is the
    longest measured shape (a BN step is slower than the NF one, a diverging cell stops in seconds),
    after any shape not yet started and any still in flight."""
    from study.grids import launch

    seeds = GOOD.replace("seeds: [0]", "seeds: [0, 1]")
    g = grid.load(write(tmp_path, seeds), "smoke")
    queue, _ = launch._triage(g, tmp_path / "runs", print)
    k = [launch.compile_key(r.config) for r in queue]
    assert launch.pick(queue, set(), {}) == 0  # nothing started: order()'s order
    assert launch.pick(queue, {k[0]}, {}) == 1  # the next shape not yet started
    rest = queue[3:]  # the three second seeds
    started = set(k)
    assert launch.pick(rest, started, {k[0]: 50.0, k[1]: 90.0}) == 2  # its first run is in flight
    assert launch.pick(rest, started, {k[0]: 50.0, k[1]: 90.0, k[2]: 3.0}) == 1  # the longest
    assert launch.pick(rest, started, {k[0]: 90.0, k[1]: 90.0, k[2]: 3.0}) == 0  # ties: file order
    assert launch.pick(rest[2:], started, {k[0]: 1.0, k[1]: 1.0, k[2]: 3.0}) == 0
    # A relaunch knows the shapes an earlier launch finished: their seeds wait behind new shapes.
    root = tmp_path / "runs"
    first = queue[0].record(root)
    first.dir.mkdir(parents=True)
    first.write_result({"status": "diverged", "steps": 4, "step_time_ms": 250.0})
    assert launch.measured_on_disk(g, root) == {k[0]: 1.0}


MALFORMED = [
    ("nmae: x\n", "nmae"),
    (GOOD.replace("name: tiny", "name: [1]"), "name"),
    (GOOD.replace("axes: {agc: [true, false]}", "axes: {agc: []}"), "agc: empty axis"),
    (GOOD.replace("axes: {agc: [true, false]}", "axes: {agc: true}"), "agc"),
    (GOOD.replace("axes: {agc: [true, false]}", "axes: {agc_clipping: [0.01, -0.02]}"), "agc_clipping"),
    (GOOD.replace("axes: {agc: [true, false]}", "axes: {agc_clipping: [0.0]}"), "agc_clipping"),
    (GOOD.replace("axes: {agc: [true, false]}", "axes: {lr: [0.1]}"), "lr"),
    (GOOD.replace("model: resnet-nano", "model: resnet-9000"), "model"),
    (GOOD.replace("model: resnet-nano", "model.se_ratoi: 0"), "model.se_ratoi"),
    (GOOD.replace("batch_size: 16", "batch_size: sixteen"), "batch_size"),
    (GOOD.replace("batch_size: 16", "batch_size: 16, accum_steps: 3"), "batch_size"),
    (GOOD.replace("seeds: [0]", "seeds: []"), "seeds"),
    (GOOD.replace("seeds: [0]", "seeds: [0, 0]"), "seeds"),
    (GOOD.replace("seeds: [0]", "seeds: [a]"), "seeds"),
    (GOOD.replace("  smoke: {}", "  smoky: {}"), "scales.smoky"),
    (GOOD.replace("  smoke: {}", "  smoke: {bsae: {}}"), "scales.smoke.bsae"),
    (GOOD.replace("  - label: nf\n", "  - lable: nf\n"), "lable"),
    (GOOD.replace("blocks:", "blocks: []\nunused:"), "unused"),
    (GOOD.replace("seeds: [0]", "seeds: [0]\naggregate: {best: 3}"), "aggregate.best"),
    (GOOD + "  paper: {base: {dataset: imagenett}}\n", None),  # only an error at the paper scale
    ("name: t\nbase: [1, 2]\n", "base"),
    ("{{{", "not valid YAML"),
    (GOOD.replace("axes: {agc: [true, false]}", "zip: [{agc: [true, false], seed: [1]}]"), "differ in length"),
    (GOOD.replace("epochs", "x").replace("steps: 3", "steps: -3"), "steps"),
    (GOOD.replace("axes: {agc: [true, false]}", "axes: {task: [latency, benchmark]}"), "task"),
    # Issue 12: a repeated key anywhere (flow or block style, any level), negative seeds, warmup
    # longer than training, grids over the size limit.
    (GOOD.replace("steps: 3,", "epochs: 2, steps: 3, epochs: 3,"), "epochs: duplicate key"),
    (GOOD + "name: tiny2\n", "name: duplicate key (lines 3 and 15)"),
    (GOOD.replace("  - label: nf\n", "  - label: nf\n    label: nf2\n"), "label: duplicate key"),
    (GOOD.replace("local: {base: {steps: 5}}", "local: {base: {steps: 5, steps: 6}}"), "steps: duplicate key"),
    (GOOD.replace("seeds: [0]", "seeds: [-1]"), "seeds: must be >= 0"),
    (GOOD.replace("seeds: [0]", "seeds: [0, 1, -7]"), "seeds: must be >= 0, got -7"),
    (GOOD.replace("steps: 3,", "epochs: 2, warmup_epochs: 50,"), "warmup_epochs"),
    (GOOD.replace("seeds: [0]", "seeds: [" + ", ".join(map(str, range(20_000))) + "]"),
     "grid size: 60,000 runs exceeds the limit of 10,000"),
    (GOOD.replace("axes: {agc: [true, false]}", "axes: {" + ", ".join(
        f"{k}: [{', '.join(str(0.01 * (i + 1)) for i in range(20))}]"
        for k in ("agc_clipping", "base_lr", "weight_decay", "label_smoothing", "agc_eps")) + "}"),
     "grid size: 3,200,001 runs"),
    # The report block's shape (the names in it are checked by the report, which owns them).
    (GOOD + "report: {figure: x}\n", "report.figure: expected a mapping"),
    (GOOD + "report: {figure: {draw: figure2a, title: T}}\n", "report.figure.caption"),
    (GOOD + "report: {claims: agc_stable_at_largest_batch}\n", "report.claims"),
    (GOOD + "report: {claims: [a, a]}\n", "report.claims: repeated claim"),
    (GOOD + "report: {order: first}\n", "report.order"),
    (GOOD + "report: {sections: x}\n", "report.sections: unknown key"),
]


@pytest.mark.parametrize("text, key", MALFORMED)
def test_malformed_grid_is_a_one_line_error_naming_the_key(tmp_path, text, key):
    path = write(tmp_path, text)
    if key is None:
        with pytest.raises(grid.GridError, match="dataset"):
            grid.load(path, "paper")
        return
    r = subprocess.run([sys.executable, "-m", "study.cli", "grid", "run", str(path), "--scale",
                        "smoke", "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()  # nothing launched


RUN_IDS = Path(__file__).resolve().parent / "fixtures" / "run_ids.json"


def test_run_ids_of_every_shipped_grid_are_pinned():
    """A run's id is the hash of its resolved config: refactors must not change it, or every
    run already on disk would be trained again. Update the pin only with a deliberate change to
    a grid or to the config's keys or defaults."""
    pinned = json.loads(RUN_IDS.read_text())
    got = {}
    for key in pinned:
        name, scale = key.split("/")
        got[key] = [r.run_id for r in grid.load(f"ablations/{name}.yaml", scale, check_paths=False).runs]
    assert got == pinned


def test_malformed_cases_cover_issue_12():
    assert len(MALFORMED) >= 30


def test_max_runs_limit_is_overridable(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(grid.GridError, match="grid size: 3 runs exceeds the limit of 2"):
        grid.load(path, "smoke", max_runs=2)
    assert len(grid.load(path, "smoke", max_runs=3).runs) == 3
    r = subprocess.run([sys.executable, "-m", "study.cli", "grid", "show", str(path), "--scale",
                        "smoke", "--max-runs", "2"], capture_output=True, text=True)
    assert r.returncode == 2 and "--max-runs" in r.stderr


def test_duplicate_keys_in_a_config_file_and_a_profile(tmp_path):
    from study import config as config_lib
    from study.grids import slurm

    cfg = write(tmp_path, "steps: 3\nseed: 1\nsteps: 4\n", "c.yaml")
    with pytest.raises(config_lib.ConfigError, match="steps: duplicate key"):
        config_lib.load_file(cfg)
    prof = write(tmp_path, "partition: debug\ntimeout_min: 5\npartition: gpu\n", "p.yaml")
    with pytest.raises(slurm.ProfileError, match="partition: duplicate key"):
        slurm.load_profile(prof)
    with pytest.raises(config_lib.ConfigError, match="seed: must be >= 0"):
        config_lib.resolve({"seed": -1})


def test_unknown_scale_and_missing_file(tmp_path):
    with pytest.raises(grid.GridError, match="scale"):
        grid.load(write(tmp_path, GOOD), "huge")
    with pytest.raises(grid.GridError, match="no such grid file"):
        grid.load(tmp_path / "none.yaml", "smoke")
    with pytest.raises(grid.GridError, match="scales.paper"):
        grid.load(write(tmp_path, GOOD), "paper")


def test_local_launch_is_idempotent_and_results_table(tmp_path):
    path = write(tmp_path, GOOD)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "study.cli", "grid", "run", str(path), "--scale", "smoke",
           "--runs-dir", str(runs)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 done" in r.stdout
    # One progress line per finished run for the whole grid (a log file gets lines, not a bar).
    assert re.search(r"\[1/3\] 1 done; [0-2] running; elapsed [\d.]+ min, ETA [\d.]+ min", r.stdout), r.stdout
    assert "[3/3] 3 done; 0 running" in r.stdout
    launches = [json.loads(l) for l in (runs / "tiny" / "smoke" / "launches.jsonl").read_text().splitlines()]
    assert len(launches) == 1 and launches[0]["trained"] == 3 and launches[0]["wall_s"] > 0
    assert 0 < launches[0]["cpu_utilisation"] <= 1.05 and launches[0]["outcomes"] == {"done": 3}
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert "nothing to train" in r.stdout
    r = subprocess.run([sys.executable, "-m", "study.cli", "results", str(path), "--scale", "smoke",
                        "--runs-dir", str(runs)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_parquet(runs / "tiny" / "smoke" / "results.parquet")
    assert len(df) == 3 and set(df["status"]) == {"done"}
    assert {"cfg.agc", "cfg.model", "top1", "params", "macs", "device_kind", "commit"} <= set(df.columns)
    assert pd.read_csv(runs / "tiny" / "smoke" / "results.csv").shape[0] == 3
    g = grid.load(path, "smoke")
    result = json.loads((g.runs[0].directory(runs) / "result.json").read_text())
    assert df.loc[df.run_id == g.runs[0].run_id, "top1"].item() == result["top1"]
    # Concurrent runs are pinned to disjoint shares of the cores, and say so in their metadata.
    envs = [json.loads((r.directory(runs) / "environment.json").read_text()) for r in g.runs]
    jobs, cores = launches[0]["jobs"], launches[0]["cores"]
    assert all(len(e["cpu_affinity"]) == (cores // jobs if jobs > 1 else cores) for e in envs)
    assert all("xla_cpu_experimental_ynn_fusion_type" in e["xla_flags"] for e in envs)


def test_core_slots_are_disjoint_shares(monkeypatch):
    from study.grids import launch

    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    slots = launch.core_slots(2)
    assert slots == [{0, 1}, {2, 3}]
    assert launch.core_slots(1) is None
    assert [len(s) for s in launch.core_slots(8)] == [1] * 8  # more runs than cores: shared


@pytest.mark.parametrize("name", ["agc", "agc-lambda", "agc-layers", "depth", "width", "variants"])
@pytest.mark.parametrize("scale", ["smoke", "local", "paper"])
def test_shipped_grids_expand_at_every_scale(name, scale):
    g = grid.load(f"ablations/{name}.yaml", scale)
    assert g.runs and g.header and "Launch:" in g.header and "Paper:" in g.header
    assert len({r.run_id for r in g.runs}) == len(g.runs)


@pytest.mark.parametrize("text, key", [
    ("partition: debug\ntimeout_min: 10\ngpus: 2\n", "gpus"),
    ("partition: debug\ntimeout_min: ten\n", "timeout_min"),
    ("timeout_min: 10\n", "partition"),
    ("partition: debug\ntimeout_min: 10\nnodes: -1\n", "nodes"),
    ("[1, 2]\n", "mapping"),
])
def test_bad_slurm_profile_is_a_one_line_error(tmp_path, text, key):
    prof = write(tmp_path, text, "p.yaml")
    gfile = write(tmp_path, GOOD)
    r = subprocess.run([sys.executable, "-m", "study.cli", "grid", "run", str(gfile), "--scale", "smoke",
                        "--backend", "slurm", "--profile", str(prof), "--runs-dir", str(tmp_path / "runs")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and key in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


def test_shipped_profiles_load():
    from study.grids import slurm

    for p in ("slurm/local.yaml", "slurm/gpu.yaml", "slurm/tpu.yaml"):
        assert slurm.load_profile(p)["partition"]


def test_grid_progress_counts_and_eta():
    from study.grids.progress import GridProgress

    lines = []
    p = GridProgress(4, "g/smoke", lines.append, tty=False)
    p.start()
    p.start()
    p.end("done")
    assert p.running == 1 and p.eta_s() is not None and lines[-1].startswith("  [1/4] 1 done; 1 running")
    p.start()
    p.end("diverged")
    p.end("failed")
    assert lines[-1].startswith("  [3/4] 1 diverged, 1 done, 1 failed; 0 running")
    p.say("a launcher line")
    assert lines[-1] == "a launcher line"
    p.stop()


def test_slurm_array_task_ids_are_expanded():
    from study.grids import slurm

    assert slurm._task_ids("12", "0-3%2") == ["12_0", "12_1", "12_2", "12_3"]
    assert slurm._task_ids("12", "1,4") == ["12_1", "12_4"]
    assert slurm._task_ids("12", "5") == ["12_5"]
    assert slurm.job_states([]) == {}


def test_a_scale_overrides_aggregate(tmp_path):
    """depth.yaml asks for the paper's best 4 of 5 seeds; its one-seed smoke scale turns it off."""
    text = (GOOD.replace("seeds: [0]", "seeds: [0, 1, 2, 3, 4]\naggregate: {best: 4}")
            .replace("  smoke: {}", "  smoke: {seeds: [0], aggregate: {}}"))
    path = write(tmp_path, text)
    assert grid.load(path, "local").aggregate.get("best") == 4
    assert not grid.load(path, "smoke").aggregate.get("best")
    with pytest.raises(grid.GridError, match="aggregate.best"):
        grid.load(write(tmp_path, text.replace("aggregate: {}", "aggregate: {best: 2}")), "smoke")


def test_a_scale_states_its_runs_memory_and_the_local_launch_fits_it(tmp_path, monkeypatch):
    """variants' F6 and F7 each compile in 11-14 GB: two at once were killed for memory on a 23.5 GB
    machine. A scale's ``mem_gb`` caps the parallel local runs by the available memory."""
    from study.grids import launch

    text = GOOD.replace("  local: {base: {steps: 5}}", "  local: {base: {steps: 5}, mem_gb: 16}")
    path = write(tmp_path, text)
    assert grid.load(path, "local").mem_gb == 16 and grid.load(path, "smoke").mem_gb is None
    monkeypatch.setattr(launch, "_cores", lambda: 2)
    monkeypatch.setattr(launch, "available_gb", lambda: 21.0)
    assert launch.parallelism(5) == 2 and launch.parallelism(5, 16) == 1
    class Launched(Exception):
        pass

    def pool(todo, root, jobs, *_):  # stands in for the pool: records how many runs at once
        raise Launched(jobs)

    monkeypatch.setattr(launch, "_Pool", pool)
    with pytest.raises(Launched) as launched:
        launch.run_local(grid.load(path, "local"), tmp_path / "runs", log=lambda *_: None)
    assert launched.value.args == (1,)
    for bad in ("0", "-2", "true", "lots"):
        with pytest.raises(grid.GridError, match="scales.local.mem_gb"):
            grid.load(write(tmp_path, text.replace("mem_gb: 16", f"mem_gb: {bad}")), "local")


def test_available_memory_counts_the_page_cache_the_kernel_can_drop(tmp_path):
    from study.grids import launch

    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       24684544 kB\nMemFree:        17408000 kB\n"
                    "MemAvailable:   23068672 kB\nBuffers:          1024 kB\n")
    assert launch.available_gb(info) == 22.0  # MemAvailable, not MemFree's 16.6
    assert launch.available_gb(tmp_path / "missing") > 0  # elsewhere: the free pages


def test_blocks_declare_their_memory_and_the_pool_admits_runs_within_it(tmp_path, monkeypatch):
    """variants: an F6 run beside an F0 fits the machine, beside an F5 it does not. A block's
    ``mem_gb`` is its runs' (the scale's is the default); the pool starts a run only while the
    declared memory in flight fits the budget, and a run waiting for memory lets a smaller one by."""
    from study.grids import launch

    text = GOOD.replace("  - label: bn\n", "  - label: bn\n    mem_gb: 12\n").replace(
        "  local: {base: {steps: 5}}", "  local: {base: {steps: 5}, mem_gb: 2}")
    g = grid.load(write(tmp_path, text), "local")
    assert [(r.label, r.mem_gb) for r in g.runs] == [("nf", 2), ("nf", 2), ("bn", 12)]
    assert grid.load(write(tmp_path, text), "smoke").runs[2].mem_gb == 12  # the block's, at any scale
    assert {r.run_id for r in g.runs} == {r.run_id for r in grid.load(write(tmp_path, GOOD), "local").runs}
    with pytest.raises(grid.GridError, match=r"blocks\[1\]\.mem_gb"):
        grid.load(write(tmp_path, text.replace("mem_gb: 12", "mem_gb: -1")), "local")

    big = [dataclasses.replace(g.runs[2], mem_gb=12.0, config={**g.runs[2].config, "seed": s})
           for s in (0, 1)]
    small = g.runs[0]
    spawned = []

    class Proc:
        pid = 0

        def __init__(self):
            Proc.pid += 1
            self.pid = Proc.pid

    def spawn(run, root, env, cpus):
        spawned.append(run)
        return Proc(), None

    monkeypatch.setattr(launch, "_spawn", spawn)
    pool = launch._Pool([*big, small], tmp_path, jobs=2, retries=0,
                        progress=launch.GridProgress(3, "t", lambda *_: None), mem_budget_gb=20.0)
    pool.fill()
    assert spawned == [big[0], small]  # the second 12 GiB run would not fit beside the first
    assert pool.queue == [big[1]]
    def end(run):  # what reap does for a run that exited
        pid = next(pid for pid, a in pool.active.items() if a[1] is run)
        pool.free.append(pool.active.pop(pid)[3])

    end(small)
    pool.fill()
    assert len(spawned) == 2  # 12 + 12 > 20: it waits, though a slot is free
    end(big[0])
    pool.fill()
    assert spawned[-1] == big[1]  # alone, any run starts

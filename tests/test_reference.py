"""The shipped reference: `study report --ship` writes it (no checkpoints, no machine paths), a
rerun is compared with it cell by cell at the printed digit, and `study readme` writes README's
tables from it. Fake finished runs, as tests/test_report.py makes them, of three small grids:
training (3 seeds per cell), latency and signal propagation."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from study import cli, record
from study.analysis import readme, reference, report
from study.grids import grid
from tests.test_counts import COUNTS

# Grid files of the test's own (the shipped ones change with the study): a training grid with 3
# seeds per cell, so cells have an interval, a latency grid and a signal-propagation grid.
TRAIN = """name: mini
base: {model: nf-resnet-nano, dataset: synthetic, synthetic_size: 512, steps: 4, log_every: 2, eval_batch_size: 128}
blocks:
  - label: nf-resnet
    axes: {agc: [true, false], batch_size: [32, 64]}
  - label: bn-resnet
    set: {model: resnet-nano, agc: false}
    axes: {batch_size: [32, 64]}
seeds: [0, 1, 2]
scales: {smoke: {base: {}}}
report:
  order: 2
  section: A small grid
  figure: {draw: figure2a, title: Figure 2a, caption: "Top-1 against batch size."}
  claims: [agc_stable_at_largest_batch]
"""
LATENCY = """name: lat
base: {task: latency, model: nfnet-nano, model.depth_rule: nfnet, batch_size: 4, steps: 2, dtype: float32}
blocks:
  - {label: nfnet, axes: {model.depth: [1, 2]}}
seeds: [0]
scales: {smoke: {base: {}}}
report: {order: 1}
"""
SIGNAL = """name: sig
base: {task: signal, dataset: synthetic, batch_size: 4}
blocks:
  - {label: nf-resnet, set: {model: nf-resnet-nano}}
seeds: [0, 1]
scales: {smoke: {base: {}}}
report: {order: 3}
"""


def _grids(root: Path) -> Path:
    root.mkdir()
    for name, text in (("mini", TRAIN), ("lat", LATENCY), ("sig", SIGNAL)):
        (root / f"{name}.yaml").write_text(text)
    return root


def _train_grid(grids: Path) -> grid.Grid:
    return grid.load(grids / "mini.yaml", "smoke", check_paths=False)


def _result(run: grid.Run, cell: int) -> dict:
    if run.config["task"] == "latency":
        return {"status": "done", "task": "latency", "latency_ms": 5.0 + run.varied["model.depth"],
                "images_per_s": 800.0, "batch": 4, "resolution": 32, "dtype": "float32", "steps": 2}
    if run.config["task"] == "signal":
        return {"status": "done", "task": "signal", "signal_var_last": 1.25, "signal_blocks": 4}
    if run.label == "nf-resnet" and not run.config["agc"] and run.config["batch_size"] == 64 and run.config["seed"] == 1:
        return {"status": "diverged", "top1": None, "steps": 2}  # scores chance: needs num_classes shipped
    # Seeds 0.002 apart: the cell's 95% bootstrap interval is about ±0.0013 around its mean.
    return {"status": "done", "top1": 0.6 + 0.01 * cell + 0.002 * run.config["seed"], "top5": 0.9,
            "ema_top1": 0.6, "final_loss": 1.0, "steps": 4, "step_time_ms": 10.0, "compile_s": 1.0}


def _write_runs(root: Path, grids: Path) -> None:
    for path in sorted(grids.glob("*.yaml")):
        g = grid.load(path, "smoke", check_paths=False)
        cells = list(dict.fromkeys((r.label, json.dumps(r.varied, sort_keys=True)) for r in g.runs))
        for run in g.runs:
            d = run.directory(root)
            (d / "checkpoints" / "4").mkdir(parents=True)
            (d / "checkpoints" / "4" / "state").write_bytes(b"\0" * 64)  # must never ship
            record.write_json(d / "config.json", run.config)
            record.write_json(d / "environment.json", {"device_kind": "cpu", "device_count": 1,
                                                       "git": {"commit": "0123456789abcdef", "dirty": False}})
            result = _result(run, cells.index((run.label, json.dumps(run.varied, sort_keys=True))))
            record.write_json(d / "result.json", result)
            if run.config["task"] == "train":  # a loss curve, so the grid has a curves figure to ship
                lines = [{"step": s, "epoch": s / 4, "kind": "train", "loss": 2.3 / s, "lr": 0.1} for s in (1, 2, 3, 4)]
                (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    grids = _grids(tmp / "grids")
    runs = tmp / "runs"
    _write_runs(runs, grids)
    structure = pd.DataFrame([dict(model=k, params=p, macs=m, resolution=r) for k, (p, m, r) in COUNTS.items()])
    ref = tmp / "reports" / "smoke"
    report.build("smoke", runs, ref, grids, signal_models=None, structure=structure, ship=True)
    return dict(tmp=tmp, grids=grids, runs=runs, ref=ref, structure=structure)


def _target(shipped) -> list[grid.Run]:
    """The three seeds of one cell: NF-ResNet with AGC at batch 32."""
    return [r for r in _train_grid(shipped["grids"]).runs
            if r.label == "nf-resnet" and r.config["agc"] and r.config["batch_size"] == 32]


def _rerun(shipped, name: str, edit) -> pd.DataFrame:
    """A copy of the runs, ``edit(runs_root)`` applied, compared with the shipped reference."""
    runs = shipped["tmp"] / name
    shutil.copytree(shipped["runs"], runs)
    edit(runs)
    return reference.compare(report.collect("smoke", runs, shipped["grids"]), shipped["ref"])


def _row(diff: pd.DataFrame, run: grid.Run) -> pd.Series:
    rows = diff[diff["ref_run_ids"].str.contains(run.run_id) | diff["rerun_run_ids"].str.contains(run.run_id)]
    assert len(rows) == 1
    return rows.iloc[0]


def _nudge(run: grid.Run, by: float):
    def edit(root: Path) -> None:
        path = run.directory(root) / "result.json"
        result = json.loads(path.read_text())
        record.write_json(path, {**result, "top1": result["top1"] + by})
    return edit


def test_shipped_reference_has_results_and_no_checkpoints_or_machine_paths(shipped):
    ref = shipped["ref"]
    files = [p for p in ref.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".html", ".png", ".svg", ".csv", ".json"}
    assert not [p for p in files if "checkpoint" in str(p.relative_to(ref))]
    for name in ("index.html", "claims.csv", "comparison.csv", "status.csv", "grids.json",
                 "mini/results.csv", "lat/results.csv", "sig/results.csv", "figures/mini.png"):
        assert (ref / name).exists(), name
    assert not (ref / "reference.csv").exists()  # the reference is compared with nothing
    local = [str(shipped["tmp"]), str(Path.cwd()), str(Path.home())]
    for p in files:
        if p.suffix != ".png":
            text = p.read_text()
            assert not [s for s in local if s in text], (p, [s for s in local if s in text])
    table = pd.read_csv(ref / "mini" / "results.csv")
    assert len(table) == 18 and "dir" not in table.columns and "host" not in table.columns
    for col in ("run_id", "label", "status", "top1", "cfg.seed", "axis.agc", "axis.batch_size", "cfg.num_classes"):
        assert col in table.columns, col
    assert json.loads((ref / "grids.json").read_text())["grids"][0]["name"] == "lat"  # report order
    assert "signal_var_last" in pd.read_csv(ref / "sig" / "results.csv").columns


def test_identical_rerun_is_the_same_in_every_cell(shipped, tmp_path):
    index = report.build("smoke", shipped["runs"], tmp_path / "out", shipped["grids"], signal_models=None,
                         structure=shipped["structure"], reference=shipped["ref"])
    diff = pd.read_csv(tmp_path / "out" / "reference.csv")
    assert len(diff) == 6 and set(diff["status"]) == {reference.SAME} and (diff["delta"] == 0).all()
    assert set(diff["grid"]) == {"mini"}  # latency and signal grids have no top-1 to compare
    assert (diff["ref_n"] == 3).all()
    assert "6 of 6 cells the same as the reference" in index.read_text()


def test_a_cell_nudged_inside_its_interval(shipped):
    run = _target(shipped)[0]
    diff = _rerun(shipped, "inside", _nudge(run, 0.001))  # the mean moves by 0.00033
    row = _row(diff, run)
    assert row["status"] == reference.INSIDE and row["delta"] == pytest.approx(0.0003)
    assert row["ref_lo"] <= row["rerun_mean"] <= row["ref_hi"]
    assert (diff["status"] == reference.SAME).sum() == 5
    assert "1 moved (1 inside interval)" in reference.summary(diff, shipped["ref"])


def test_a_cell_nudged_far_is_outside_its_interval(shipped):
    run = _target(shipped)[1]
    diff = _rerun(shipped, "outside", _nudge(run, 0.3))
    row = _row(diff, run)
    assert row["status"] == reference.OUTSIDE and row["delta"] == pytest.approx(0.1)


def test_missing_and_new_cells(shipped):
    runs = _target(shipped)
    diff = _rerun(shipped, "missing", lambda root: [shutil.rmtree(r.directory(root)) for r in runs])
    row = _row(diff, runs[0])
    assert row["status"] == reference.MISSING and row["rerun_n"] == 0 and pd.isna(row["delta"])
    # The reference without that cell: the rerun's cell is new.
    ref = shipped["tmp"] / "ref-short"
    shutil.copytree(shipped["ref"], ref)
    table = pd.read_csv(ref / "mini" / "results.csv")
    table[~table["run_id"].isin([r.run_id for r in runs])].to_csv(ref / "mini" / "results.csv", index=False)
    diff = reference.compare(report.collect("smoke", shipped["runs"], shipped["grids"]), ref)
    assert _row(diff, runs[0])["status"] == reference.NEW


README = "# title\n\n## Local reproduction\n\nGenerated.\n\n{begin}\nold table\n{end}\n\n## Report\n\nkept\n"


def test_readme_block_is_replaced_idempotently(shipped, tmp_path, capsys):
    path = tmp_path / "README.md"
    path.write_text(README.format(begin=readme.BEGIN, end=readme.END))
    args = ["readme", "--reference", str(shipped["ref"]), "--readme", str(path)]
    assert cli.main(args) == 0
    text = path.read_text()
    assert "old table" not in text and text.startswith("# title\n") and text.endswith("## Report\n\nkept\n")
    block = text[text.index(readme.BEGIN):text.index(readme.END)]
    assert block.index("**lat**") < block.index("**mini**") < block.index("**sig**") < block.index("**Claims**")
    assert "| block | agc | batch_size | model | top-1 (mean ± ½ 95% CI) | seeds | diverged | collapsed to chance |" in block
    assert "| nf-resnet | True | 32 |  | 0.60" in block and " ± 0.00" in block
    assert "| agc_stable_at_largest_batch | mini |" in block
    assert "| block | model.depth | seed | latency_ms | device |" in block and "| nfnet | 1 | 0 | 6 | cpu |" in block
    assert "| nf-resnet | nf-resnet-nano | 1 | 1.25 |" in block  # the signal grid's metric, shipped as a result scalar
    assert cli.main(args) == 0 and path.read_text() == text
    assert "unchanged" in capsys.readouterr().out


def test_readme_without_markers_is_refused(shipped, tmp_path, capsys):
    path = tmp_path / "README.md"
    path.write_text("# no markers\n")
    assert cli.main(["readme", "--reference", str(shipped["ref"]), "--readme", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "local-results:begin" in err
    assert path.read_text() == "# no markers\n"


def _ship_again(shipped, name: str, runs: Path, only: list[str]) -> Path:
    """A copy of the shipped reference, rebuilt in place from ``runs`` for the grids ``only``."""
    ref = shipped["tmp"] / name
    shutil.copytree(shipped["ref"], ref)
    report.build("smoke", runs, ref, shipped["grids"], signal_models=None, structure=shipped["structure"],
                 ship=True, only=only)
    return ref


def test_shipped_results_keep_the_config_but_not_its_paths(shipped):
    table = pd.read_csv(shipped["ref"] / "mini" / "results.csv")
    for col in ("cfg.agc", "cfg.agc_clipping", "cfg.agc_exclude", "cfg.synthetic_size", "cfg.steps"):
        assert col in table.columns, col
    assert "cfg.data_dir" not in table.columns


def test_carrying_every_grid_reproduces_the_reference(shipped, tmp_path):
    """No runs at all and nothing rebuilt: the claims, tables and run counts are the shipped ones."""
    (tmp_path / "none").mkdir()
    ref = _ship_again(shipped, "carried-all", tmp_path / "none", only=[])
    for name in ("claims.csv", "status.csv", "mini/results.csv", "lat/results.csv", "sig/results.csv"):
        old, new = pd.read_csv(shipped["ref"] / name), pd.read_csv(ref / name)
        if name == "status.csv":
            assert new["note"].str.contains("carried over from the shipped reference").all()
            old, new = old.drop(columns="note"), new.drop(columns="note")
        pd.testing.assert_frame_equal(new, old, check_like=True, obj=name)
    assert (shipped["ref"] / "figures" / "curves_mini.png").exists()
    assert (ref / "figures" / "curves_mini.png").exists()  # its runs' curves cannot be redrawn: kept
    assert "curves_mini.png" in (ref / "index.html").read_text()


def test_only_the_named_grid_is_rebuilt(shipped, tmp_path):
    """The training grid rerun with one cell moved; the latency grid's runs gone and carried."""
    runs = tmp_path / "runs"
    shutil.copytree(shipped["runs"], runs)
    run = _target(shipped)[0]
    _nudge(run, 0.3)(runs)
    shutil.rmtree(runs / "lat")
    ref = _ship_again(shipped, "only-mini", runs, only=["mini", "sig"])
    mini = pd.read_csv(ref / "mini" / "results.csv").set_index("run_id")
    assert mini.loc[run.run_id, "top1"] == pytest.approx(
        pd.read_csv(shipped["ref"] / "mini" / "results.csv").set_index("run_id").loc[run.run_id, "top1"] + 0.3)
    pd.testing.assert_frame_equal(pd.read_csv(ref / "lat" / "results.csv"),
                                  pd.read_csv(shipped["ref"] / "lat" / "results.csv"), check_like=True)
    notes = pd.read_csv(ref / "status.csv").set_index("grid")["note"].fillna("")
    assert "carried over" in notes["lat"] and "carried over" not in notes["mini"]


def test_only_is_checked_before_anything_is_written(shipped, tmp_path, capsys):
    ref = shipped["tmp"] / "only-bad"
    shutil.copytree(shipped["ref"], ref)
    before = {p: p.read_bytes() for p in ref.rglob("*") if p.is_file()}
    base = ["report", "--scale", "smoke", "--runs-dir", str(shipped["runs"]), "--grids", str(shipped["grids"]),
            "--no-signal", "--out", str(ref)]
    assert cli.main([*base, "--only", "mini"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--only" in err and "--ship" in err
    assert cli.main([*base, "--ship", "--only", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nosuch'" in err and "mini" in err
    assert {p: p.read_bytes() for p in ref.rglob("*") if p.is_file()} == before


def test_a_rerun_on_another_cpu_says_so(shipped, tmp_path):
    ref = tmp_path / "ref"
    shutil.copytree(shipped["ref"], ref)
    table = pd.read_csv(ref / "mini" / "results.csv")
    table.assign(cpu="AMD EPYC (family 23 model 49, avx2)").to_csv(ref / "mini" / "results.csv", index=False)
    grids = report.collect("smoke", shipped["runs"], shipped["grids"])
    assert reference.cpus_note(grids, shipped["ref"]) == ""  # neither side names its CPU
    grids["mini"].table["cpu"] = "AMD EPYC (family 25 model 17, avx512f)"
    note = reference.cpus_note(grids, ref)
    assert "ran on AMD EPYC (family 23 model 49, avx2), this rerun on AMD EPYC (family 25 model 17, avx512f)" in note
    grids["mini"].table["cpu"] = "AMD EPYC (family 23 model 49, avx2)"
    assert reference.cpus_note(grids, ref) == ""

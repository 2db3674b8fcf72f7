"""The report: claims as predicates, the comparison table, seed aggregation, a rendered report
from a generated runs tree (half-finished, with diverged runs), an empty runs tree, and the page
opened in headless Chromium (every image loads; a screenshot)."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from study import aggregate, claims, comparison, grid, published, report, rundir
from study.models import PRESETS
from study.runlock import RunLock

GRIDS = Path(__file__).resolve().parent.parent / "ablations"
CHROMIUM = Path("/usr/bin/chromium")
F0_F6 = [f"nfnet-f{i}" for i in range(7)]


# --- generated tables ---------------------------------------------------------------------------

def agc_table(cells: dict, seeds: int = 1, scale: str = "local") -> pd.DataFrame:
    """Figure 2a rows from {(label, agc, batch): top1 | "diverged" | "missing" | [per-seed]}."""
    rows = []
    for (label, agc, batch), value in cells.items():
        values = value if isinstance(value, list) else [value] * seeds
        for seed, v in enumerate(values):
            status = v if isinstance(v, str) else "done"
            rows.append({"grid": "agc", "scale": scale, "run_id": f"{label[:2]}{int(agc)}-{batch}-s{seed}",
                         "label": label, "status": status, "cfg.agc": agc, "cfg.batch_size": batch,
                         "cfg.seed": seed, "cfg.dataset": "fashion_mnist",
                         "top1": None if isinstance(v, str) else v})
    return pd.DataFrame(rows)


def verdicts(tables, best=None) -> dict[str, tuple[str, str]]:
    out = claims.check(tables, best)
    return {r.id: (r.verdict, r.evidence) for r in out.itertuples()}


STABLE = {("nf-resnet", True, 256): 0.80, ("nf-resnet", True, 4096): 0.75,
          ("nf-resnet", False, 256): 0.81, ("nf-resnet", False, 4096): "diverged",
          ("bn-resnet", False, 256): 0.82, ("bn-resnet", False, 4096): 0.74}


def test_agc_claims_pass_on_a_table_where_agc_holds_at_4096():
    v = verdicts({"agc": agc_table(STABLE)})
    for cid in ("agc_stable_at_largest_batch", "no_agc_unstable_at_largest_batch",
                "agc_matches_bn_at_largest_batch", "no_agc_behind_bn_at_largest_batch"):
        assert v[cid][0] == "PASS", (cid, v[cid])
    # The evidence names the numbers and the run ids.
    assert "0.750" in v["agc_stable_at_largest_batch"][1] and "nf1-4096-s0" in v["agc_stable_at_largest_batch"][1]
    assert "diverged" in v["no_agc_unstable_at_largest_batch"][1]


def test_agc_claims_inconclusive_without_the_runs():
    missing = {**STABLE, ("nf-resnet", True, 4096): "missing", ("nf-resnet", False, 4096): "running"}
    v = verdicts({"agc": agc_table(missing)})
    assert v["agc_stable_at_largest_batch"][0] == "INCONCLUSIVE"
    assert "too few finished runs" in v["agc_stable_at_largest_batch"][1]
    assert v["no_agc_unstable_at_largest_batch"][0] == "INCONCLUSIVE"
    # No table at all: every claim INCONCLUSIVE, none crashes.
    assert {x[0] for x in verdicts({}).values()} == {"INCONCLUSIVE"}
    assert {x[0] for x in verdicts({"agc": pd.DataFrame()}).values()} == {"INCONCLUSIVE"}


def test_agc_claims_fail_on_a_contradicting_table():
    bad = {**STABLE, ("nf-resnet", True, 4096): "diverged", ("nf-resnet", False, 4096): 0.76,
           ("bn-resnet", False, 4096): 0.70}
    v = verdicts({"agc": agc_table(bad)})
    assert v["agc_stable_at_largest_batch"][0] == "FAIL"
    assert v["no_agc_unstable_at_largest_batch"][0] == "FAIL"  # no-AGC beats the diverged AGC run
    assert v["agc_matches_bn_at_largest_batch"][0] == "FAIL"  # diverged AGC scores chance (0.1)
    assert v["no_agc_behind_bn_at_largest_batch"][0] == "FAIL"  # 0.76 vs BN 0.70


def test_seeds_best_4_of_5_and_too_few_seeds_inconclusive():
    seeds = [0.70, 0.71, 0.72, 0.73, 0.10]
    cells = {**STABLE, ("nf-resnet", True, 4096): seeds}
    s = aggregate.summarize(agc_table(cells), ["label", "cfg.agc", "cfg.batch_size"], best=4)
    row = s[(s["label"] == "nf-resnet") & (s["cfg.agc"]) & (s["cfg.batch_size"] == 4096)].iloc[0]
    assert row["n_used"] == 4 and row["n_finished"] == 5
    assert row["mean"] == pytest.approx(np.mean(seeds[:4]))
    assert row["std"] == pytest.approx(np.std(seeds[:4]))
    assert "0.715 ± 0.011 (n=4)" in aggregate.fmt(row)
    # 2 of 5 seeds finished: the grid asks for the best 4, so the claim cannot be judged yet.
    few = {**STABLE, ("nf-resnet", True, 4096): [0.7, 0.71, "missing", "running", "failed"]}
    v = verdicts({"agc": agc_table(few)}, {"agc": 4})
    assert v["agc_stable_at_largest_batch"][0] == "INCONCLUSIVE"


def lambda_table(best_lam: dict[int, float]) -> pd.DataFrame:
    rows = []
    for batch, peak in best_lam.items():
        for lam in (0.01, 0.02, 0.04, 0.08, 0.16):
            top1 = 0.8 - 0.05 * abs(np.log2(lam / peak))
            rows.append({"label": "nf-resnet", "run_id": f"b{batch}-l{lam}", "status": "done",
                         "cfg.agc_clipping": lam, "cfg.batch_size": batch, "top1": top1,
                         "cfg.dataset": "fashion_mnist"})
    return pd.DataFrame(rows)


def test_lambda_claim_pass_and_fail():
    v = verdicts({"agc-lambda": lambda_table({1024: 0.16, 2048: 0.04, 4096: 0.01})})
    assert v["larger_batches_need_smaller_lambda"][0] == "PASS"
    assert "batch 4096: λ ≤ 0.01" in v["larger_batches_need_smaller_lambda"][1]
    assert v["smallest_lambda_stable_at_every_batch"][0] == "PASS"
    v = verdicts({"agc-lambda": lambda_table({1024: 0.04, 2048: 0.04, 4096: 0.04})})
    assert v["larger_batches_need_smaller_lambda"][0] == "FAIL"


def test_layer_claims():
    def table(values):
        return pd.DataFrame([{"label": "clipped", "run_id": f"r{i}", "status": "diverged" if v is None else "done",
                              "cfg.agc_exclude": str(list(ex)), "top1": v, "cfg.dataset": "fashion_mnist"}
                             for i, (ex, v) in enumerate(values.items())])
    good = {(): 0.70, ("head/kernel",): 0.75, ("head/kernel", "stem/*"): 0.749,
            ("head/kernel", "stages/0/*"): None, ("head/kernel", "stages/3/*"): 0.60}
    v = verdicts({"agc-layers": table(good)})
    assert v["not_clipping_classifier_is_better"][0] == "PASS"
    assert v["first_conv_can_go_unclipped"][0] == "PASS"
    assert v["every_stage_must_be_clipped"][0] == "PASS"
    close = {**good, ("head/kernel",): 0.705}  # within the tolerance: not shown either way
    v = verdicts({"agc-layers": table(close)})
    assert v["not_clipping_classifier_is_better"][0] == "INCONCLUSIVE"
    worse = {**good, ("head/kernel", "stages/3/*"): 0.80}  # a stage left unclipped did fine
    assert verdicts({"agc-layers": table(worse)})["every_stage_must_be_clipped"][0] == "FAIL"


# --- comparison ---------------------------------------------------------------------------------

def recipe_row(**over) -> dict:
    row = {"grid": "f0", "scale": "paper", "run_id": "abc", "label": "f0", "status": "done",
           "cfg.model": "nfnet-f0", "cfg.dataset": "imagenet", "cfg.epochs": 360, "cfg.batch_size": 4096,
           "cfg.agc": True, "cfg.agc_clipping": 0.01, "cfg.mixup_cutmix": True, "cfg.randaugment": "[4, 5]",
           "cfg.image_size": 0, "params": 71489284, "top1": 0.834}
    return {**row, **over}


def test_accuracy_compared_only_where_comparable():
    struct = pd.DataFrame(columns=["model", "params", "macs", "resolution"])
    tables = {"f0": pd.DataFrame([recipe_row()]),
              "short": pd.DataFrame([recipe_row(grid="short", run_id="def", **{"cfg.epochs": 90})]),
              "agc": agc_table(STABLE)}
    comp = comparison.build(tables, {}, struct)
    acc = comp[comp["section"] == "accuracy"].set_index("item")
    f0 = acc.loc["f0/f0"]
    assert f0["published"] == 83.6 and f0["delta"] == pytest.approx(-0.2)
    assert f0["verdict"].startswith("within tolerance")
    assert acc.loc["short/f0", "verdict"] == "not comparable: recipe: epochs = 90 (Table 3: 360)"
    local = acc[acc.index.str.startswith("agc/")]
    assert len(local) == 6 and (local["verdict"] == "not comparable: scale (local, fashion_mnist)").all()
    assert local["published"].isna().all() and local["delta"].isna().all()


def test_latency_rows_name_the_hardware_and_never_judge_across_it():
    lat = pd.DataFrame([{"grid": "variants", "run_id": "l0", "status": "done", "cfg.model": "nfnet-f0",
                         "latency_ms": 812.5, "images_per_s": 1.2, "batch": 1, "resolution": 192,
                         "dtype": "float32", "device_kind": "cpu"}])
    comp = comparison.build({"variants": lat}, {}, pd.DataFrame(columns=["model", "params", "macs", "resolution"]))
    rows = comp[(comp["section"] == "latency") & (comp["item"] == "nfnet-f0")]
    assert set(rows["published"]) == {73.3, 56.7}
    assert (rows["ours"] == 812.5).all() and (rows["hardware_ours"] == "cpu, batch 1, 192 px, float32").all()
    assert (rows["verdict"] == "reference only: different hardware").all()
    f7 = comp[(comp["section"] == "latency") & (comp["item"] == "nfnet-f7")]
    assert f7["verdict"].str.startswith("missing").all()


# --- rendering ----------------------------------------------------------------------------------

def fake_runs(root: Path, outcome) -> int:
    """Writes run directories for every smoke-scale grid; ``outcome(run)`` gives the result
    (or None: the run is left missing). Returns the number of runs written."""
    n = 0
    for path in sorted(GRIDS.glob("*.yaml")):
        try:
            g = grid.load(path, "smoke", check_paths=False)
        except grid.GridError:
            continue
        for i, run in enumerate(g.runs):
            result = outcome(run, i)
            if result is None:
                continue
            d = run.directory(root)
            d.mkdir(parents=True)
            rundir.write_json(d / "config.json", run.config)
            rundir.write_json(d / "environment.json", {"device_kind": "cpu", "device_count": 1,
                                                       "git": {"commit": "0123456789abcdef", "dirty": False}})
            rundir.write_json(d / "result.json", result)
            if result["status"] == "running":  # a live trainer holds its run's lock
                HELD.append(RunLock(d).__enter__())
            else:
                top1 = result.get("top1") or 0.1
                lines = [{"step": s, "epoch": s / 4, "kind": "train", "loss": 2.3 / s, "lr": 0.1,
                          "clip_fraction": 0.1 * s if run.config["agc"] else 0.0} for s in (1, 2, 3, 4)]
                lines += [{"step": 4, "epoch": 1.0, "kind": "eval", "top1": top1, "top5": 0.9}]
                (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
            n += 1
    return n


HELD: list = []  # the run locks of the fake live runs, held for the whole test session


def outcome(run, i):
    if run.grid == "agc" and run.label == "nf-resnet" and not run.config["agc"] and run.config["batch_size"] == 64:
        return {"status": "diverged", "top1": None, "steps": 2}
    if run.grid == "agc-layers" and i == 4:
        return None  # half-finished grid: this run was never launched
    if run.grid == "width" and i == 0:
        return {"status": "running", "steps": 1}
    base = {"agc": 0.6, "agc-lambda": 0.5, "agc-layers": 0.55, "depth": 0.4, "width": 0.45}.get(run.grid)
    if base is None:
        return None  # smoke "variants" (nano models): latency comes from latency_rows below
    return {"status": "done", "top1": base + 0.01 * i, "top5": 0.9, "ema_top1": base, "final_loss": 1.0,
            "steps": 4, "step_time_ms": 10.0}


def latency_grid() -> report.GridResults:
    rows = [{"grid": "variants", "scale": "smoke", "run_id": f"lat{i}", "label": "nfnet", "status": "done",
             "cfg.task": "latency", "cfg.model": f"nfnet-f{i}", "latency_ms": 500.0 * 1.6**i,
             "images_per_s": 2.0, "batch": 1, "resolution": PRESETS[f"nfnet-f{i}"].train_resolution, "dtype": "float32",
             "device_kind": "cpu"} for i in range(6)]  # F6, F7 not measured: shown as such
    return report.GridResults("variants", GRIDS / "variants.yaml", pd.DataFrame(rows))


# The models' exact counts at the test resolution (tests/test_models.py checks them against
# Table 3; building F0–F6 abstractly takes minutes on 2 cores, so the report tests reuse them).
COUNTS = {"nfnet-f0": (71489284, 12384198656, 256), "nfnet-f1": (132634256, 35538968576, 320),
          "nfnet-f2": (193779228, 62592978944, 352), "nfnet-f3": (254924200, 114763501568, 416),
          "nfnet-f4": (316069172, 215241187328, 512), "nfnet-f5": (377214144, 289757106176, 544),
          "nfnet-f6": (438359116, 377280307200, 576)}


@pytest.fixture(scope="module")
def structure():
    return pd.DataFrame([dict(model=k, params=p, macs=m, resolution=r) for k, (p, m, r) in COUNTS.items()])


def test_structure_counts_the_model_and_caches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    got = comparison.structure(["nfnet-f0"]).iloc[0]
    assert (got["params"], got["macs"], got["resolution"]) == COUNTS["nfnet-f0"]
    cached = json.loads(next((tmp_path / "study").glob("structure-*.json")).read_text())
    assert cached["nfnet-f0"]["params"] == COUNTS["nfnet-f0"][0]
    rows = comparison.structure_rows(comparison.structure(["nfnet-f0"]))  # from the cache now
    assert [(r["metric"], r["delta"]) for r in rows] == [("params", 0.0), ("FLOPs (MACs)", 0.0)]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, structure):
    tmp = tmp_path_factory.mktemp("report")
    runs = tmp / "runs"
    assert fake_runs(runs, outcome) > 20
    real_collect = report.collect
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "collect", lambda *a, **k: {**real_collect(*a, **k), "variants": latency_grid()})
        index = report.build("smoke", runs, tmp / "reports", GRIDS, signal_models=("nf-resnet-nano", "resnet-nano"),
                             signal_resolution=28, structure=structure)
    return index


def test_report_files_comparison_and_claims(rendered):
    out = rendered.parent
    names = {p.name for p in (out / "figures").iterdir()}
    for stem in ("fig1_top1_vs_latency", "fig2a", "fig2b", "layers", "depth", "width", "signal_propagation",
                 "curves_agc", "curves_agc-lambda"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names, stem
    comp = pd.read_csv(out / "comparison.csv")
    s = comp[comp["section"] == "structure"]
    assert sorted(s["item"].unique()) == F0_F6
    assert len(s) == 14 and (s["delta"] == 0).all() and set(s["metric"]) == {"params", "FLOPs (MACs)"}
    lat = comp[comp["section"] == "latency"]
    assert (lat.loc[lat["item"] == "nfnet-f0", "hardware_ours"] == "cpu, batch 1, 192 px, float32").all()
    acc = comp[comp["section"] == "accuracy"]
    assert len(acc) and acc["verdict"].str.startswith("not comparable: scale (smoke").all()
    cl = pd.read_csv(out / "claims.csv")
    assert list(cl["id"]) == [c.id for c in claims.CLAIMS]
    v = dict(zip(cl["id"], cl["verdict"]))
    assert v["agc_stable_at_largest_batch"] == "PASS"  # batch 64 (smoke's largest): not diverged, above chance
    assert v["no_agc_unstable_at_largest_batch"] == "PASS"  # the no-AGC batch-64 run diverged
    assert v["every_stage_must_be_clipped"] == "INCONCLUSIVE"  # its stage-4 run is missing
    assert v["nfnet_width_pattern_not_worse"] == "INCONCLUSIVE"  # a width run is still running
    page = rendered.read_text()
    for text in ("Figure 1", "Figure 2a", "Figure 2b", "PASS", "INCONCLUSIVE", "not comparable: scale"):
        assert text in page, text
    status = pd.read_csv(out / "status.csv").set_index("grid")
    assert status.loc["agc-layers", "missing"] == 1 and status.loc["agc", "diverged"] == 1
    assert status.loc["width", "running"] == 1


def test_empty_runs_dir_renders_placeholders(tmp_path, structure):
    index = report.build("local", tmp_path / "no-runs", tmp_path / "out", GRIDS, signal_models=None,
                         structure=structure)
    cl = pd.read_csv(tmp_path / "out" / "claims.csv")
    assert set(cl["verdict"]) == {"INCONCLUSIVE"}
    assert (tmp_path / "out" / "figures" / "fig2a.png").stat().st_size > 1000
    assert "no finished run yet" in index.read_text() or "missing" in index.read_text()
    comp = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert (comp[comp["section"] == "structure"]["delta"] == 0).all()


def test_published_loader_keeps_source_and_maps_variants():
    df = published.load()
    assert {"source", "model", "metric", "value"} <= set(df.columns)
    nf = published.nfnets()
    assert list(nf["model"]) == F0_F6 and (nf["source"] == "Table 3").all()
    assert nf.set_index("model").loc["nfnet-f6", "paper_model"] == "NFNet-F6+SAM"
    assert list(published.efficientnets()["paper_model"]) == ["EffNet-B0"] + [f"EffNet-B{i}" for i in range(3, 8)]


def test_cli_report_rejects_an_unknown_scale(capsys):
    from study.cli import main
    assert main(["report", "--scale", "huge", "--no-signal"]) == 2
    assert "scale: unknown 'huge'" in capsys.readouterr().err


# --- headless Chromium --------------------------------------------------------------------------

CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
</script></body>"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (CI installs it)")
def test_report_opens_in_headless_chromium(rendered, tmp_path):
    from matplotlib import image

    out = rendered.parent
    n_img = rendered.read_text().count("<img ")
    assert n_img >= 9
    # A copy of the page beside it (so figures/ resolves the same) that records, after load,
    # how many images decoded with a non-zero width.
    probe = out / "_probe.html"
    probe.write_text(rendered.read_text().replace("</body>", CHECK))
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=tmp_path / "p1")
    probe.unlink()
    found = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    assert found.group(1) == found.group(2) == str(n_img)

    shot = tmp_path / "shot.png"
    run = chromium(f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars",
                   "--virtual-time-budget=10000", rendered.as_uri(), profile=tmp_path / "p2")
    assert shot.exists(), run.stderr[-2000:]
    assert shot.stat().st_size > 50_000
    pixels = image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert (pixels.std(axis=(0, 1)) > 0.05).all()  # text, tables and figures, not a blank page


def test_unlaunched_grid_rows_match_the_results_table(tmp_path):
    from study import results

    g = grid.load(GRIDS / "agc.yaml", "smoke", check_paths=False)
    planned, real = report._planned(g, tmp_path), results.table(g, tmp_path)
    assert set(planned.columns) <= set(real.columns)
    cols = list(planned.columns)
    pd.testing.assert_frame_equal(planned[cols], real[cols], check_dtype=False)

"""The report: a rendered report from a generated runs tree (half-finished, with diverged runs),
an empty runs tree, grids that declare their figures and claims, and the page opened in headless
Chromium (every image loads; a screenshot)."""

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from study import record
from study.analysis import claims, report
from study.grids import grid
from study.models import PRESETS
from study.runlock import RunLock
from tests.test_counts import COUNTS

GRIDS = Path(__file__).resolve().parent.parent / "ablations"
CHROMIUM = Path("/usr/bin/chromium")
F0_F6 = [f"nfnet-f{i}" for i in range(7)]


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
            record.write_json(d / "config.json", run.config)
            record.write_json(d / "environment.json", {"device_kind": "cpu", "device_count": 1,
                                                       "git": {"commit": "0123456789abcdef", "dirty": False}})
            record.write_json(d / "result.json", result)
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
             "device_kind": "cpu", "latency_min_ms": 480.0 * 1.6**i, "latency_max_ms": 520.0 * 1.6**i}
            for i in range(6)]  # F6, F7 not measured: shown as such
    # Table 6's BN version of F0, 1.3× slower: never drawn as an NFNet in Figure 1.
    rows.append({**rows[0], "run_id": "latbn0", "label": "nfnet-bn", "cfg.model.norm": "batchnorm",
                 "latency_ms": 650.0, "latency_min_ms": 630.0, "latency_max_ms": 670.0})
    g = grid.load(GRIDS / "variants.yaml", "smoke", check_paths=False)
    return report.GridResults("variants", g.path, pd.DataFrame(rows), axes=g.axes, report=g.report)


@pytest.fixture(scope="module")
def structure():
    return pd.DataFrame([dict(model=k, params=p, macs=m, resolution=r) for k, (p, m, r) in COUNTS.items()])



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
    for stem in ("variants", "agc", "agc-lambda", "agc-layers", "depth", "width", "signal_propagation",
                 "curves_agc", "curves_agc-lambda"):  # each grid's declared figure, named after it
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
    assert sorted(cl["id"]) == sorted(claims.CLAIMS)  # every claim, from the grid that declares it
    v = dict(zip(cl["id"], cl["evidence"]))
    verdict = dict(zip(cl["id"], cl["verdict"]))
    timed = {"variant_latency_grows_as_table3", "bn_nfnet_slower_per_step"}  # step times, not seeds
    assert {verdict[c] for c in verdict if c not in timed} == {"INCONCLUSIVE"}  # one seed per cell
    assert "1 finished seed(s) of 1, a verdict needs 3" in v["agc_matches_bn_at_largest_batch"]
    assert all("a verdict needs 3" in e for c, e in v.items() if c not in timed), v
    assert verdict["variant_latency_grows_as_table3"] == "PASS", v["variant_latency_grows_as_table3"]
    assert "nfnet-f1 800 ms (1.60× F0; Table 3: TPUV3" in v["variant_latency_grows_as_table3"]
    assert verdict["bn_nfnet_slower_per_step"] == "PASS" and "= 1.30×" in v["bn_nfnet_slower_per_step"]
    page = rendered.read_text()
    for text in ("Figure 1", "Figure 2a", "Figure 2b", '<td class="INCONCLUSIVE">', "not comparable: scale"):
        assert text in page, text
    assert "could not draw" not in page  # every figure drawn, none a placeholder for an error
    status = pd.read_csv(out / "status.csv").set_index("grid")
    assert status.loc["agc-layers", "missing"] == 1 and status.loc["agc", "diverged"] == 1
    assert status.loc["width", "running"] == 1


def test_empty_runs_dir_renders_placeholders(tmp_path, structure):
    index = report.build("local", tmp_path / "no-runs", tmp_path / "out", GRIDS, signal_models=None,
                         structure=structure)
    cl = pd.read_csv(tmp_path / "out" / "claims.csv")
    assert set(cl["verdict"]) == {"INCONCLUSIVE"}
    assert (tmp_path / "out" / "figures" / "agc.png").stat().st_size > 1000
    assert "no finished run yet" in index.read_text() or "missing" in index.read_text()
    comp = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert (comp[comp["section"] == "structure"]["delta"] == 0).all()



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



def test_a_new_grid_feeds_the_report_from_its_own_file(tmp_path, structure):
    """A grid added with its figure and claims needs no edit to the report module."""
    grids = tmp_path / "grids"
    grids.mkdir()
    text = (GRIDS / "agc.yaml").read_text().replace("name: agc\n", "name: agc-again\n")
    text = text.replace('section: "Figure 2: adaptive gradient clipping"', 'section: "A new section"')
    (grids / "agc-again.yaml").write_text(text)
    index = report.build("smoke", tmp_path / "runs", tmp_path / "out", grids, signal_models=None, structure=structure)
    page = index.read_text()
    assert "<h2>A new section</h2>" in page and 'src="figures/agc-again.png"' in page
    cl = pd.read_csv(tmp_path / "out" / "claims.csv")
    assert set(cl["grid"]) == {"agc-again"} and len(cl) == 5


def test_a_report_block_naming_an_unknown_drawer_or_claim_is_reported_by_name(tmp_path, structure):
    grids = tmp_path / "grids"
    grids.mkdir()
    base = (GRIDS / "depth.yaml").read_text()
    (grids / "depth.yaml").write_text(base.replace("draw: scaling", "draw: no_such_plot"))
    got = report.collect("smoke", tmp_path / "runs", grids)["depth"]
    assert "report.figure.draw: unknown 'no_such_plot'" in got.error
    (grids / "depth.yaml").write_text(base.replace("claims: [deeper_nfnet_is_more_accurate]", "claims: [no_such_claim]"))
    got = report.collect("smoke", tmp_path / "runs", grids)["depth"]
    assert "report.claims: unknown claim 'no_such_claim'" in got.error


def test_a_fresh_results_table_written_from_another_directory_finds_its_runs(tmp_path, monkeypatch):
    """``study results`` stores each run's directory as its caller saw it (``runs/...``, relative);
    a report built from elsewhere (``--runs-dir /abs/runs``) re-anchors it on its own root, or its
    training curves silently found no metrics."""
    from study.analysis import results

    fake_runs(tmp_path / "runs", outcome)
    g = grid.load(GRIDS / "agc.yaml", "smoke", check_paths=False)
    monkeypatch.chdir(tmp_path)
    results.write(g, "runs")  # relative, as `make ablation-agc` writes it
    assert pd.read_parquet(tmp_path / "runs/agc/smoke/results.parquet")["dir"].str.startswith("runs/").all()
    monkeypatch.chdir(tmp_path.parent)
    df = report._fresh_parquet(g, tmp_path / "runs")
    assert df is not None and len(df) == len(g.runs)
    assert all((Path(d) / "metrics.jsonl").exists() for d in df["dir"])


def test_a_figure_saved_twice_gives_the_same_bytes(tmp_path):
    # A regenerated report's diff shows only figures whose content changed: no date, fixed ids.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(y):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], y, label="a")
        ax.legend()
        return fig

    for i, y in enumerate(([0, 1, 0], [0, 1, 0], [0, 2, 0])):
        report._save(draw(y), tmp_path / str(i), "fig")
    svg = [(tmp_path / str(i) / "figures" / "fig.svg").read_bytes() for i in range(3)]
    png = [(tmp_path / str(i) / "figures" / "fig.png").read_bytes() for i in range(3)]
    assert svg[0] == svg[1] and png[0] == png[1]
    assert svg[2] != svg[0] and png[2] != png[0]  # a changed figure still shows as changed

"""Claims as predicates over results tables: PASS, FAIL and INCONCLUSIVE on generated tables,
seeds (best 4 of 5), and the registry every grid file's ``report.claims`` names."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from study.analysis import aggregate, claims
from study.grids import grid

GRIDS = Path(__file__).resolve().parent.parent / "ablations"


NOISE = (-0.01, 0.0, 0.01)  # three seeds a point apart around each cell's value


def agc_table(cells: dict, seeds: int = 3, scale: str = "local") -> pd.DataFrame:
    """Figure 2a rows from {(label, agc, batch): top1 | "diverged" | "missing" | [per-seed]};
    a single value becomes ``seeds`` seeds spread by ``NOISE``."""
    rows = []
    for (label, agc, batch), value in cells.items():
        values = value if isinstance(value, list) else [
            value if isinstance(value, str) else value + NOISE[s % 3] for s in range(seeds)]
        for seed, v in enumerate(values):
            status = v if isinstance(v, str) else "done"
            rows.append({"grid": "agc", "scale": scale, "run_id": f"{label[:2]}{int(agc)}-{batch}-s{seed}",
                         "label": label, "status": status, "cfg.agc": agc, "cfg.batch_size": batch,
                         "cfg.seed": seed, "cfg.dataset": "fashion_mnist",
                         "top1": None if isinstance(v, str) else v})
    return pd.DataFrame(rows)


def declared(name: str) -> list[str]:
    """The claim ids the grid file declares (``report.claims``)."""
    return grid.load(GRIDS / f"{name}.yaml", "local", check_paths=False).report["claims"]


CLAIMS_OF = {name: declared(name) for name in ("agc", "agc-lambda", "agc-layers", "depth", "width",
                                                "variants", "signal")}


def verdicts(tables, best=None) -> dict[str, tuple[str, str]]:
    out = claims.check(tables, best or {}, CLAIMS_OF)
    return {r.id: (r.verdict, r.evidence) for r in out.itertuples()}


STABLE = {("nf-resnet", True, 256): 0.80, ("nf-resnet", True, 4096): 0.75,
          ("nf-resnet", False, 256): 0.81, ("nf-resnet", False, 4096): "diverged",
          ("bn-resnet", False, 256): 0.76, ("bn-resnet", False, 4096): 0.74}


def test_agc_claims_pass_on_a_table_where_agc_holds_at_4096():
    v = verdicts({"agc": agc_table(STABLE)})
    for cid in ("agc_stable_at_largest_batch", "no_agc_unstable_at_largest_batch",
                "agc_matches_bn_at_largest_batch", "no_agc_behind_bn_at_largest_batch"):
        assert v[cid][0] == "PASS", (cid, v[cid])
    # The evidence names the numbers and the run ids.
    assert "0.750 [" in v["agc_stable_at_largest_batch"][1] and "nf1-4096-s0" in v["agc_stable_at_largest_batch"][1]
    assert "diverged" in v["no_agc_unstable_at_largest_batch"][1]


def test_agc_claims_inconclusive_without_the_runs():
    missing = {**STABLE, ("nf-resnet", True, 4096): "missing", ("nf-resnet", False, 4096): "running"}
    v = verdicts({"agc": agc_table(missing)})
    assert v["agc_stable_at_largest_batch"][0] == "INCONCLUSIVE"
    assert "too few finished seeds" in v["agc_stable_at_largest_batch"][1]
    assert v["no_agc_unstable_at_largest_batch"][0] == "INCONCLUSIVE"
    # No table at all: every claim INCONCLUSIVE, none crashes.
    assert {x[0] for x in verdicts({}).values()} == {"INCONCLUSIVE"}
    assert {x[0] for x in verdicts({"agc": pd.DataFrame()}).values()} == {"INCONCLUSIVE"}


def test_agc_claims_fail_on_a_contradicting_table():
    bad = {**STABLE, ("nf-resnet", True, 4096): "diverged", ("nf-resnet", False, 4096): 0.77}
    v = verdicts({"agc": agc_table(bad)})
    assert v["agc_stable_at_largest_batch"][0] == "FAIL"
    assert v["no_agc_unstable_at_largest_batch"][0] == "FAIL"  # no-AGC beats the diverged AGC run
    assert v["agc_matches_bn_at_largest_batch"][0] == "FAIL"  # diverged AGC scores chance (0.1)
    assert v["no_agc_behind_bn_at_largest_batch"][0] == "FAIL"  # 0.77 vs BN 0.74


def test_seeds_mean_interval_best_4_of_5_and_too_few_seeds_inconclusive():
    seeds = [0.70, 0.71, 0.72, 0.73, 0.10]
    cells = {**STABLE, ("nf-resnet", True, 4096): seeds}
    s = aggregate.summarize(agc_table(cells), ["label", "cfg.agc", "cfg.batch_size"], best=4)
    row = s[(s["label"] == "nf-resnet") & (s["cfg.agc"]) & (s["cfg.batch_size"] == 4096)].iloc[0]
    assert row["n_used"] == 5 and row["n_finished"] == 5
    assert row["mean"] == pytest.approx(np.mean(seeds))  # verdicts use every seed ...
    assert row["best_mean"] == pytest.approx(np.mean(seeds[:4]))  # ... the paper's best 4 of 5 is shown
    assert row["lo"] < row["mean"] < row["hi"] and row["lo"] >= min(seeds) and row["hi"] <= max(seeds)
    assert f"0.592 [{row['lo']:.3f}, {row['hi']:.3f}] (n=5; best 4 of 5: 0.715; 1 collapsed to chance)" in aggregate.fmt(row)
    # 2 of 5 seeds finished: the grid asks for the best 4, so the claim cannot be judged yet.
    few = {**STABLE, ("nf-resnet", True, 4096): [0.7, 0.71, "missing", "running", "failed"]}
    v = verdicts({"agc": agc_table(few)}, {"agc": 4})
    assert v["agc_stable_at_largest_batch"][0] == "INCONCLUSIVE"


def test_one_seed_per_cell_decides_nothing():
    v = verdicts({"agc": agc_table(STABLE, seeds=1)})
    assert {x[0] for x in v.values()} == {"INCONCLUSIVE"}
    assert "a verdict needs 3" in v["agc_matches_bn_at_largest_batch"][1]


def test_an_untrained_reference_makes_the_claims_invalid_never_pass():
    """The issue's case: at batch 4096 the BN-ResNet itself is at chance after 2 epochs."""
    untrained = {**STABLE, ("bn-resnet", False, 4096): 0.11, ("nf-resnet", True, 4096): 0.38,
                 ("nf-resnet", False, 4096): 0.10}
    v = verdicts({"agc": agc_table(untrained)})
    for cid in ("agc_stable_at_largest_batch", "no_agc_unstable_at_largest_batch",
                "agc_matches_bn_at_largest_batch", "no_agc_behind_bn_at_largest_batch"):
        assert v[cid][0] == "INVALID", (cid, v[cid])
        assert "BN-ResNet at batch 4096 did not train" in v[cid][1]


def test_a_reference_far_below_its_best_batch_makes_the_claims_invalid():
    """The local protocol's bar: the BN-ResNet at 4096 within 3 pp of its best batch size."""
    short = {**STABLE, ("bn-resnet", False, 256): 0.78}  # 4 pp above BN at 4096
    v = verdicts({"agc": agc_table(short)})
    assert v["agc_matches_bn_at_largest_batch"][0] == "INVALID"
    assert "BN-ResNet at batch 4096 is 4.0 pp below its best" in v["agc_matches_bn_at_largest_batch"][1]
    assert verdicts({"agc": agc_table({**STABLE, ("bn-resnet", False, 256): 0.765})}
                    )["agc_matches_bn_at_largest_batch"][0] == "PASS"  # 2.5 pp: inside


def test_a_run_still_learning_at_its_end_makes_the_claim_invalid():
    df = agc_table(STABLE)
    df["top1_tail_gain"] = 0.004
    df.loc[df["run_id"] == "bn0-4096-s1", "top1_tail_gain"] = 0.08
    v = verdicts({"agc": df})
    assert v["agc_matches_bn_at_largest_batch"][0] == "INVALID"
    assert "still learning" in v["agc_matches_bn_at_largest_batch"][1] and "8.0 pp" in v["agc_matches_bn_at_largest_batch"][1]
    df["top1_tail_gain"] = 0.004
    assert verdicts({"agc": df})["agc_matches_bn_at_largest_batch"][0] == "PASS"


def test_only_a_cell_whose_accuracy_decides_the_verdict_can_void_it():
    """NF + AGC at 4096 still learning: the claims that compare its accuracy are INVALID; those a
    no-AGC divergence decides are not (more training cannot undo a divergence)."""
    df = agc_table(STABLE)
    df["top1_tail_gain"] = 0.004
    df.loc[df["run_id"] == "nf1-4096-s2", "top1_tail_gain"] = 0.02
    v = verdicts({"agc": df})
    assert v["agc_matches_bn_at_largest_batch"][0] == "INVALID"
    for cid in ("agc_stable_at_largest_batch", "no_agc_unstable_at_largest_batch",
                "no_agc_behind_bn_at_largest_batch", "agc_little_benefit_at_small_batch"):
        assert v[cid][0] == "PASS", (cid, v[cid])
    # Without a divergence, "falls behind AGC" compares AGC's accuracy: void again.
    df = agc_table({**STABLE, ("nf-resnet", False, 4096): 0.60})
    df["top1_tail_gain"] = 0.004
    df.loc[df["run_id"] == "nf1-4096-s2", "top1_tail_gain"] = 0.02
    v = verdicts({"agc": df})
    assert v["no_agc_unstable_at_largest_batch"][0] == "INVALID"
    assert v["agc_little_benefit_at_small_batch"][0] == "INVALID"
    assert v["no_agc_behind_bn_at_largest_batch"][0] == "PASS"


def test_a_difference_inside_its_interval_is_not_a_difference():
    close = {**STABLE, ("nf-resnet", False, 4096): 0.745}  # 0.5 pp below BN, seeds a point apart
    v = verdicts({"agc": agc_table(close)})
    assert v["no_agc_behind_bn_at_largest_batch"][0] == "FAIL"  # not shown to be behind
    apart = {**STABLE, ("nf-resnet", False, 4096): 0.70}
    v = verdicts({"agc": agc_table(apart)})
    assert v["no_agc_behind_bn_at_largest_batch"][0] == "PASS" and "Δ -0.040 [" in v["no_agc_behind_bn_at_largest_batch"][1]


def lambda_table(best_lam: dict[int, float]) -> pd.DataFrame:
    rows = []
    for batch, peak in best_lam.items():
        for lam in (0.01, 0.02, 0.04, 0.08, 0.16):
            top1 = 0.8 - 0.05 * abs(np.log2(lam / peak))
            rows += [{"label": "nf-resnet", "run_id": f"b{batch}-l{lam}-s{s}", "status": "done",
                      "cfg.agc_clipping": lam, "cfg.batch_size": batch, "top1": top1 + NOISE[s],
                      "cfg.dataset": "fashion_mnist"} for s in range(3)]
    return pd.DataFrame(rows)


def test_lambda_claim_pass_and_fail():
    v = verdicts({"agc-lambda": lambda_table({1024: 0.16, 2048: 0.04, 4096: 0.01})})
    assert v["larger_batches_need_smaller_lambda"][0] == "PASS"
    assert "batch 4096: λ ≤ 0.01" in v["larger_batches_need_smaller_lambda"][1]
    assert v["smallest_lambda_stable_at_every_batch"][0] == "PASS"
    v = verdicts({"agc-lambda": lambda_table({1024: 0.04, 2048: 0.04, 4096: 0.04})})
    assert v["larger_batches_need_smaller_lambda"][0] == "FAIL"


def layer_table(values: dict, gain: dict | None = None) -> pd.DataFrame:
    """Layer-ablation rows from {excluded globs: top1 | None (diverged) | [per-seed top1]};
    ``gain`` gives a cell's ``top1_tail_gain`` (how much its runs rose over their last quarter)."""
    rows = []
    for i, (ex, v) in enumerate(values.items()):
        seeds = v if isinstance(v, list) else [None if v is None else v + n for n in NOISE]
        rows += [{"label": "clipped", "run_id": f"r{i}-s{s}", "status": "diverged" if t is None else "done",
                  "cfg.agc_exclude": str(list(ex)), "top1": t, "cfg.dataset": "fashion_mnist",
                  "top1_tail_gain": (gain or {}).get(ex, 0.0)} for s, t in enumerate(seeds)]
    return pd.DataFrame(rows)


def test_layer_claims():
    table = layer_table
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


def test_a_classifier_benefit_the_seeds_keep_under_one_point_is_absent():
    """Non-superiority: the claimed benefit of an unclipped classifier fails when the whole interval
    of the difference lies below +1 pp (NEGLIGIBLE), about 0 or below it; an interval reaching
    past +1 pp stays undecided."""
    base = {(): [0.700, 0.702, 0.704, 0.701, 0.703], ("head/kernel", "stages/0/*"): None}
    same = {**base, ("head/kernel",): [0.701, 0.703, 0.702, 0.700, 0.704]}
    verdict, evidence = verdicts({"agc-layers": layer_table(same)})["not_clipping_classifier_is_better"]
    assert verdict == "FAIL" and "Δ +0.000" in evidence
    # The shipped reference's shape: unclipped 0.6 pp lower, the interval [-0.014, +0.001] reaches
    # below -1 pp; it still excludes a benefit of 1 pp.
    lower = {**base, (): [0.8626, 0.8675, 0.8747, 0.8819, 0.8739],
             ("head/kernel",): [0.8571, 0.8751, 0.8641, 0.8691, 0.8633]}
    verdict, evidence = verdicts({"agc-layers": layer_table(lower)})["not_clipping_classifier_is_better"]
    assert verdict == "FAIL" and "Δ -0.006" in evidence, evidence
    wide = {**base, (): [0.69, 0.70, 0.71], ("head/kernel",): [0.685, 0.705, 0.72]}
    assert verdicts({"agc-layers": layer_table(wide)})["not_clipping_classifier_is_better"][0] == "INCONCLUSIVE"


def test_a_seed_collapsed_to_chance_is_unstable_even_beside_a_run_still_learning():
    """A finished run at chance (it predicts one class) is a collapse more training cannot undo: it
    fails "the stem can go unclipped" although the stem's other seeds were still rising, which
    alone would void an accuracy comparison."""
    cells = {(): 0.70, ("head/kernel",): 0.75, ("head/kernel", "stages/0/*"): None}
    stem = {**cells, ("head/kernel", "stem/*"): [0.74, 0.75, 0.10]}
    verdict, evidence = verdicts({"agc-layers": layer_table(stem, gain={("head/kernel", "stem/*"): 0.03})})[
        "first_conv_can_go_unclipped"]
    assert verdict == "FAIL" and "1 collapsed to chance" in evidence
    rising = {**cells, ("head/kernel", "stem/*"): 0.60}  # below, but still learning: void
    assert verdicts({"agc-layers": layer_table(rising, gain={("head/kernel", "stem/*"): 0.03})})[
        "first_conv_can_go_unclipped"][0] == "INVALID"
    # A stage cell with a collapsed seed is unstable too, without reading its accuracy.
    stage = {**cells, ("head/kernel", "stem/*"): 0.75, ("head/kernel", "stages/3/*"): [0.80, 0.81, 0.10]}
    assert verdicts({"agc-layers": layer_table(stage, gain={("head/kernel", "stages/3/*"): 0.03})})[
        "every_stage_must_be_clipped"][0] == "PASS"


# --- comparison ---------------------------------------------------------------------------------


def test_every_grid_declares_known_claims_and_every_claim_has_a_grid():
    declared_ids = [c for ids in CLAIMS_OF.values() for c in ids]
    assert sorted(declared_ids) == sorted(claims.CLAIMS)  # each claim decided by exactly one grid
    for cid, c in claims.CLAIMS.items():
        assert c.text and c.source and c.id == cid


def test_a_claim_of_a_grid_without_runs_is_inconclusive_and_names_the_grid():
    out = claims.check({}, {}, {"agc": ["agc_stable_at_largest_batch"]})
    assert list(out["verdict"]) == ["INCONCLUSIVE"] and "grid 'agc'" in out["evidence"][0]


# --- AGC at small batch, latency and signal propagation ------------------------------------------


def test_agc_little_benefit_at_small_batch_pass_and_fail():
    v = verdicts({"agc": agc_table(STABLE)})  # 256: AGC 0.80 vs 0.81; 4096: no AGC diverged
    assert v["agc_little_benefit_at_small_batch"][0] == "PASS", v["agc_little_benefit_at_small_batch"]
    assert "AGC − no AGC at batch 256: -0.010" in v["agc_little_benefit_at_small_batch"][1]
    # AGC 5 pp ahead at batch 256: a benefit at small batch too, so the claim fails.
    v = verdicts({"agc": agc_table({**STABLE, ("nf-resnet", True, 256): 0.86})})
    assert v["agc_little_benefit_at_small_batch"][0] == "FAIL"
    # The benefit must grow with the batch: equal benefits at both ends are a FAIL.
    even = {**STABLE, ("nf-resnet", False, 4096): 0.755, ("nf-resnet", True, 256): 0.815}
    assert verdicts({"agc": agc_table(even)})["agc_little_benefit_at_small_batch"][0] == "FAIL"


def latency_table(ms: dict) -> pd.DataFrame:
    """Latency rows from {(label, model): (median, fastest, slowest)}."""
    return pd.DataFrame([{"grid": "variants", "run_id": f"{label}-{model}", "label": label, "status": "done",
                          "cfg.task": "latency", "cfg.model": model, "latency_ms": m, "latency_min_ms": lo,
                          "latency_max_ms": hi} for (label, model), (m, lo, hi) in ms.items()])


def test_latency_claims():
    ms = {("nfnet", "nfnet-f0"): (100, 95, 105), ("nfnet", "nfnet-f1"): (230, 220, 240),
          ("nfnet", "nfnet-f2"): (400, 390, 420), ("nfnet-bn", "nfnet-f0"): (130, 125, 135)}
    v = verdicts({"variants": latency_table(ms)})
    assert v["variant_latency_grows_as_table3"][0] == "PASS"
    # Table 3's own ratios beside ours: F1/F0 = 133.9 / 56.7 on the V100.
    assert "nfnet-f1 230 ms (2.30× F0; Table 3: TPUV3" in v["variant_latency_grows_as_table3"][1]
    assert "V100 2.36×" in v["variant_latency_grows_as_table3"][1]
    assert v["bn_nfnet_slower_per_step"][0] == "PASS" and "1.30×" in v["bn_nfnet_slower_per_step"][1]
    # Overlapping timed steps decide nothing; a BN median not slower fails.
    v = verdicts({"variants": latency_table({**ms, ("nfnet-bn", "nfnet-f0"): (110, 100, 120)})})
    assert v["bn_nfnet_slower_per_step"][0] == "INCONCLUSIVE"
    v = verdicts({"variants": latency_table({**ms, ("nfnet-bn", "nfnet-f0"): (90, 85, 95)})})
    assert v["bn_nfnet_slower_per_step"][0] == "FAIL"
    v = verdicts({"variants": latency_table({**ms, ("nfnet", "nfnet-f2"): (200, 190, 210)})})
    assert v["variant_latency_grows_as_table3"][0] == "FAIL"


def signal_table(profile: dict) -> pd.DataFrame:
    """Signal rows from {label: [(resets, grows), ...] per seed}."""
    return pd.DataFrame([{"grid": "signal", "run_id": f"{label}-s{i}", "label": label, "status": "done",
                          "cfg.task": "signal", "cfg.model": label, "signal_var_last": 1.0 + 0.01 * i,
                          "signal_mean_shift_max": 0.01, "resets_at_transitions": r, "grows_within_stages": g}
                         for label, seeds in profile.items() for i, (r, g) in enumerate(seeds)])


def test_signal_claim():
    good = {"nf-resnet": [(True, True)] * 3, "bn-resnet": [(True, True)] * 3}
    assert verdicts({"signal": signal_table(good)})["nf_signal_tracks_bn"][0] == "PASS"
    bad = {**good, "nf-resnet": [(True, True), (False, True), (True, True)]}
    v = verdicts({"signal": signal_table(bad)})["nf_signal_tracks_bn"]
    assert v[0] == "FAIL" and "resets at transitions 2/3" in v[1]
    short = {**good, "bn-resnet": [(True, True)] * 2}
    assert verdicts({"signal": signal_table(short)})["nf_signal_tracks_bn"][0] == "INCONCLUSIVE"

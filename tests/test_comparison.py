"""The comparison with the published numbers: accuracy compared only where the recipe matches,
latency never judged across hardware, structure to the printed digits."""

import pandas as pd
import pytest

from study.analysis import comparison
from study.analysis.columns import axis, cfg
from tests.test_claims import STABLE, agc_table

EMPTY = pd.DataFrame(columns=["model", "params", "macs", "resolution"])
AXES = {"agc": ["agc", "batch_size"]}


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
              "agc": agc_table(STABLE).assign(**{axis("agc"): lambda d: d[cfg("agc")],
                                                 axis("batch_size"): lambda d: d[cfg("batch_size")]})}
    comp = comparison.build(tables, {}, AXES, struct)
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
    comp = comparison.build({"variants": lat}, {}, {}, EMPTY)
    rows = comp[(comp["section"] == "latency") & (comp["item"] == "nfnet-f0")]
    assert set(rows["published"]) == {73.3, 56.7}
    assert (rows["ours"] == 812.5).all() and (rows["hardware_ours"] == "cpu, batch 1, 192 px, float32").all()
    assert (rows["verdict"] == "reference only: different hardware").all()
    f7 = comp[(comp["section"] == "latency") & (comp["item"] == "nfnet-f7")]
    assert f7["verdict"].str.startswith("missing").all()


# --- rendering ----------------------------------------------------------------------------------


def test_structure_rows_match_table3_to_the_printed_digits():
    from tests.test_counts import COUNTS

    struct = pd.DataFrame([dict(model=k, params=p, macs=m, resolution=r) for k, (p, m, r) in COUNTS.items()])
    rows = comparison.structure_rows(struct)
    assert len(rows) == 14 and all(r["delta"] == 0 for r in rows)

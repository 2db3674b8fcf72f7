"""The results table: one typed row per run, columns named by study.analysis.columns."""

from pathlib import Path

import pandas as pd

from study.analysis import results
from study.analysis.columns import axis, cfg, knob
from study.grids import grid

GRIDS = Path(__file__).resolve().parent.parent / "ablations"


def test_unlaunched_grid_rows_match_the_results_table(tmp_path):
    g = grid.load(GRIDS / "agc.yaml", "smoke", check_paths=False)
    planned, real = results.table(g, tmp_path, count=False), results.table(g, tmp_path)
    assert set(planned.columns) <= set(real.columns) and {"params", "macs"} <= set(real.columns) - set(planned.columns)
    cols = list(planned.columns)
    pd.testing.assert_frame_equal(planned[cols], real[cols], check_dtype=False)
    assert (real["status"] == "missing").all()


def test_values_keep_their_types(tmp_path):
    g = grid.load(GRIDS / "width.yaml", "smoke", check_paths=False)
    df = results.table(g, tmp_path, count=False)
    assert df[cfg("agc")].map(type).eq(bool).all()  # a bool stays a bool (no "true" strings)
    assert df[cfg("agc_exclude")].eq("['head/kernel']").all()  # a list becomes its str
    assert set(df[knob("width_pattern")]) == {"nfnet", "resnet"} and axis("model.width_mult") in df.columns

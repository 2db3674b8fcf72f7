"""The benchmark's machinery on a tiny plan (no timing assertions: speed targets are checked by
`make bench`, never by timed unit tests). The PyTorch side is a stand-in speaking the same
protocol, so the test needs neither the 5 GB torch environment nor minutes of compilation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STUB = textwrap.dedent('''
    import json, sys, time
    from flax import nnx
    from study import models

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "setup":
            net = nnx.eval_shape(lambda: models.create(cmd["model"], rngs=nnx.Rngs(0),
                                                        convention="timm"))
            reply = {"params": models.count_params(net), "first_step_s": 0.01, "threads": 1}
        elif cmd["cmd"] == "run":
            reply = {"times": [0.01] * cmd["steps"]}
        elif cmd["cmd"] == "peak":
            reply = {"matmul": 1e9, "conv": 1e9}
        elif cmd["cmd"] == "quit":
            break
        else:
            reply = {"error": "unsupported"}
        print(json.dumps(reply), flush=True)
''')


FIRST_STEP = {"dataset": "synthetic", "synthetic_size": 128, "batch_size": 16, "steps": 2,
              "log_every": 1, "eval_every": 100, "eval_batch_size": 64}


def test_bench_writes_the_four_keys(tmp_path):
    stub = tmp_path / "stub_torch.py"
    stub.write_text(STUB)
    plan = [{"model": "nf-resnet-nano", "resolution": 28, "batch": 8, "steps": 1, "rounds": 2,
             "agc_off": True, "data_wait_steps": 2}]
    out, md = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    r = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--plan", json.dumps(plan), "--out", str(out),
         "--markdown", str(md), "--runs-dir", str(tmp_path / "runs"), "--no-parity",
         "--torch-python", sys.executable, "--torch-script", str(stub), "--budget", "600",
         "--first-step", json.dumps(FIRST_STEP)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    for key in ("agc_overhead", "throughput_ratio_vs_torch", "data_wait_fraction", "mfu_conv"):
        assert isinstance(res[key], float) and math.isfinite(res[key]), (key, res[key])
    assert res["throughput_ratio_vs_torch"] > 0
    assert -1 < res["agc_overhead"] < 10
    assert 0 <= res["data_wait_fraction"] <= 1
    assert 0 < res["mfu_conv"] < 10
    row = res["throughput"][0]
    assert row["params"] > 0 and row["images_per_s"]["jax"] > 0
    assert res["grid"]["status"].startswith("not measured")  # no launches.jsonl in tmp runs
    assert res["grid_cpu_utilisation"] is None and res["grid_compile_s_cached"] is None
    # The second run of the same step reused every exported trace (here, with one micro-batch,
    # the gradient fused with the optimizer step, and the evaluation).
    fs = res["first_step"]
    assert fs["cached"]["reused_traces"] == 2 and fs["cold"]["reused_traces"] == 0
    assert res["compile_s_cached"] == fs["first_step_s_cached"] >= 0
    assert "## First step" in md.read_text()
    assert res["agc_overhead_by_model"] == {"nf-resnet-nano 28px batch 8": res["agc_overhead"]}
    assert {d["dataset"] for d in res["data"]} == {"fashion_mnist", "imagenet"}
    text = md.read_text()
    assert "## Targets" in text and res["machine"]["cpu"] in text


def test_grid_compile_times_split_cold_from_cached_runs(tmp_path):
    """A run is cached when it started after the first run of its compiled step had compiled."""
    import os

    from bench import grid_wall

    def run(name: str, start: float, compile_s: float, lam: float, seed: int) -> None:
        d = tmp_path / name
        d.mkdir()
        (d / "result.json").write_text(json.dumps({"compile_s": compile_s, "step_time_ms": 500.0}))
        (d / "config.json").write_text(json.dumps({"model": "m", "agc_clipping": lam, "seed": seed}))
        os.utime(d / "config.json", (start, start))

    run("a0", 1000.0, 40.5, 0.01, 0)  # cold: the first of λ 0.01
    run("b0", 1001.0, 30.5, 0.16, 0)  # cold: another λ is another compiled step
    run("a1", 1010.0, 35.5, 0.01, 1)  # cold: started while a0 was still compiling
    run("a2", 1050.0, 2.5, 0.01, 2)   # cached
    run("b1", 1040.0, 4.5, 0.16, 1)   # cached
    t = grid_wall.compile_times(tmp_path)
    assert (t["compile_runs_cold"], t["compile_runs_cached"]) == (3, 2)
    assert t["compile_s_cold"] == 35.0 and t["compile_s_cached"] == 3.0 and t["compile_s_cached_max"] == 4.0


def test_agc_alone_updates_match_their_definitions():
    """bench/agc_alone.py times what it says: AGC alone is the study's AGC, SGD is p − lr·(g + wd·p),
    and the chain applies SGD to the clipped gradients (checked on nf-resnet-nano's shapes)."""
    import jax
    import numpy as np

    from bench import agc_alone
    from study.engine import agc

    params, grads, n = agc_alone.tensors("nf-resnet-nano")
    assert n == sum(x.size for x in jax.tree.leaves(params))
    f = agc_alone.updates()
    clip = agc.adaptive_grad_clip(0.01)
    clipped = clip.update(grads, clip.init(params), params)[0]
    for got, want in zip(jax.tree.leaves(f["agc"](grads, params)), jax.tree.leaves(clipped)):
        np.testing.assert_array_equal(got, want)
    chained, p, g = (jax.tree.leaves(f["agc+sgd"](grads, params)), jax.tree.leaves(params),
                     jax.tree.leaves(clipped))
    for got, pl, gl in zip(chained, p, g):
        np.testing.assert_allclose(got, pl - 0.1 * (gl + 5e-5 * pl), rtol=1e-6, atol=1e-7)
    assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(g, jax.tree.leaves(grads)))  # λ bites
    assert set(agc_alone.measure("nf-resnet-nano", 1)) == {"agc", "sgd", "agc+sgd"}

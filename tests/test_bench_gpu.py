"""`python -m bench.gpu --tiny` on CPU: the GPU benchmark's code paths, no timing assertions.

The torch side is tests/test_bench.py's stand-in (same JSON-lines protocol), so the test needs
neither .venv-torch nor a GPU; the short-deadline run uses the default torch Python instead,
which also covers a missing torch (the side recorded as skipped, not a failure)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from flax import nnx

from bench import gpu
from study import models

ROOT = Path(__file__).resolve().parent.parent

# tests/test_bench.py's stand-in, lighter: the parameter counts are computed here, so the four
# worker processes do not each import JAX (that alone took longer than the run on 2 cores).
STUB = textwrap.dedent("""
    import json, sys
    PARAMS = {params!r}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "setup":
            reply = {{"params": PARAMS[cmd["model"]], "first_step_s": 0.01, "threads": 1}}
        elif cmd["cmd"] == "run":
            reply = {{"times": [0.01] * cmd["steps"]}}
        elif cmd["cmd"] == "quit":
            break
        else:
            reply = {{"error": "unsupported"}}
        print(json.dumps(reply), flush=True)
""")


def _stub(tmp_path: Path) -> Path:
    params = {c.model: models.count_params(nnx.eval_shape(
        lambda m=c.model: models.create(m, rngs=nnx.Rngs(0), convention="timm")))
        for c in gpu.plan(tiny=True)}
    path = tmp_path / "stub_torch.py"
    path.write_text(STUB.format(params=params))
    return path


def _run(tmp_path: Path, *extra: str) -> tuple[dict, Path]:
    out, md = tmp_path / "results-gpu.json", tmp_path / "BENCHMARKS.md"
    r = subprocess.run([sys.executable, "-m", "bench.gpu", "--tiny", "--out", str(out),
                        "--markdown", str(md), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text()), md


def _numbers(d: object):
    if isinstance(d, dict):
        for v in d.values():
            yield from _numbers(v)
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        yield d


def test_tiny_run_measures_every_side_and_rewrites_only_its_section(tmp_path):
    stub = _stub(tmp_path)
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n\nthe CPU tables\n")
    res, md = _run(tmp_path, "--torch-python", sys.executable, "--torch-script", str(stub))
    assert res["mode"] == "tiny" and "jax" in res["versions"]
    assert [c["key"] for c in res["cases"]] == ["f0", "r50"]
    for c in res["cases"]:
        assert c["params"] > 0 and "skipped" not in c and not c.get("notes"), c
        assert set(c["sides"]) == {"jax", "torch_compile", "torch_eager"}
        for side in c["sides"].values():
            assert {"median_step_ms", "images_per_s", "compile_s", "steps_timed"} <= set(side)
            assert all(x > 0 for x in _numbers(side)), side
        assert set(c["jax_speedup_vs"]) == {"torch_compile", "torch_eager"}
        assert all(x > 0 for x in c["jax_speedup_vs"].values())
    assert [t["status"] for t in res["targets"]].count("not measured") == 0
    assert all(t["status"] in ("met", "not met") for t in res["targets"])

    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nthe CPU tables\n")
    assert text.count(gpu.BEGIN) == 1 and text.count(gpu.END) == 1 and "## GPU" in text
    gpu.write_markdown(res, md)  # idempotent: a second write replaces the block
    gpu.write_markdown(None, md)  # and another content replaces it too
    again = md.read_text()
    assert again.count(gpu.BEGIN) == 1 and again.count("## GPU") == 1
    assert again.startswith("# Benchmarks\n\nthe CPU tables\n") and "Not yet run" in again
    gpu.write_markdown(res, md)
    assert md.read_text() == text


def test_too_short_a_deadline_records_skipped_rows(tmp_path):
    res, md = _run(tmp_path, "--deadline-s", "1")
    assert [c["key"] for c in res["cases"]] == ["f0", "r50"]
    assert all("deadline" in c["skipped"] for c in res["cases"]), res["cases"]
    assert all(t["status"] == "not measured" for t in res["targets"])
    assert md.read_text().count(gpu.BEGIN) == 1

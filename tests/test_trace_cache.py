"""Exported traces: a later process reuses a step's trace and computes exactly what tracing would."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from study.engine import trace_cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDY_JAX_CACHE", str(tmp_path / "jax"))
    return tmp_path / "jax-exported"


def make_step(traced):
    def step(state, extra, x):
        traced.append(1)  # runs only while tracing
        key, sub = jax.random.split(state["key"])
        noise = jax.random.normal(sub, x.shape)
        w = state["w"] + x.sum() + (0.0 if extra is None else extra)
        return {"w": w, "key": key}, {"noise": noise, "n": state["n"] + 1} | {"n_in": state["n"]}

    return step


def fresh_state():
    return {"w": jnp.arange(3.0), "key": jax.random.key(7), "n": jnp.int32(0)}


def test_a_new_wrapper_reuses_the_trace_and_gives_the_same_values(cache):
    traced = []
    first = trace_cache.cached_jit(make_step(traced), "step", "cfg-a", donate=0)
    x = jnp.ones((4,))
    s1, m1 = first(fresh_state(), None, x)
    assert len(traced) == 1 and len(list(cache.glob("step-*.bin"))) == 1
    # A new wrapper stands for a new process: it loads the file and never traces.
    again = trace_cache.cached_jit(make_step(traced), "step", "cfg-a", donate=0)
    s2, m2 = again(fresh_state(), None, x)
    assert len(traced) == 1
    plain_s, plain_m = jax.jit(make_step([]))(fresh_state(), None, x)
    for a, b, c in zip(jax.tree.leaves((s1, m1)), jax.tree.leaves((s2, m2)), jax.tree.leaves((plain_s, plain_m))):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b, c = (jax.random.key_data(k) for k in (a, b, c))
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert jax.dtypes.issubdtype(s2["key"].dtype, jax.dtypes.prng_key)  # keys come back as keys


def test_another_key_structure_or_shape_is_traced_anew(cache):
    traced = []
    trace_cache.cached_jit(make_step(traced), "step", "cfg-a")(fresh_state(), None, jnp.ones(4))
    trace_cache.cached_jit(make_step(traced), "step", "cfg-b")(fresh_state(), None, jnp.ones(4))
    f = trace_cache.cached_jit(make_step(traced), "step", "cfg-a")
    f(fresh_state(), jnp.float32(2.0), jnp.ones(4))  # None → an array: another structure
    f(fresh_state(), None, jnp.ones(5))  # another shape
    assert len(traced) == 4 and len(list(cache.glob("step-*.bin"))) == 4


def test_a_torn_file_costs_a_trace_not_a_wrong_result(cache):
    traced = []
    f = trace_cache.cached_jit(make_step(traced), "step", "cfg-a")
    want = f(fresh_state(), None, jnp.ones(4))[0]["w"]
    (path,) = cache.glob("step-*.bin")
    path.write_bytes(path.read_bytes()[:100])
    got = trace_cache.cached_jit(make_step(traced), "step", "cfg-a")(fresh_state(), None, jnp.ones(4))[0]["w"]
    assert len(traced) == 2
    np.testing.assert_array_equal(want, got)


def test_off_means_plain_jit(monkeypatch):
    monkeypatch.setenv("STUDY_JAX_CACHE", "off")
    assert trace_cache.directory() is None
    traced = []
    f = trace_cache.cached_jit(make_step(traced), "step", "cfg-a")
    f(fresh_state(), None, jnp.ones(4))
    f(fresh_state(), None, jnp.ones(4))
    assert len(traced) == 1


ARGS = ["dataset=synthetic", "synthetic_size=256", "batch_size=32", "accum_steps=4", "steps=4",
        "log_every=1", "eval_every=2", "eval_batch_size=64"]


def train(workdir, seed, env):
    args = [sys.executable, "-m", "study.cli", "train", "--workdir", str(workdir)]
    for s in [*ARGS, f"seed={seed}"]:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return r.stderr, [{k: v for k, v in row.items() if k != "images_per_s"} for row in rows]


def test_a_later_run_of_the_grid_reuses_the_traces_and_trains_identically(tmp_path):
    import os

    on = {**os.environ, "STUDY_JAX_CACHE": str(tmp_path / "jax")}
    off = {**os.environ, "STUDY_JAX_CACHE": "off"}
    log, _ = train(tmp_path / "seed0", 0, on)
    kept = sorted(p.name for p in (tmp_path / "jax-exported").iterdir())
    # the first micro-batch (no gradient sum yet), the middle ones, the last one fused with the
    # optimizer step, the evaluation
    assert len(kept) == 4 and "reusing" not in log
    log, cached = train(tmp_path / "seed1", 1, on)  # another seed: the same traces
    assert sorted(p.name for p in (tmp_path / "jax-exported").iterdir()) == kept
    assert log.count("reusing the traced") == 4
    _, traced = train(tmp_path / "seed1-off", 1, off)
    assert cached == traced and len(cached) == 4 + 2

"""Training engine: accumulation exactness, multi-device, kill/resume, divergence, bad configs."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from study import config as config_lib
from study import models
from study.engine import optim
from tests.helpers import corrupt_checkpoint, tensorboard_scalars
from study.engine.step import make_train_step, split_model

SMOKE = ["dataset=synthetic", "synthetic_size=512", "batch_size=32", "log_every=1",
         "eval_every=10", "checkpoint_every=5", "steps=24", "model.stochdepth_rate=0.1"]


def study(workdir, *sets, env=None, check=True, **kw):
    args = [sys.executable, "-m", "study.cli", "train", "--workdir", str(workdir)]
    for s in sets:
        args += ["--set", s]
    e = dict(os.environ, **(env or {}))
    r = subprocess.run(args, capture_output=True, text=True, env=e, **kw)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def rows(workdir, kind="train"):
    out = []
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == kind:
            row.pop("images_per_s", None)
            out.append(row)
    return out


def final_state(workdir):
    ckpt = Path(workdir) / "checkpoints"
    step = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    return ocp.StandardCheckpointer().restore((ckpt / str(step) / "state").absolute())


def test_accumulation_4x64_equals_1x256():
    cfg = config_lib.resolve({"agc_clipping": 0.001, "weight_decay": 1e-4,
                              "model.dropout": 0.0, "model.stochdepth_rate": 0.0})
    model = models.create("nf-resnet-nano", rngs=nnx.Rngs(0))
    g, _, params, rest = split_model(model)
    lr = optim.schedule(cfg, 10.0, 100)
    tx = optim.optimizer(cfg, lr)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(256, 28, 28, 1), dtype=np.uint8)
    y = rng.integers(0, 10, size=256).astype(np.int32)
    step = make_train_step(g, tx, lr, num_classes=10, label_smoothing=0.1,
                           ema_decay=0.99, mean=(0.3,), std=(0.3,))
    out = {}
    for accum in (1, 4):
        fresh = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731 - the step donates its state
        state = dict(params=fresh(params), rest=fresh(rest), opt=tx.init(params),
                     ema=fresh(params), step=jnp.asarray(5, jnp.int32))
        # Two steps, so momentum and the second AGC decision see the accumulated update too.
        batch = {"image": x.reshape(accum, 256 // accum, 28, 28, 1), "label": y.reshape(accum, -1)}
        state, m1 = step(state, batch)
        state, m2 = step(state, batch)
        out[accum] = (state, m1, m2)
    (s1, a1, b1), (s4, a4, b4) = out[1], out[4]
    assert float(a1["clip_fraction"]) > 0.05  # AGC really acts
    for k in ("loss", "grad_norm", "clip_fraction"):
        np.testing.assert_allclose(a4[k], a1[k], rtol=2e-5)
        np.testing.assert_allclose(b4[k], b1[k], rtol=2e-5)
    agc1, agc4 = s1["opt"][0], s4["opt"][0]
    assert int(agc1.clipped) == int(agc4.clipped)  # identical AGC decisions
    for p1, p4 in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s4["params"])):
        np.testing.assert_allclose(p4, p1, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["nf-resnet-nano", "resnet-nano"])
def test_train_state_is_plain_arrays_and_the_graph_rebuilds_the_module(name):
    model = models.create(name, rngs=nnx.Rngs(params=0, dropout=1))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 28, 28, 1)), jnp.float32)
    model.eval()
    want = model(x)
    g_train, g_eval, params, rest = split_model(model)
    # No nnx Variable anywhere in the state: every jitted call flattens it.
    is_var = lambda v: isinstance(v, nnx.Variable)  # noqa: E731
    assert not any(map(is_var, jax.tree.leaves((params, rest), is_leaf=is_var)))
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves((params, rest)))
    np.testing.assert_array_equal(g_eval.merge(params, rest)(x), want)
    # One train step returns a state of the same structure, so the next call reuses its trace.
    cfg = config_lib.resolve({"model": name})
    lr = optim.schedule(cfg, 10.0, 100)
    tx = optim.optimizer(cfg, lr)
    state = dict(params=params, rest=rest, opt=tx.init(params), ema=jax.tree.map(jnp.copy, params),
                 step=jnp.zeros((), jnp.int32))
    before = jax.tree.structure(state)
    step = make_train_step(g_train, tx, lr, num_classes=10, label_smoothing=0.1, ema_decay=0.99,
                           mean=(0.3,), std=(0.3,))
    batch = {"image": np.zeros((1, 8, 28, 28, 1), np.uint8), "label": np.zeros((1, 8), np.int32)}
    state, _ = step(state, batch)
    assert jax.tree.structure(state) == before


def test_smoke_run_writes_the_run_directory(tmp_path):
    r = study(tmp_path / "run", *SMOKE)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["steps"] == 24
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
    assert result["step_time_ms"] > 0 and result["compile_s"] > 0
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["packages"]["jax"] == jax.__version__ and env["device_kind"]
    assert "commit" in env["git"] and "dirty" in env["git"]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"] == "nf-resnet-nano" and cfg["model_overrides"] == {"stochdepth_rate": 0.1}
    train = rows(tmp_path / "run")
    assert [r["step"] for r in train] == list(range(1, 25))
    assert {"loss", "lr", "grad_norm", "clip_fraction"} <= set(train[0])
    evals = rows(tmp_path / "run", "eval")
    assert [r["step"] for r in evals] == [10, 20, 24]
    # The EMA is evaluated once, at the last step: that is the value result.json reports.
    assert ["ema_top1" in r for r in evals] == [False, False, True]
    assert result["ema_top1"] == evals[-1]["ema_top1"] and result["top1"] == evals[-1]["top1"]
    # TensorBoard's own reader sees every logged scalar beside metrics.jsonl.
    tb = tensorboard_scalars(tmp_path / "run")
    assert [s for s, _ in tb["train/loss"]] == list(range(1, 25))
    np.testing.assert_allclose([v for _, v in tb["train/loss"]], [r["loss"] for r in train], rtol=1e-6)
    assert [s for s, _ in tb["eval/top1"]] == [10, 20, 24]
    assert [s for s, _ in tb["eval/ema_top1"]] == [24]
    # Relaunching a finished run trains nothing.
    t = (tmp_path / "run" / "metrics.jsonl").read_text()
    study(tmp_path / "run", *SMOKE)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == t


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path):
    study(tmp_path / "a", *SMOKE)
    kill_after = random.Random(os.getpid()).randint(6, 20)
    args = [sys.executable, "-m", "study.cli", "train", "--workdir", str(tmp_path / "b")]
    for s in SMOKE:
        args += ["--set", s]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "b" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert json.loads((tmp_path / "b" / "result.json").read_text())["status"] == "running"
    study(tmp_path / "b", *SMOKE)
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert rows(tmp_path / "a", "eval") == rows(tmp_path / "b", "eval")
    # The killed attempt's steps past its checkpoint are purged from TensorBoard too.
    assert tensorboard_scalars(tmp_path / "a")["train/loss"] == tensorboard_scalars(tmp_path / "b")["train/loss"]
    sa, sb = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
        np.testing.assert_array_equal(x, y)


def test_sigterm_checkpoints_and_corrupt_newest_falls_back(tmp_path):
    args = [sys.executable, "-m", "study.cli", "train", "--workdir", str(tmp_path / "c")]
    for s in SMOKE[:-2] + ["checkpoint_every=100", "steps=400"]:
        args += ["--set", s]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "c" / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 8):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 128 + signal.SIGTERM
    steps = sorted(int(d.name) for d in (tmp_path / "c" / "checkpoints").iterdir() if d.name.isdigit())
    assert len(steps) == 1 and steps[0] >= 8  # saved at the interruption
    result = json.loads((tmp_path / "c" / "result.json").read_text())
    assert result["status"] == "interrupted" and result["steps"] == steps[0]
    # A corrupt newest checkpoint: the resume falls back to the previous one (here: none →
    # a fresh start is not acceptable, so make two checkpoints first).
    study(tmp_path / "d", *SMOKE[:-1], "steps=10")  # checkpoints at 5 and 10
    corrupt_checkpoint(tmp_path / "d" / "checkpoints", 10)
    (tmp_path / "d" / "result.json").write_text('{"status": "running"}')
    from study.engine.checkpoint import Checkpointer  # noqa: PLC0415

    restored = Checkpointer(tmp_path / "d" / "checkpoints", 2)
    assert sorted(restored.mngr.all_steps()) == [5, 10]
    r = study(tmp_path / "d", *SMOKE[:-1], "steps=10")
    assert "resumed from step 5" in r.stderr


def test_divergence_is_a_result_not_a_crash(tmp_path):
    r = study(tmp_path / "div", *SMOKE, "agc=false", "base_lr=1e4", "steps=50")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    result = json.loads((tmp_path / "div" / "result.json").read_text())
    assert result["status"] == "diverged" and result["steps"] < 50
    assert result["reason"] and "loss" in result["last_metrics"]


@pytest.mark.parametrize("bad, key", [
    ("lr=0.1", "lr"), ("base_lr=-1", "base_lr"), ("batch_size=100", "batch_size"),
    ("model=nfnet-f99", "model"), ("model.se_ratoi=0", "model.se_ratoi"),
    ("data_dir=/nonexistent", "data_dir"), ("agc=maybe", "agc"), ("epochs=-1", "epochs"),
])
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, bad, key):
    extra = ["accum_steps=3"] if key == "batch_size" else []
    r = study(tmp_path / "bad", "dataset=synthetic", *extra, bad, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}"), r.stderr
    assert not (tmp_path / "bad").exists()


def test_missing_fashion_mnist_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    r = study(tmp_path / "run", f"data_dir={tmp_path / 'empty'}", check=False)
    assert r.returncode == 2 and "dataset-fashion-mnist" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_four_devices_give_the_same_losses_as_one(tmp_path):
    sets = [*SMOKE[:-2], "steps=6", "checkpoint_every=100", "model.stochdepth_rate=0.0",
            "model.dropout=0.0"]
    study(tmp_path / "one", *sets)
    study(tmp_path / "four", *sets, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    env = json.loads((tmp_path / "four" / "environment.json").read_text())
    assert env["device_count"] == 4
    a, b = rows(tmp_path / "one"), rows(tmp_path / "four")
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-5)
    np.testing.assert_allclose([r["grad_norm"] for r in b], [r["grad_norm"] for r in a], rtol=1e-4)


def make_jpeg_tree(root: Path, classes=("cat", "dog", "eel"), train=8, val=3) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(40, 90, size=2)
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i}.JPEG", quality=90)


def test_imagenet_folder_with_mixup_cutmix_randaugment_and_workers(tmp_path):
    make_jpeg_tree(tmp_path / "inet")
    study(tmp_path / "run", "dataset=imagenet", f"data_dir={tmp_path / 'inet'}", "model=nfnet-nano",
          "image_size=32", "eval_image_size=32", "steps=4", "batch_size=8", "eval_every=2",
          "eval_batch_size=4", "mixup_cutmix=true", "randaugment=[2, 9]", "data_workers=2",
          "accum_steps=2")
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "done" and result["steps"] == 4
    evals = rows(tmp_path / "run", "eval")
    assert len(evals) == 2 and all(0 <= r["top1"] <= 1 for r in evals)
    cfg = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert cfg["device_count"] >= 1


def test_batchnorm_resnet_trains_and_resumes_with_its_statistics(tmp_path):
    sets = [*SMOKE[:-1], "model=resnet-nano", "steps=40", "checkpoint_every=20", "eval_every=20"]
    study(tmp_path / "bn", *sets)
    state = final_state(tmp_path / "bn")
    stats = jax.tree.leaves(state["rest"]["stem_bn"]["mean"])[0]
    assert np.abs(np.asarray(stats)).sum() > 0  # running statistics updated and checkpointed
    result = json.loads((tmp_path / "bn" / "result.json").read_text())
    # Eval mode uses the running statistics; chance is 0.1 on this 10-class task.
    assert result["status"] == "done" and result["top1"] > 0.3, result


def test_cifar10_pickles(tmp_path):
    import pickle

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, 20))}
        (d / name).write_bytes(pickle.dumps(batch))
    study(tmp_path / "run", "dataset=cifar10", f"data_dir={d}", "steps=3", "batch_size=10",
          "eval_batch_size=20", "eval_every=3")
    env = json.loads((tmp_path / "run" / "config.json").read_text())
    assert env["dataset"] == "cifar10"
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "done"

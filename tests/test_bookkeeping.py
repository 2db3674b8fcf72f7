"""The trainer's bookkeeping helpers: periodic actions, step timing, divergence."""

import math

from study.engine.bookkeeping import Every, StepTimer, Throughput, divergence, train_metrics


def test_every_fires_at_multiples_and_at_the_last_step():
    every = Every(10, 25)
    assert [s for s in range(1, 26) if every(s)] == [10, 20, 25]
    assert [s for s in range(1, 4) if Every(1, 3)(s)] == [1, 2, 3]


def test_step_timer_keeps_the_compile_apart_and_survives_a_resume():
    t = StepTimer()
    for s in (5.0, 0.01, 0.03, 0.02):
        t.add(s)
    assert t.compile_s == 5.0 and math.isclose(t.step_ms(), 20.0)
    resumed = StepTimer(compile_s=5.0, step_ms=20.0)  # from the checkpoint's meta
    assert resumed.step_ms() == 20.0
    resumed.add(0.04)
    assert resumed.compile_s == 5.0 and math.isclose(resumed.step_ms(), 40.0)


def test_divergence_names_why():
    ok = {"loss": 2.0, "params_finite": True}
    assert divergence(ok, 1e3) is None
    assert divergence({**ok, "loss": float("nan")}, 1e3) == "non-finite loss"
    assert divergence({**ok, "loss": 5e3}, 1e3) == "loss 5000 > loss_bound"
    assert divergence({**ok, "params_finite": False}, 1e3) == "non-finite parameters"


def test_throughput_and_train_metrics():
    speed = Throughput(batch=32)
    speed.tick()
    speed.tick()
    assert speed.rate() > 0 and speed.n == 0
    assert train_metrics({"loss": 1.0, "top1": 0.5, "eval_step": 3}) == {"loss": 1.0}

"""In-memory sets read a whole batch per grain element: the same batches as the element pipeline."""

import numpy as np
import pytest

from study import config
from study.engine import input_pipeline
from study.engine.datasets import arrays
from study.engine.datasets import fashion_mnist as fm


def _both(**over):
    cfg = config.resolve({"dataset": "synthetic", "synthetic_size": 1000, "image_size": 8,
                          "batch_size": 96, "eval_batch_size": 64, "steps": 10, "seed": 3, **over})
    return (input_pipeline.build(cfg, batched=True), input_pipeline.build(cfg, batched=False))


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("accum", [1, 4])
def test_train_batches_are_the_element_pipelines_across_epochs(accum):
    new, old = _both(accum_steps=accum)
    # 1000 images, 96 a batch: epoch boundaries inside batches 10, 20, 31; each epoch reshuffled.
    for i in [0, 1, 9, 10, 11, 20, 31, 52, 104]:
        _same(new.train[i], old.train[i])
    assert not np.array_equal(new.train[0]["label"], new.train[11]["label"])


def test_eval_batches_are_the_element_pipelines_with_the_short_last_one():
    new, old = _both()
    got, want = list(input_pipeline.eval_batches(new)), list(input_pipeline.eval_batches(old))
    assert len(got) == len(want) == 4 and len(got[-1]["label"]) == 250 - 3 * 64
    for a, b in zip(got, want):
        _same(a, b)


def test_a_process_reads_its_stride_of_the_stream():
    x = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1)
    y = np.arange(50, dtype=np.int32)
    old = arrays.dataset(x, y, seed=7, shuffle=True).repeat(None)[1::2].batch(8, drop_remainder=True)
    new = arrays.Batches(x, y, batch=8, seed=7, shuffle=True, repeat=True, stride=2, offset=1)
    for i in range(9):
        _same(new[i], old[i])


def test_an_element_pipeline_checkpoint_resumes_on_the_batched_one():
    new, old = _both()
    it_old = input_pipeline.iterator(old)
    for _ in range(13):
        next(it_old)
    it_new = input_pipeline.iterator(new)
    it_new.set_state(it_old.get_state())
    for _ in range(3):
        _same(next(it_new), next(it_old))


@pytest.mark.skipif(not fm.DEFAULT_DIR.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_the_local_protocols_fashion_mnist_batches_are_unchanged():
    cfg = config.resolve({"dataset": "fashion_mnist", "image_size": 14, "batch_size": 4096,
                          "accum_steps": 4, "epochs": 2, "seed": 1})
    new, old = input_pipeline.build(cfg), input_pipeline.build(cfg, batched=False)
    for i in [0, 14, 15]:  # 60,000 / 4096: the first epoch ends inside batch 14
        _same(new.train[i], old.train[i])

import pickle

import numpy as np
import pytest

from study.engine.datasets import cifar10


def write_batch(path, data, labels):
    # As the official Python-2 pickles: bytes keys, CHW-flattened rows, a list of int labels.
    d = {b"batch_label": b"test", b"labels": [int(v) for v in labels], b"data": data,
         b"filenames": [b"x.png"] * len(labels)}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


@pytest.fixture
def tiny(tmp_path):
    d = tmp_path / cifar10.SUBDIR
    d.mkdir()
    rng = np.random.default_rng(0)
    batches = []
    for name in cifar10.FILES["train"] + cifar10.FILES["test"]:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=4)
        write_batch(d / name, data, labels)
        batches.append((data, labels))
    return tmp_path, batches


def test_reads_chw_rows_as_hwc(tiny):
    root, batches = tiny
    x, y = cifar10.load("train", root / cifar10.SUBDIR)
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    data = np.concatenate([b[0] for b in batches[:5]])
    # pixel (row r, column c) of channel k is data[k*1024 + r*32 + c]
    for i, r, c, k in [(0, 0, 0, 0), (3, 5, 7, 1), (19, 31, 31, 2), (11, 12, 3, 2)]:
        assert x[i, r, c, k] == data[i, k * 1024 + r * 32 + c]
    np.testing.assert_array_equal(y, np.concatenate([b[1] for b in batches[:5]]))
    xt, yt = cifar10.load("test", root)  # the parent of cifar-10-batches-py works too
    np.testing.assert_array_equal(xt.reshape(4, -1, 3).transpose(0, 2, 1).reshape(4, -1), batches[5][0])
    np.testing.assert_array_equal(yt, batches[5][1])


def test_seeded_shuffle_is_deterministic_and_a_permutation(tiny):
    root, _ = tiny
    def labels(seed):
        return [int(r["label"]) for r in cifar10.dataset("train", directory=root, seed=seed)]
    a, b, c = labels(3), labels(3), labels(4)
    assert a == b and a != c
    _, y = cifar10.load("train", root)
    assert sorted(a) == sorted(y.tolist())
    rec = cifar10.dataset("test", directory=root, shuffle=False)[0]
    assert rec["image"].shape == (32, 32, 3) and rec["image"].dtype == np.uint8
    assert rec["label"].dtype == np.int32


def test_missing_files_name_the_path(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="nope"):
        cifar10.load("train", tmp_path / "nope")
    root, _ = tiny
    (root / cifar10.SUBDIR / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        cifar10.load("train", root)
    with pytest.raises(ValueError, match="split"):
        cifar10.load("val", root)


def test_malformed_batch_is_rejected(tmp_path):
    write_batch(tmp_path / "test_batch", np.zeros((2, 100), np.uint8), [0, 1])
    with pytest.raises(ValueError, match="test_batch"):
        cifar10.load("test", tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"x": 1}, f)
    with pytest.raises(ValueError, match="b'data'"):
        cifar10.load("test", tmp_path)

import gzip
from pathlib import Path

import numpy as np
import pytest

from study.engine.datasets import fashion_mnist as fm


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(str(path) + (".gz" if gz else ""), "wb").write(data)


@pytest.fixture
def tiny(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    labels = np.arange(20, dtype=np.uint8) % 10
    write_idx(tmp_path / "train-images-idx3-ubyte", imgs, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, gz=False)
    return tmp_path, imgs, labels


def test_reads_gzipped_and_plain_idx(tiny):
    d, imgs, labels = tiny
    x, y = fm.load("train", d)
    assert x.shape == (20, 28, 28, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[..., 0], imgs)
    np.testing.assert_array_equal(y, labels)


def test_seeded_shuffle_is_deterministic_and_a_permutation(tiny):
    d, _, labels = tiny
    a = [int(r["label"]) for r in fm.dataset("train", directory=d, seed=3)]
    b = [int(r["label"]) for r in fm.dataset("train", directory=d, seed=3)]
    c = [int(r["label"]) for r in fm.dataset("train", directory=d, seed=4)]
    assert a == b and a != c
    assert sorted(a) == sorted(labels.tolist())


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fm.load("test", tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fm.load("train", tmp_path / "nope")
    with pytest.raises(ValueError, match="split"):
        fm.load("val", tmp_path)


def test_corrupt_file_is_rejected(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="header"):
        fm.read_idx(tmp_path / "t10k-images-idx3-ubyte")


@pytest.mark.skipif(not fm.DEFAULT_DIR.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_debian_files():
    x, y = fm.load("test")
    assert x.shape == (10_000, 28, 28, 1)
    assert np.bincount(y).tolist() == [1000] * 10
    x, y = fm.load("train")
    assert x.shape == (60_000, 28, 28, 1)
    assert abs(x.mean() / 255 - fm.MEAN) < 1e-3 and abs(x.std() / 255 - fm.STD) < 1e-3


def test_lower_resolution_is_an_exact_area_average_and_a_bad_one_is_refused():
    import pytest

    from study import config
    from study.engine.input_pipeline import downsample

    x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28, 1)
    y = downsample(x, 14)
    assert y.shape == (2, 14, 14, 1) and y.dtype == np.uint8
    assert y[1, 3, 5, 0] == np.round(x[1, 6:8, 10:12, 0].astype(float).mean())
    assert downsample(x, 0) is x and downsample(x, 28) is x
    with pytest.raises(config.ConfigError, match="image_size: fashion_mnist is 28 px"):
        config.resolve({"image_size": 9})
    assert config.resolve({"image_size": 7})["image_size"] == 7

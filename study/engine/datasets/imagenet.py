"""ImageNet (ILSVRC2012) as encoded JPEG bytes + label, from a folder tree or TFDS ArrayRecords.

The paper trains on the full train set (1,281,167 images) and reports accuracy on the 50,000
validation images (App. A.1; official ``dataset.py``: ``Split.TRAIN_AND_VALID`` = TFDS ``train``
and eval subset ``test`` = TFDS ``validation``). Records hold the *encoded* bytes, like the official
loader's ``tfds.decode.SkipDecoding()``: decoding, cropping and augmentation are grain transforms
(:mod:`study.datasets.preprocess`), so the crop can be taken while decoding.

Layouts (nothing is downloaded):

- ``"folder"``: ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` (the common
  "ImageFolder" arrangement; a flat ``val/`` must first be sorted into class folders). Labels are
  indices into the sorted class-folder names of ``root/train`` (of the split's own folder when
  there is no ``train/``), so for the synset folders ``n01440764`` .. they match TFDS labels.
- ``"array_record"``: a TFDS-prepared ``imagenet2012`` version folder holding
  ``imagenet2012-train.array_record-*`` and ``imagenet2012-validation.array_record-*``; each record
  is a serialized ``tf.train.Example`` with ``image`` (JPEG bytes) and ``label`` (int64), read by
  :func:`study.datasets.tf_example.parse_example` (no TensorFlow).
"""

from __future__ import annotations

import os
from pathlib import Path

import grain
import numpy as np

from study.engine.datasets.tf_example import parse_example

NUM_CLASSES = 1000
NUM_EXAMPLES = {"train": 1_281_167, "val": 50_000}
# split -> (folder name, TFDS split name); "validation" is accepted as an alias of "val".
SPLITS = {"train": ("train", "train"), "val": ("val", "validation")}
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
LAYOUTS = ("folder", "array_record")


def _split(split: str) -> str:
    split = "val" if split == "validation" else split
    if split not in SPLITS:
        raise ValueError(f"split: unknown {split!r}; valid: train, val (or validation)")
    return split


def classes(directory: str | os.PathLike, split: str = "train") -> list[str]:
    """Sorted class-folder names of the folder layout (label i is ``classes(...)[i]``)."""
    root = Path(directory)
    base = root / "train" if (root / "train").is_dir() else root / SPLITS[_split(split)][0]
    if not base.is_dir():
        raise FileNotFoundError(f"imagenet: directory {base} not found (expected root/train/<class>/*.JPEG)")
    names = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not names:
        raise FileNotFoundError(f"imagenet: no class folders in {base} (expected {base}/<class>/*.JPEG)")
    return names


def list_folder(split: str, directory: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """``(paths, int32 labels)`` of the folder layout, sorted by class then file name."""
    split = _split(split)
    d = Path(directory) / SPLITS[split][0]
    if not d.is_dir():
        raise FileNotFoundError(f"imagenet: directory {d} not found (expected {d}/<class>/*.JPEG)")
    names = classes(directory, split)
    index = {name: i for i, name in enumerate(names)}
    paths: list[str] = []
    labels: list[int] = []
    for sub in sorted(p for p in d.iterdir() if p.is_dir()):
        if sub.name not in index:
            raise ValueError(f"imagenet: class folder {sub} is not among the {len(names)} train classes")
        files = sorted(f for f in sub.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(f) for f in files]
        labels += [index[sub.name]] * len(files)
    if not paths:
        raise FileNotFoundError(f"imagenet: no images under {d} (expected {d}/<class>/*.JPEG)")
    return paths, np.asarray(labels, dtype=np.int32)


def array_record_files(split: str, directory: str | os.PathLike) -> list[str]:
    """The sorted TFDS shard files of ``split`` in a prepared ``imagenet2012/<version>`` folder."""
    d = Path(directory)
    pattern = f"*-{SPLITS[_split(split)][1]}.array_record*"
    files = sorted(str(p) for p in d.glob(pattern)) if d.is_dir() else []
    if not files:
        raise FileNotFoundError(f"imagenet: no {d / pattern} files (a TFDS-prepared imagenet2012 folder)")
    return files


def parse_record(serialized: bytes) -> dict[str, object]:
    """A TFDS imagenet2012 record -> ``{"image": JPEG bytes, "label": int32}``."""
    ex = parse_example(serialized)
    try:
        image, label = ex["image"], ex["label"]
        return {"image": bytes(image[0]), "label": np.int32(label[0])}
    except (KeyError, IndexError):
        raise ValueError(f"imagenet: record lacks image/label features (has {sorted(ex)})") from None


def dataset(
    split: str, *, directory: str | os.PathLike, layout: str = "folder", seed: int = 0,
    shuffle: bool = True,
) -> grain.MapDataset:
    """A grain ``MapDataset`` of ``{"image": encoded JPEG bytes, "label": int32}`` records.

    Shuffling is seeded and reshuffles every epoch; it permutes indices before any file is read.
    Follow with ``.random_map(preprocess.DecodeInceptionCrop(size))`` (train) or
    ``.map(preprocess.DecodeResizeCrop(size))`` (eval).
    """
    if layout == "folder":
        ds = grain.MapDataset.source(_FolderRecords(*list_folder(split, directory)))
    elif layout == "array_record":
        src = grain.sources.ArrayRecordDataSource(array_record_files(split, directory))
        ds = grain.MapDataset.source(src)
    else:
        raise ValueError(f"layout: unknown {layout!r}; valid: {', '.join(LAYOUTS)}")
    if shuffle:
        ds = ds.seed(seed).shuffle()
    return ds.map(parse_record) if layout == "array_record" else ds


class _FolderRecords:
    def __init__(self, paths: list[str], labels: np.ndarray):
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, object]:
        with open(self.paths[i], "rb") as f:
            return {"image": f.read(), "label": self.labels[i]}

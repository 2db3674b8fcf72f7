import io
import struct

import grain
import numpy as np
import pytest
from PIL import Image

from study.engine.datasets import imagenet
from study.engine.datasets.preprocess import DecodeInceptionCrop, DecodeResizeCrop
from study.engine.datasets.tf_example import parse_example

# --- a tiny protobuf encoder for tf.train.Example (the wire format, written independently) ---


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 negatives are 10-byte two's complement varints
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def ld(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def f_bytes(*values: bytes) -> bytes:
    return ld(1, b"".join(ld(1, v) for v in values))


def f_int64(*values: int, packed: bool = True) -> bytes:
    inner = (ld(1, b"".join(varint(v) for v in values)) if packed
             else b"".join(tag(1, 0) + varint(v) for v in values))
    return ld(3, inner)


def f_float(*values: float, packed: bool = True) -> bytes:
    inner = (ld(1, struct.pack(f"<{len(values)}f", *values)) if packed
             else b"".join(tag(1, 5) + struct.pack("<f", v) for v in values))
    return ld(2, inner)


def example(features: dict[str, bytes]) -> bytes:
    entries = b"".join(ld(1, ld(1, k.encode()) + ld(2, v)) for k, v in features.items())
    return ld(1, entries)


def test_parse_example_decodes_every_feature_kind():
    ser = example({
        "image": f_bytes(b"\xff\xd8jpeg", b""),
        "label": f_int64(417),
        "neg": f_int64(-1, -(2 ** 63), 2 ** 63 - 1, 0, packed=False),
        "packed_neg": f_int64(-5, 300),
        "f": f_float(0.5, -2.25),
        "fu": f_float(1.5, packed=False),
        "empty": b"",  # a Feature with no kind set
    })
    ex = parse_example(ser + tag(7, 0) + varint(99))  # an unknown trailing field is skipped
    assert ex["image"] == [b"\xff\xd8jpeg", b""]
    assert ex["label"].tolist() == [417] and ex["label"].dtype == np.int64
    assert ex["neg"].tolist() == [-1, -(2 ** 63), 2 ** 63 - 1, 0]
    assert ex["packed_neg"].tolist() == [-5, 300]
    assert ex["f"].tolist() == [0.5, -2.25] and ex["f"].dtype == np.float32
    assert ex["fu"].tolist() == [1.5]
    assert ex["empty"] == []
    with pytest.raises(ValueError, match="truncated"):
        parse_example(ser[:-3])


def test_parse_example_reads_what_the_protobuf_runtime_writes():
    """Cross-check with the real protobuf library, the tf.train.Example schema built at run time."""
    pb = pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    del pb
    T = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="tfex_test.proto", package="tfex", syntax="proto3")

    def message(name, fields, parent=None):
        m = (parent.nested_type if parent else fdp.message_type).add(name=name)
        for fname, num, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=num, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        return m

    rep, opt = T.LABEL_REPEATED, T.LABEL_OPTIONAL
    message("BytesList", [("value", 1, T.TYPE_BYTES, rep, None)])
    message("FloatList", [("value", 1, T.TYPE_FLOAT, rep, None)])
    message("Int64List", [("value", 1, T.TYPE_INT64, rep, None)])
    feat = message("Feature", [("bytes_list", 1, T.TYPE_MESSAGE, opt, ".tfex.BytesList"),
                               ("float_list", 2, T.TYPE_MESSAGE, opt, ".tfex.FloatList"),
                               ("int64_list", 3, T.TYPE_MESSAGE, opt, ".tfex.Int64List")])
    feat.oneof_decl.add(name="kind")
    for f in feat.field:
        f.oneof_index = 0
    feats = message("Features", [("feature", 1, T.TYPE_MESSAGE, rep, ".tfex.Features.FeatureEntry")])
    entry = message("FeatureEntry", [("key", 1, T.TYPE_STRING, opt, None),
                                     ("value", 2, T.TYPE_MESSAGE, opt, ".tfex.Feature")], parent=feats)
    entry.options.map_entry = True
    message("Example", [("features", 1, T.TYPE_MESSAGE, opt, ".tfex.Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    Example = message_factory.GetMessageClass(pool.FindMessageTypeByName("tfex.Example"))

    ex = Example()
    ex.features.feature["image"].bytes_list.value.append(b"\x00jpeg\xff" * 50)
    ex.features.feature["label"].int64_list.value.extend([999, -3])
    ex.features.feature["w"].float_list.value.extend([0.25, 3.0])
    got = parse_example(ex.SerializeToString())
    assert got["image"] == [b"\x00jpeg\xff" * 50]
    assert got["label"].tolist() == [999, -3] and got["w"].tolist() == [0.25, 3.0]
    # and our own encoder agrees with protobuf's reading of it
    back = Example.FromString(example({"label": f_int64(-7, 8), "image": f_bytes(b"ab")}))
    assert list(back.features.feature["label"].int64_list.value) == [-7, 8]
    assert list(back.features.feature["image"].bytes_list.value) == [b"ab"]


# --- a tiny ImageNet: real JPEG files of odd sizes -------------------------------------------

CLASSES = ("n01440764", "n01443537", "n02085620")
SIZES = ((57, 83), (83, 57), (40, 64))


def jpeg(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = np.add.outer(np.linspace(0, 255, h), np.linspace(0, 120, w))[..., None]
    img = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path):
    seed = 0
    for split, n in (("train", 3), ("val", 1)):
        for c in CLASSES:
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = SIZES[(seed + i) % len(SIZES)]
                (tmp_path / split / c / f"{c}_{i}.JPEG").write_bytes(jpeg(h, w, seed))
                seed += 1
    (tmp_path / "train" / CLASSES[0] / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_layout_lists_sorted_classes_and_reads_bytes(tree):
    assert imagenet.classes(tree) == list(CLASSES)
    paths, labels = imagenet.list_folder("train", tree)
    assert len(paths) == 9 and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(p.endswith(".JPEG") for p in paths)
    ds = imagenet.dataset("val", directory=tree, shuffle=False)
    assert len(ds) == 3
    rec = ds[2]
    assert rec["label"] == 2 and rec["label"].dtype == np.int32
    assert Image.open(io.BytesIO(rec["image"])).format == "JPEG"
    assert imagenet.dataset("validation", directory=tree, shuffle=False)[0]["image"] == ds[0]["image"]


def test_folder_shuffle_is_seeded(tree):
    def order(seed):
        return [r["image"] for r in imagenet.dataset("train", directory=tree, seed=seed)]
    assert order(1) == order(1) and order(1) != order(2)
    assert sorted(order(1)) == sorted(r["image"] for r in imagenet.dataset("train", directory=tree,
                                                                           shuffle=False))


def test_folder_errors_name_the_path(tree, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match=str(empty / "train")):
        imagenet.dataset("train", directory=empty)
    (tree / "val" / "n99999999").mkdir()
    with pytest.raises(ValueError, match="n99999999"):
        imagenet.list_folder("val", tree)
    with pytest.raises(ValueError, match="split"):
        imagenet.dataset("test", directory=tree)
    with pytest.raises(ValueError, match="layout"):
        imagenet.dataset("train", directory=tree, layout="tfrecord")


def test_array_record_layout_matches_the_folder(tree, tmp_path_factory):
    from array_record.python.array_record_module import ArrayRecordWriter

    out = tmp_path_factory.mktemp("tfds") / "imagenet2012" / "5.1.0"
    out.mkdir(parents=True)
    paths, labels = imagenet.list_folder("train", tree)
    # two shards, as TFDS writes them
    for shard, idx in enumerate((range(0, 5), range(5, 9))):
        name = f"imagenet2012-train.array_record-{shard:05d}-of-00002"
        w = ArrayRecordWriter(str(out / name), "group_size:1")
        for i in idx:
            data = open(paths[i], "rb").read()
            w.write(example({"image": f_bytes(data), "label": f_int64(int(labels[i])),
                             "file_name": f_bytes(b"x.JPEG")}))
        w.close()
    ds = imagenet.dataset("train", directory=out, layout="array_record", shuffle=False)
    folder = imagenet.dataset("train", directory=tree, shuffle=False)
    assert len(ds) == 9
    for i in range(9):
        assert ds[i]["image"] == folder[i]["image"] and ds[i]["label"] == folder[i]["label"]
        assert ds[i]["label"].dtype == np.int32
    shuffled = [int(r["label"]) for r in
                imagenet.dataset("train", directory=out, layout="array_record", seed=3)]
    assert sorted(shuffled) == labels.tolist()
    with pytest.raises(FileNotFoundError, match="validation"):
        imagenet.dataset("val", directory=out, layout="array_record")
    with pytest.raises(ValueError, match="image/label"):
        imagenet.parse_record(example({"label": f_int64(1)}))


def _batches(tree, workers: int) -> list[dict[str, np.ndarray]]:
    ds = (imagenet.dataset("train", directory=tree, seed=7)
          .random_map(DecodeInceptionCrop(16)).batch(2, drop_remainder=False))
    it_ds = ds.to_iter_dataset()
    if workers:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    it = iter(it_ds)
    try:
        return list(it)
    finally:
        it.close()  # worker processes go away now, not at interpreter exit


def test_worker_processes_give_the_same_batches(tree):
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain 0.2.18 reads an absl flag in workers (google/grain#1355)
    plain, multi = _batches(tree, 0), _batches(tree, 2)
    assert len(plain) == len(multi) == 5
    for a, b in zip(plain, multi):
        assert a["image"].shape[1:] == (16, 16, 3) and a["image"].dtype == np.uint8
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_eval_pipeline_over_the_tree(tree):
    ds = imagenet.dataset("val", directory=tree, shuffle=False).map(DecodeResizeCrop(24)).batch(3)
    batch = ds[0]
    assert batch["image"].shape == (3, 24, 24, 3) and batch["label"].tolist() == [0, 1, 2]

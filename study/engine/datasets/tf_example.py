"""A minimal decoder for serialized ``tf.train.Example`` protos, without TensorFlow.

TFDS stores each record of a prepared dataset (TFRecord or ArrayRecord files) as a serialized
``tf.train.Example`` (``tensorflow/core/example/example.proto`` + ``feature.proto``)::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }      # on the wire: repeated {1: key, 2: value}
    Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                            Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }

Only the protobuf wire format is needed (https://protobuf.dev/programming-guides/encoding/).
Repeated scalars are accepted packed or unpacked, as any protobuf parser must; unknown fields
are skipped.
"""

from __future__ import annotations

import struct

import numpy as np

Feature = list[bytes] | np.ndarray  # bytes_list -> list of bytes; float/int64 -> 1-D array


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("tf.train.Example: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("tf.train.Example: varint longer than 10 bytes")


def _fields(buf: bytes):
    """Yields ``(field_number, wire_type, value)``; value is an int (types 0/1/5) or bytes (2)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        else:  # groups (3/4) never occur in tf.train.Example
            raise ValueError(f"tf.train.Example: unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("tf.train.Example: truncated field")
        yield field, wire, value


def _int64s(buf: bytes) -> np.ndarray:
    out: list[int] = []
    for field, wire, value in _fields(buf):
        if field != 1:
            continue
        if wire == 2:  # packed
            pos = 0
            while pos < len(value):
                v, pos = _varint(value, pos)
                out.append(v)
        else:
            out.append(value)
    # int64 is two's complement in a 64-bit varint: negatives arrive as large unsigned values.
    return np.array([v - (1 << 64) if v >= 1 << 63 else v for v in out], dtype=np.int64)


def _floats(buf: bytes) -> np.ndarray:
    parts: list[bytes] = []
    for field, wire, value in _fields(buf):
        if field == 1:
            parts.append(value if wire == 2 else struct.pack("<I", value))
    return np.frombuffer(b"".join(parts), dtype="<f4").astype(np.float32)


def _feature(buf: bytes) -> Feature:
    kind: Feature = []
    for field, _, value in _fields(buf):
        if field == 1:
            kind = [v for f, _, v in _fields(value) if f == 1]
        elif field == 2:
            kind = _floats(value)
        elif field == 3:
            kind = _int64s(value)
    return kind  # an unset oneof decodes as an empty bytes list


def parse_example(serialized: bytes) -> dict[str, Feature]:
    """``{name: values}`` of one serialized ``tf.train.Example``.

    bytes_list features become ``list[bytes]``; float_list ``float32`` and int64_list ``int64``
    1-D arrays. For a map key given twice the last entry wins, as in protobuf.
    """
    out: dict[str, Feature] = {}
    for field, _, features in _fields(bytes(serialized)):
        if field != 1:
            continue
        for f, _, entry in _fields(features):
            if f != 1:
                continue
            key, value = "", b""
            for ef, _, ev in _fields(entry):
                if ef == 1:
                    key = ev.decode("utf-8")
                elif ef == 2:
                    value = ev
            out[key] = _feature(value)
    return out

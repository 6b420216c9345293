"""Helpers of the depth_limit tests: a TensorBoard event writer written from the format (varints, length-delimited
fields, TFRecord framing with a bit-by-bit CRC-32C), independent of the reader under test."""
from __future__ import annotations

import struct
from pathlib import Path


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _ld(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _event(step: int, wall: float, values: list[bytes], version: str | None = None) -> bytes:
    msg = _key(1, 1) + struct.pack("<d", wall) + _key(2, 0) + _varint(step)
    if version:
        msg += _ld(3, version.encode())
    if values:
        msg += _ld(5, b"".join(_ld(1, v) for v in values))
    return msg


def _simple(tag: str, value: float) -> bytes:
    return _ld(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value)


def _tensor(tag: str, value: float, how: str) -> bytes:
    meta = _ld(9, _ld(1, _ld(1, b"scalars")))  # SummaryMetadata.plugin_data.plugin_name
    if how == "float_val":
        t = _key(1, 0) + _varint(1) + _ld(2, b"") + _ld(5, struct.pack("<f", value))
    elif how == "double_content":
        t = _key(1, 0) + _varint(2) + _ld(2, b"") + _ld(4, struct.pack("<d", value))
    elif how == "double_val":
        t = _key(1, 0) + _varint(2) + _ld(6, struct.pack("<d", value))
    elif how == "string":  # a text summary: must be ignored
        t = _key(1, 0) + _varint(7) + _ld(8, b"hello")
    else:  # a 2-element float vector: not a scalar
        t = _key(1, 0) + _varint(1) + _ld(2, _ld(2, _key(1, 0) + _varint(2))) + _ld(5, struct.pack("<2f", 1, 2))
    return _ld(1, tag.encode()) + meta + _ld(8, t)


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _mask(_crc32c_bitwise(header))) + data + struct.pack("<I", _mask(_crc32c_bitwise(data)))


def write_event_file(path: Path, tag: str, values: list[float]) -> Path:
    """An event file with a version record and one simple_value scalar per step."""
    records = [_event(0, 0.0, [], version="brain.Event:2")]
    records += [_event(s + 1, float(s), [_simple(tag, v)]) for s, v in enumerate(values)]
    path.write_bytes(b"".join(_record(r) for r in records))
    return path

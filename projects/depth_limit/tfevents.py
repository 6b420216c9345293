"""A small reader of TensorBoard event files (for Omega histories of old runs), written from the formats.

Framing (TFRecord): every record is ``uint64 length`` (little endian), ``uint32 masked_crc32c(length bytes)``,
``length`` bytes of data, ``uint32 masked_crc32c(data)``; masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8
(mod 2^32), crc = CRC-32C (Castagnoli).

Data: a serialized ``Event`` protobuf: wall_time (field 1, double), step (2, int64), summary (5, Summary).
``Summary``: repeated Value (field 1). ``Value``: tag (1, string), simple_value (2, float), metadata (9),
tensor (8, TensorProto). ``TensorProto``: dtype (1; 1 = float, 2 = double, 19 = half), tensor_shape (2),
tensor_content (4, raw little-endian bytes), float_val (5), double_val (6), half_val (13). A value counts as a scalar
when it has a simple_value, or a float/double/half tensor with exactly one element (what tf.summary.scalar and
torch's SummaryWriter write).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from numba import njit

from shared.errors import UsageError

_MASK_DELTA = 0xA282EAD8


def _crc_table() -> np.ndarray:
    poly = 0x82F63B78  # reversed Castagnoli polynomial
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table[i] = c
    return table


_TABLE = _crc_table()


@njit(cache=True)
def _crc32c_kernel(data, table):
    crc = np.uint32(0xFFFFFFFF)
    for i in range(data.shape[0]):
        crc = table[(crc ^ np.uint32(data[i])) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
    return crc ^ np.uint32(0xFFFFFFFF)


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (crc32c(b"123456789") == 0xE3069283)."""
    return int(_crc32c_kernel(np.frombuffer(data, dtype=np.uint8), _TABLE))


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------------------
# protobuf wire format


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of a serialized message; value is int, bytes (wire 2) or raw bytes."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > n:
            raise ValueError("truncated field")
        yield field, wire, val


def _half_to_float(bits: int) -> float:
    return float(np.frombuffer(struct.pack("<H", bits & 0xFFFF), dtype=np.float16)[0])


def _tensor_scalar(buf: bytes) -> float | None:
    dtype = 0
    content = b""
    floats: list[float] = []
    dims: list[int] = []
    for field, wire, val in _fields(buf):
        if field == 1 and wire == 0:
            dtype = val
        elif field == 2 and wire == 2:  # TensorShapeProto: repeated Dim (field 2) with size (field 1)
            for f2, w2, v2 in _fields(val):
                if f2 == 2 and w2 == 2:
                    size = 0
                    for f3, w3, v3 in _fields(v2):
                        if f3 == 1 and w3 == 0:
                            size = v3 - (1 << 64) if v3 >= 1 << 63 else v3
                    dims.append(size)
        elif field == 4 and wire == 2:
            content = val
        elif field == 5:  # float_val, packed (wire 2) or not (wire 5)
            floats.extend(struct.unpack(f"<{len(val) // 4}f", val))
        elif field == 6:  # double_val
            floats.extend(struct.unpack(f"<{len(val) // 8}d", val))
        elif field == 13:  # half_val: int32 varints holding the float16 bits
            if wire == 0:
                floats.append(_half_to_float(val))
            elif wire == 2:
                p = 0
                while p < len(val):
                    v, p = _varint(val, p)
                    floats.append(_half_to_float(v))
    if dtype not in (1, 2, 19) or int(np.prod(dims)) != 1:
        return None
    if content:
        fmt, size = {1: ("<f", 4), 2: ("<d", 8), 19: ("<e", 2)}[dtype]
        if len(content) != size:
            return None
        return float(struct.unpack(fmt, content)[0])
    return float(floats[0]) if len(floats) == 1 else None


def parse_event(data: bytes) -> tuple[float, int, list[tuple[str, float]]]:
    """(wall_time, step, [(tag, value), ...] for the scalar values in the event's summary)."""
    wall, step, scalars = 0.0, 0, []
    for field, wire, val in _fields(data):
        if field == 1 and wire == 1:
            wall = struct.unpack("<d", val)[0]
        elif field == 2 and wire == 0:
            step = val - (1 << 64) if val >= 1 << 63 else val
        elif field == 5 and wire == 2:
            for f, w, v in _fields(val):
                if f != 1 or w != 2:
                    continue
                tag, value = None, None
                for f2, w2, v2 in _fields(v):
                    if f2 == 1 and w2 == 2:
                        tag = v2.decode("utf-8", "replace")
                    elif f2 == 2 and w2 == 5:
                        value = struct.unpack("<f", v2)[0]
                    elif f2 == 8 and w2 == 2 and value is None:
                        value = _tensor_scalar(v2)
                if tag is not None and value is not None:
                    scalars.append((tag, float(value)))
    return wall, step, scalars


def read_records(data: bytes, verify: bool = True, name: str = "event file"):
    """Yield the data of every TFRecord in ``data``; a truncated final record (a file still being written) ends
    the iteration; a CRC mismatch raises UsageError."""
    pos, n = 0, len(data)
    while pos + 12 <= n:
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if verify and masked_crc32c(header) != hcrc:
            raise UsageError(f"{name} is corrupt at byte {pos} (length CRC mismatch); is it a TensorBoard event file?")
        end = pos + 12 + length + 4
        if end > n:
            return
        payload = data[pos + 12:pos + 12 + length]
        (dcrc,) = struct.unpack("<I", data[end - 4:end])
        if verify and masked_crc32c(payload) != dcrc:
            raise UsageError(f"{name} is corrupt at byte {pos} (data CRC mismatch)")
        yield payload
        pos = end


def event_files(path: str | Path) -> list[Path]:
    """``path`` itself if it is a file, else every file under it whose name contains 'tfevents', sorted by name."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and "tfevents" in f.name)
        if files:
            return files
        raise UsageError(f"no TensorBoard event files (names containing 'tfevents') under {p}; pass the file itself")
    raise UsageError(f"event path {p} does not exist; pass a TensorBoard event file or the folder holding it")


def read_scalars(path: str | Path, tag: str | None = None, verify: bool = True) -> dict[str, list[tuple[int, float, float]]]:
    """{tag: [(step, wall_time, value), ...]} in file order, for every scalar (or only ``tag``) under ``path``."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for f in event_files(path):
        data = f.read_bytes()
        for rec in read_records(data, verify=verify, name=str(f)):
            try:
                wall, step, scalars = parse_event(rec)
            except (ValueError, struct.error, IndexError) as e:
                raise UsageError(f"{f} holds a record that is not a TensorBoard Event ({e})") from None
            for t, v in scalars:
                if tag is None or t == tag:
                    out.setdefault(t, []).append((step, wall, v))
    return out


def read_scalar_series(path: str | Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one tag; UsageError listing the available tags when it is missing."""
    allv = read_scalars(path)
    if tag not in allv:
        tags = ", ".join(sorted(allv)) or "(no scalars)"
        raise UsageError(f"no scalar {tag!r} in {path}; it holds: {tags}; pass --tag with one of them")
    rows = allv[tag]
    return np.array([r[0] for r in rows], dtype=np.int64), np.array([r[2] for r in rows], dtype=np.float64)

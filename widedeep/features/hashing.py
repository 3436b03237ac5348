"""The stable hash used for ``hash_buckets`` features, crosses and vocabulary look-ups.

Why our own: a hashed feature id is part of the model. It must be the same in every process,
Python version, machine and library version, in training and in serving. Python's ``hash()``
is salted per process (PYTHONHASHSEED) and Arrow exposes no documented stable hash, so the
function is defined here, vectorized with NumPy over Arrow's string buffers:

``stable_hash(s)`` for a string ``s`` (its UTF-8 bytes ``b_0 .. b_{n-1}``)::

    h = 0xcbf29ce484222325                       # FNV-1a 64-bit offset basis
    for b in bytes:  h = (h XOR b) * 0x100000001b3   (mod 2**64)      # FNV-1a 64
    h = splitmix64(h XOR n)                      # length mixed in, then finalised

``splitmix64(x)``: ``x += 0x9e3779b97f4a7c15; x = (x ^ x>>30) * 0xbf58476d1ce4e5b9;
x = (x ^ x>>27) * 0x94d049bb133111eb; x ^= x>>31`` (all mod 2**64). FNV-1a alone has weak
low bits; the splitmix64 finaliser makes ``h % buckets`` uniform.

``combine_ids(ids_0, ..., ids_k)`` (crosses of component ids)::

    h = 0x243f6a8885a308d3
    for ids in components:  h = splitmix64(h XOR splitmix64(uint64(id)))

``tests/features/test_hashing.py`` pins known values, so any change to these functions fails CI.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
CROSS_SEED = np.uint64(0x243F6A8885A308D3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser over a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64) + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _as_large_string(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return arr


def hash_strings(arr: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """Stable 64-bit hash of every string (nulls hash like the empty string; mask them yourself)."""
    if not isinstance(arr, (pa.Array, pa.ChunkedArray)):
        arr = pa.array(list(arr), type=pa.string())
    arr = _as_large_string(arr)
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    off_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_type)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    lens = offsets[1:] - starts
    if arr.null_count:
        lens = np.where(np.asarray(arr.is_null()), 0, lens)
    h = np.full(n, FNV_OFFSET, dtype=np.uint64)
    maxlen = int(lens.max()) if n else 0
    # Byte position j of every string at once; rows shorter than j drop out. Most columns are
    # short strings (ids, hex tokens), so this is a handful of full-width NumPy passes.
    active = np.arange(n)
    for j in range(maxlen):
        keep = lens[active] > j
        if not keep.all():
            active = active[keep]
        if len(active) == n:
            h = (h ^ data[starts + j].astype(np.uint64)) * FNV_PRIME
        else:
            h[active] = (h[active] ^ data[starts[active] + j].astype(np.uint64)) * FNV_PRIME
    return splitmix64(h ^ lens.astype(np.uint64))


def hash_ints(ids: np.ndarray) -> np.ndarray:
    """Stable 64-bit hash of int64 values (two's complement bits, finalised)."""
    return splitmix64(np.asarray(ids, dtype=np.int64).view(np.uint64))


def combine_ids(components: Sequence[np.ndarray]) -> np.ndarray:
    """Stable 64-bit hash of aligned tuples of int64 ids (one array per component)."""
    h = np.full(len(components[0]), CROSS_SEED, dtype=np.uint64)
    for ids in components:
        h = splitmix64(h ^ hash_ints(ids))
    return h


def bucket(h: np.ndarray, buckets: int) -> np.ndarray:
    """Map uint64 hashes into ``[0, buckets)`` as int64 (exact for any buckets < 2**63)."""
    return (h % np.uint64(buckets)).astype(np.int64)

"""numpy arrays as plain values for control requests: no pickle, JSON-safe.

A control request carries msgpack maps, lists, strings, numbers and bytes
only (see ``docs/protocol.md``), so an array an argument holds travels as
this map::

    {"__ndarray__": 1, "dtype": "<f4", "shape": [n_samples, n_channels],
     "base64": "<the array's C-order bytes, base64>"}

Base64 rather than msgpack ``bin``: the amp service keeps the last
``configure`` arguments in its state file (JSON) and the recorder puts
them into a recording's ``.meta`` (JSON), which cannot hold raw bytes.
Only numeric arrays are encoded (dtypes of kind ``b``, ``i``, ``u``,
``f``); anything else becomes a nested list. A request frame is limited to
4 MiB (:data:`mushu_core.wire.MAX_HEADER_BYTES`) and the amp's
``status`` reply repeats the arguments, so an encoded array may take at
most :data:`MAX_INLINE_BYTES` (1.5 MiB of samples); larger data is replayed
from a recording file instead (``replayamp``'s ``path``).
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from mushu_core.wire import MAX_HEADER_BYTES

MARK = "__ndarray__"
#: Largest base64 text of one encoded array: half a metadata frame.
MAX_INLINE_BYTES = MAX_HEADER_BYTES // 2
_KINDS = "biuf"


def encode_array(a: np.ndarray, limit: int = MAX_INLINE_BYTES) -> dict:
    """The map that carries numeric array ``a``.

    Raises
    ------
    ValueError
        The encoded array would take more than ``limit`` bytes.
    """
    a = np.ascontiguousarray(a)
    if a.dtype.kind not in _KINDS:
        raise TypeError(f"only numeric arrays are encoded, not dtype {a.dtype}")
    size = (a.nbytes + 2) // 3 * 4
    if size > limit:
        raise ValueError(f"an array of {a.nbytes} bytes ({size} as base64) is too large for a control request "
                         f"(at most {limit} bytes); save it as a recording and replay it with "
                         "configure(path=...)")
    return {MARK: 1, "dtype": a.dtype.str, "shape": list(a.shape),  # .str: with its byte order
            "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def is_encoded(value) -> bool:
    """True if ``value`` is a map made by :func:`encode_array`."""
    return isinstance(value, dict) and value.get(MARK) == 1


def decode_array(m: dict) -> np.ndarray:
    """The array an :func:`encode_array` map carries (a new, writable array).

    Raises
    ------
    ValueError
        The map is malformed: unknown dtype, bad shape, or a payload that
        does not match them.
    """
    try:
        dtype = np.dtype(m["dtype"])
        shape = tuple(m["shape"])
        raw = base64.b64decode(m["base64"], validate=True)
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not an encoded array: {type(exc).__name__}: {exc}") from None
    if dtype.kind not in _KINDS or m["dtype"][:1] not in ("<", ">", "|"):
        raise ValueError(f"encoded array: dtype {m['dtype']!r} is not a numeric dtype with a byte order")
    if not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"encoded array: shape {m['shape']!r} is not a list of non-negative integers")
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(raw):
        raise ValueError(f"encoded array: {len(raw)} bytes do not make an array of shape {shape} and dtype {dtype}")
    return np.frombuffer(raw, dtype).reshape(shape).copy()


def to_plain(value, _inner: bool = False):
    """An argument's ``value`` with numpy arrays and scalars made msgpack-safe.

    A numeric array given as the value itself becomes an
    :func:`encode_array` map; an array inside a list, tuple or map, or a
    non-numeric one, a nested list; a numpy scalar anywhere a Python
    number. Other values stay as they are.
    """
    if isinstance(value, np.ndarray):
        return encode_array(value) if value.dtype.kind in _KINDS and not _inner else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [to_plain(v, True) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v, True) for k, v in value.items()}
    return value

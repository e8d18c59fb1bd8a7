"""Data blocks: a small metadata frame plus a raw buffer, as the pyzmq serialization how-to has it::

    frame 0  topic    b"data/<stream>/"        (prefix-filterable, delimited)
    frame 1  header   msgpack map              (see BlockHeader)
    frame 2  payload  raw samples, C order (n_samples, n_channels)

A consumer reads a session's headers by their byte layout after the first
(:class:`_HeaderLayout`), without a msgpack unpack per block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgpack
import numpy as np

from .codec import (DTYPE, MAX_BLOCK_SAMPLES, MAX_CHANNELS, MAX_LABEL_LENGTH, PROTOCOL_VERSION, SESSION_ID, STREAM_NAME,
                    Fields, ProtocolError, data_topic, pack, unpack_map)

# data blocks


# Blocks and their headers are made a thousand times a second on each side of
# the bus: plain slotted dataclasses, since a frozen one takes eight times as
# long to construct. Treat them as read-only all the same.
@dataclass(slots=True)
class BlockHeader:
    """The metadata of one data block.

    Attributes
    ----------
    stream : str
        Name of the stream the block belongs to.
    session : str
        32 hex digits, new each time acquisition starts.
    seq : int
        Per-stream, per-session block sequence number, from 0, without gaps.
    first_sample : int
        Absolute index, within the session, of the block's first sample.
    n_samples, n_channels : int
        Shape of the payload.
    fs : float
        Sampling frequency in Hz.
    dtype : str
        numpy dtype string with explicit byte order, e.g. ``'<f4'``.
    t_ns : int
        Acquisition time of the first sample, integer nanoseconds of the
        source host's monotonic clock.
    markers : tuple of (int, str)
        Markers the amplifier itself produced (replayed markers, a device's
        trigger channel, an LSL marker stream), as ``(sample offset within
        this block, label)``: on their sample exactly. Usually empty.
    t_read_ns : int or None
        When the driver's read that delivered this block returned (the
        source host's monotonic clock): the raw observation ``t_ns`` is
        fitted from (see ``services.amp.timing``). Every block of one read
        carries the same value; the read delivered samples up to the last
        sample of the last of them. None if the publisher does not say.
    """

    stream: str
    session: str
    seq: int
    first_sample: int
    n_samples: int
    n_channels: int
    fs: float
    dtype: str
    t_ns: int
    markers: tuple = ()
    t_read_ns: int | None = None

    def time_of(self, offset: int) -> int:
        """Acquisition time of the block's sample ``offset``: ``t_ns + round(offset * 1e9 / fs)`` (protocol 7.4)."""
        return self.t_ns + round(offset * 1e9 / self.fs)

    @property
    def payload_bytes(self) -> int:
        return self.n_samples * self.n_channels * int(self.dtype[2])  # '<f4': 4 bytes


@dataclass(slots=True)
class Block:
    """A decoded data block: its header and a read-only (n_samples, n_channels) array."""

    header: BlockHeader
    data: np.ndarray


def encode_block_header(h: BlockHeader) -> bytes:
    if h.markers:
        return pack({**_block_map(h), "markers": [list(m) for m in h.markers]})
    return pack(_block_map(h))


def _block_map(h: BlockHeader) -> dict:
    m = {
        "version": PROTOCOL_VERSION,
        "kind": "block",
        "stream": h.stream,
        "session": h.session,
        "seq": h.seq,
        "first_sample": h.first_sample,
        "n_samples": h.n_samples,
        "n_channels": h.n_channels,
        "fs": h.fs,
        "dtype": h.dtype,
        "t_ns": h.t_ns,
    }
    if h.t_read_ns is not None:
        m["t_read_ns"] = h.t_read_ns
    return m


def encode_block(header: BlockHeader, data: np.ndarray) -> list:
    """Frames of one data block: ``[topic, header, payload]``.

    ``data`` must be C-contiguous with ``header.dtype`` and shape
    ``(n_samples, n_channels)``; the payload frame is its buffer, not a copy.
    """
    if data.dtype.str != header.dtype or data.shape != (header.n_samples, header.n_channels):
        raise ValueError(f"block data {data.dtype.str}{data.shape} does not match its header "
                         f"{header.dtype}({header.n_samples}, {header.n_channels})")
    if not data.flags.c_contiguous:
        raise ValueError("block data must be C-contiguous")
    return [data_topic(header.stream), encode_block_header(header), memoryview(data).cast("B")]


_I64 = (-(2**63), 2**63 - 1)


def _fast_block_header(m: dict) -> BlockHeader | None:
    """The header if every field is valid, else None (the careful path then names the fault).

    The same checks as the careful path, without building messages: this
    runs for every block.
    """
    g = m.get
    seq, first, n, n_channels, t_ns = g("seq"), g("first_sample"), g("n_samples"), g("n_channels"), g("t_ns")
    t_read = g("t_read_ns")
    if (type(seq) is not int or type(first) is not int or type(n) is not int or type(n_channels) is not int
            or type(t_ns) is not int or not 0 <= seq <= _I64[1] or not 0 <= first <= _I64[1]
            or not 1 <= n <= MAX_BLOCK_SAMPLES or not 1 <= n_channels <= MAX_CHANNELS
            or not _I64[0] <= t_ns <= _I64[1]
            or (t_read is not None and (type(t_read) is not int or not _I64[0] <= t_read <= _I64[1]))):
        return None
    version, stream, session, dtype, fs = g("version"), g("stream"), g("session"), g("dtype"), g("fs")
    if (version != PROTOCOL_VERSION or type(version) is not int or g("kind") != "block" or "markers" in m
            or type(fs) not in (int, float) or not 0 < fs < math.inf):
        return None
    if (stream, session, dtype) != _last_names[0]:  # the same for every block of a session
        if (type(stream) is not str or not STREAM_NAME.match(stream) or type(session) is not str
                or not SESSION_ID.match(session) or type(dtype) is not str or not DTYPE.match(dtype)):
            return None
        _last_names[0] = (stream, session, dtype)
    return BlockHeader(stream, session, seq, first, n, n_channels, float(fs), dtype, t_ns, (), t_read)


#: The last (stream, session, dtype) found valid by _fast_block_header.
_last_names = [(None, None, None)]


class _HeaderLayout:
    """Where a block header frame's changing numbers are, to read the next ones without msgpack.

    A publisher encodes every header of a session the same way, so the next
    frames differ from a decoded one only in the bytes of ``seq``,
    ``first_sample``, ``n_samples``, ``t_ns`` and ``t_read_ns``. A frame of the same length
    whose other bytes are all equal (the type bytes of those numbers
    included) is that header with new numbers, which are then read straight
    from their bytes and range-checked as msgpack would have them checked.
    Any other frame is decoded in full, and its layout replaces this one.
    """

    __slots__ = ("length", "same", "numbers", "header", "values")

    def __init__(self, frame: bytes, m: dict, header: BlockHeader):
        self.length, self.header = len(frame), header
        self.values = [header.seq, header.first_sample, header.n_samples, header.t_ns, header.t_read_ns]
        self.same: list[tuple[int, bytes]] = []       # (offset, bytes that must be there)
        self.numbers: list[tuple[int, int, int, bool]] = []  # (index in values, start, end, signed)
        pos, start = 1, 0  # after the map's first byte (checked below: a fixmap)
        for key, value in m.items():
            pos += len(msgpack.packb(key))
            size = len(msgpack.packb(value))
            if key in _CHANGING and type(value) is int and size > 1:  # not a fixint: a type byte, then the number
                self.same.append((start, frame[start:pos + 1]))
                self.numbers.append((_CHANGING.index(key), pos + 1, pos + size, frame[pos] in _SIGNED_INTS))
                start = pos + size
            pos += size
        self.same.append((start, frame[start:]))
        if pos != len(frame) or frame[0] != 0x80 | len(m) or len(m) > 15:
            self.numbers = []  # not the plain encoding this reads: never matches

    def decode(self, frame) -> BlockHeader | None:
        """``frame`` as a header of this layout, or None if it is not one."""
        if type(frame) is not bytes or len(frame) != self.length or not self.numbers:
            return None
        for offset, expected in self.same:
            if not frame.startswith(expected, offset):
                return None
        values = self.values[:]
        for i, start, end, signed in self.numbers:
            values[i] = int.from_bytes(frame[start:end], "big", signed=signed)
        seq, first, n, t_ns, t_read = values
        if not (0 <= seq <= _I64[1] and 0 <= first <= _I64[1] and 1 <= n <= MAX_BLOCK_SAMPLES
                and _I64[0] <= t_ns <= _I64[1] and (t_read is None or _I64[0] <= t_read <= _I64[1])):
            return None
        h = self.header
        return BlockHeader(h.stream, h.session, seq, first, n, h.n_channels, h.fs, h.dtype, t_ns, (), t_read)


_CHANGING = ("seq", "first_sample", "n_samples", "t_ns", "t_read_ns")
_SIGNED_INTS = frozenset({0xD0, 0xD1, 0xD2, 0xD3})
#: The last header layout of each stream (a consumer follows a few streams at most).
_layouts: dict[str, _HeaderLayout] = {}


def decode_block_header(frame, stream: str | None = None) -> BlockHeader:
    if stream is not None and (layout := _layouts.get(stream)) is not None:
        h = layout.decode(frame)
        if h is not None:
            return h
    m = unpack_map(frame, "block header")
    h = _fast_block_header(m)
    if h is not None:
        if stream is not None and h.stream != stream:
            raise ProtocolError(f"block header: stream {h.stream!r} does not match topic stream {stream!r}")
        if stream is not None and type(frame) is bytes and (stream in _layouts or len(_layouts) < 64):
            _layouts[stream] = _HeaderLayout(frame, m, h)
        return h
    f = Fields(m, "block header")
    f.version()
    f.kind("block")
    n_samples = f.int("n_samples", 1, MAX_BLOCK_SAMPLES)
    h = BlockHeader(
        stream=f.str("stream", STREAM_NAME),
        session=f.str("session", SESSION_ID),
        seq=f.int("seq", 0, 2**63 - 1),
        first_sample=f.int("first_sample", 0, 2**63 - 1),
        n_samples=n_samples,
        n_channels=f.int("n_channels", 1, MAX_CHANNELS),
        fs=f.positive("fs"),
        dtype=f.str("dtype", DTYPE),
        t_ns=f.int("t_ns", -(2**63), 2**63 - 1),
        markers=_block_markers(f.m.get("markers"), n_samples),
        t_read_ns=f.int("t_read_ns", -(2**63), 2**63 - 1) if f.m.get("t_read_ns") is not None else None,
    )
    if stream is not None and h.stream != stream:
        raise ProtocolError(f"block header: stream {h.stream!r} does not match topic stream {stream!r}")
    return h


def _block_markers(value, n_samples: int) -> tuple:
    if value is None:
        return ()
    if type(value) is not list or len(value) > MAX_BLOCK_SAMPLES:
        raise ProtocolError("block header: field 'markers' must be a list of [offset, label]")
    out = []
    for m in value:
        if (type(m) is not list or len(m) != 2 or type(m[0]) is not int or not 0 <= m[0] < n_samples
                or type(m[1]) is not str or len(m[1]) > MAX_LABEL_LENGTH):
            raise ProtocolError(f"block header: marker {str(m)[:80]} is not [offset in 0..{n_samples - 1}, "
                                f"label of at most {MAX_LABEL_LENGTH} characters]")
        out.append((m[0], m[1]))
    return tuple(out)


def decode_block_frames(header_frame, payload, stream: str | None = None) -> Block:
    """Decode a header frame and its payload (bytes, memoryview, array or zmq.Frame: no copy)."""
    h = decode_block_header(header_frame, stream)
    nbytes = payload.nbytes if isinstance(payload, (memoryview, np.ndarray)) else len(payload)  # bytes, zmq.Frame
    if nbytes != h.payload_bytes:
        raise ProtocolError(f"block payload is {nbytes} bytes, header declares "
                            f"{h.n_samples} x {h.n_channels} x {h.dtype} = {h.payload_bytes}")
    data = np.frombuffer(payload, dtype=h.dtype).reshape(h.n_samples, h.n_channels)
    return Block(h, data)

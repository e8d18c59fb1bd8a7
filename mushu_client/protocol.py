"""The mushu wire protocol: every message on the bus is encoded and decoded here.

``docs/protocol.md`` is the normative description; this module is its only
implementation, shared by the services and the client. Following the pyzmq
serialization how-to, a data block is a small metadata frame plus a raw
buffer::

    frame 0  topic    b"data/<stream>/"        (prefix-filterable, delimited)
    frame 1  header   msgpack map              (see BlockHeader)
    frame 2  payload  raw samples, C order (n_samples, n_channels)

Every decoder validates every field it reads and raises :class:`ProtocolError`
naming what is wrong. Nothing is ever unpickled: msgpack maps, strings,
numbers and raw bytes are the only things a decoder accepts.
"""

from __future__ import annotations

import inspect
import math
import re
import threading
from dataclasses import dataclass, field

import msgpack
import numpy as np

from .errors import Forbidden

PROTOCOL_VERSION = 1

#: Largest header, info or control frame a decoder will unpack, in bytes
#: (room for 65535 channel names and units in a stream info).
MAX_HEADER_BYTES = 4 * 1024 * 1024
#: Largest message a service's control socket takes in (its ``zmq.MAXMSGSIZE``):
#: ZeroMQ disconnects a peer that sends a larger one before holding it in
#: memory. Requests up to this size but over MAX_HEADER_BYTES get an error reply.
MAX_REQUEST_BYTES = 2 * MAX_HEADER_BYTES
#: Requests a service's control socket queues per peer (its ``zmq.RCVHWM``);
#: beyond it ZeroMQ stops reading from that peer until the service catches up.
MAX_QUEUED_REQUESTS = 16
#: Largest channel count a header may declare.
MAX_CHANNELS = 65535
#: Largest sample count one block may declare.
MAX_BLOCK_SAMPLES = 1 << 24

STREAM_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
SESSION_ID = re.compile(r"^[0-9a-f]{32}$")
# numpy dtype strings with an explicit byte order: little '<', big '>', or
# '|' (not applicable) for one-byte types.
DTYPE = re.compile(r"^(?:[<>](?:f4|f8|i2|i4|i8|u2|u4|u8)|\|(?:i1|u1))$")

DATA = b"data/"
INFO = b"info/"
MARKER = b"marker/"

#: Longest marker label, in characters; longer labels are refused at ingress.
MAX_LABEL_LENGTH = 1024
#: Largest marker message a markers service publishes, in bytes: a label of
#: at most 4 * MAX_LABEL_LENGTH UTF-8 bytes (its ingress limit), its source and the fields.
MAX_MARKER_BYTES = 4 * MAX_LABEL_LENGTH + 1024


class ProtocolError(ValueError):
    """A message that is foreign, malformed or of an unsupported version."""


# ---------------------------------------------------------------------------
# topics


def data_topic(stream: str) -> bytes:
    """Topic frame of the data blocks of ``stream``; also its SUB prefix."""
    return DATA + _check_stream(stream).encode() + b"/"


def info_topic(stream: str) -> bytes:
    """Topic frame of the stream-info messages of ``stream``."""
    return INFO + _check_stream(stream).encode() + b"/"


def marker_topic(stream: str) -> bytes:
    """Topic frame of the markers of marker stream ``stream``."""
    return MARKER + _check_stream(stream).encode() + b"/"


def _check_stream(stream: str) -> str:
    if not isinstance(stream, str) or not STREAM_NAME.match(stream):
        raise ProtocolError(f"stream name {stream!r} is not 1-64 characters of [A-Za-z0-9_.-]")
    return stream


#: Topics already found valid -> (prefix, stream): a consumer sees the same few over and over.
_TOPICS: dict[bytes, tuple[bytes, str]] = {}


def split_topic(topic: bytes) -> tuple[bytes, str]:
    """``(prefix, stream)`` of a topic frame, e.g. ``(b"data/", "eeg")``; ProtocolError if invalid."""
    if type(topic) is bytes and topic in _TOPICS:
        return _TOPICS[topic]
    if not isinstance(topic, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"topic frame must be bytes, not {type(topic).__name__}")
    topic = bytes(topic)
    for prefix in (DATA, INFO, MARKER):
        if topic.startswith(prefix) and topic.endswith(b"/"):
            name = topic[len(prefix):-1]
            try:
                split = prefix, _check_stream(name.decode("ascii"))
            except (UnicodeDecodeError, ProtocolError):
                break
            if len(_TOPICS) < 1024:
                _TOPICS[topic] = split
            return split
    raise ProtocolError(f"topic {topic[:80]!r} is not 'data/<stream>/', 'info/<stream>/' or 'marker/<stream>/'")


# ---------------------------------------------------------------------------
# msgpack with limits


def pack(obj) -> bytes:
    """Pack a map of plain values (no extension types) with msgpack."""
    try:
        packer = _packers.packer
    except AttributeError:  # a Packer keeps a buffer between calls: one per thread
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(obj)


_packers = threading.local()


def unpack_map(frame, what: str) -> dict:
    """Unpack one msgpack map from ``frame`` or raise ProtocolError naming ``what``."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"{what} frame must be bytes, not {type(frame).__name__}")
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError(f"{what} frame is {len(frame)} bytes, over the {MAX_HEADER_BYTES} limit")
    try:
        obj = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            timestamp=0,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"{what} frame is not valid msgpack: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} frame must be a msgpack map, not {type(obj).__name__}")
    return obj


PLAIN_SCALARS = (str, int, float, bool, bytes, type(None))


def _check_plain(obj, what: str, depth: int = 0):
    """Refuse anything but maps, lists and plain scalars (msgpack decodes its
    timestamp extension itself, past ``ext_hook``)."""
    if depth > 32:
        raise ProtocolError(f"{what}: nested more than 32 levels deep")
    if isinstance(obj, dict):
        for v in obj.values():
            _check_plain(v, what, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _check_plain(v, what, depth + 1)
    elif not isinstance(obj, PLAIN_SCALARS):
        raise ProtocolError(f"{what}: values of type {type(obj).__name__} are not allowed")


def _refuse_ext(code, data):
    raise ProtocolError(f"msgpack extension type {code} is not allowed")


class _Fields:
    """Typed, named access to a decoded map; every failure names the field."""

    __slots__ = ("m", "what")

    def __init__(self, m: dict, what: str):
        self.m = m
        self.what = what

    def _get(self, key):
        if key not in self.m:
            raise ProtocolError(f"{self.what}: missing field {key!r}")
        return self.m[key]

    def int(self, key, lo=None, hi=None):
        v = self._get(key)
        if type(v) is not int:
            raise ProtocolError(f"{self.what}: field {key!r} must be an integer, not {type(v).__name__}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ProtocolError(f"{self.what}: field {key!r}={v} is outside [{lo}, {hi}]")
        return v

    def str(self, key, pattern=None, max_len=4096):
        v = self._get(key)
        if type(v) is not str:
            raise ProtocolError(f"{self.what}: field {key!r} must be a string, not {type(v).__name__}")
        if len(v) > max_len or (pattern is not None and not pattern.match(v)):
            raise ProtocolError(f"{self.what}: field {key!r}={v[:80]!r} is not a valid value")
        return v

    def opt_str(self, key, max_len=4096):
        if self.m.get(key) is None:
            return None
        return self.str(key, max_len=max_len)

    def positive(self, key):
        v = self._get(key)
        if type(v) not in (int, float) or not math.isfinite(v) or v <= 0:
            raise ProtocolError(f"{self.what}: field {key!r}={v!r} must be a positive finite number")
        return float(v)

    def str_list(self, key, length=None):
        v = self._get(key)
        if type(v) is not list or not all(type(s) is str and len(s) <= 256 for s in v):
            raise ProtocolError(f"{self.what}: field {key!r} must be a list of strings")
        if length is not None and len(v) != length:
            raise ProtocolError(f"{self.what}: field {key!r} has {len(v)} entries, expected {length}")
        return v

    def version(self):
        v = self._get("version")
        if v != PROTOCOL_VERSION or type(v) is not int:
            raise ProtocolError(f"{self.what}: protocol version {v!r} is not supported (this is {PROTOCOL_VERSION})")

    def kind(self, expected):
        v = self._get("kind")
        if v != expected:
            raise ProtocolError(f"{self.what}: field 'kind'={v!r}, expected {expected!r}")


# ---------------------------------------------------------------------------
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
    return ({
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
    })


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
    if (type(seq) is not int or type(first) is not int or type(n) is not int or type(n_channels) is not int
            or type(t_ns) is not int or not 0 <= seq <= _I64[1] or not 0 <= first <= _I64[1]
            or not 1 <= n <= MAX_BLOCK_SAMPLES or not 1 <= n_channels <= MAX_CHANNELS
            or not _I64[0] <= t_ns <= _I64[1]):
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
    return BlockHeader(stream, session, seq, first, n, n_channels, float(fs), dtype, t_ns)


#: The last (stream, session, dtype) found valid by _fast_block_header.
_last_names = [(None, None, None)]


class _HeaderLayout:
    """Where a block header frame's changing numbers are, to read the next ones without msgpack.

    A publisher encodes every header of a session the same way, so the next
    frames differ from a decoded one only in the bytes of ``seq``,
    ``first_sample``, ``n_samples`` and ``t_ns``. A frame of the same length
    whose other bytes are all equal (the type bytes of those numbers
    included) is that header with new numbers, which are then read straight
    from their bytes and range-checked as msgpack would have them checked.
    Any other frame is decoded in full, and its layout replaces this one.
    """

    __slots__ = ("length", "same", "numbers", "header", "values")

    def __init__(self, frame: bytes, m: dict, header: BlockHeader):
        self.length, self.header = len(frame), header
        self.values = [header.seq, header.first_sample, header.n_samples, header.t_ns]
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
        seq, first, n, t_ns = values
        if not (0 <= seq <= _I64[1] and 0 <= first <= _I64[1] and 1 <= n <= MAX_BLOCK_SAMPLES
                and _I64[0] <= t_ns <= _I64[1]):
            return None
        h = self.header
        return BlockHeader(h.stream, h.session, seq, first, n, h.n_channels, h.fs, h.dtype, t_ns)


_CHANGING = ("seq", "first_sample", "n_samples", "t_ns")
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
    f = _Fields(m, "block header")
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


# ---------------------------------------------------------------------------
# stream info


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a consumer needs to interpret a stream; sent every quarter second.

    Attributes
    ----------
    stream, session : str
        As in :class:`BlockHeader`; ``session`` is None before the first start.
    amp : str
        Name of the driver producing the stream.
    state : str
        ``'idle'``, ``'running'``, ``'ended'`` (the driver has no more data,
        e.g. a replay reached its end) or ``'error'``.
    fs : float
    dtype : str
    channels, units : list of str
        One name and one unit per channel.
    last_seq : int
        Sequence number of the last block published in this session, -1 if none.
    next_sample : int
        Absolute index the next block will start at.
    t_ns : int
        Sender's monotonic clock when the message was sent.
    error : str or None
        The driver's error when ``state == 'error'``.
    """

    stream: str
    session: str | None
    amp: str
    state: str
    fs: float
    dtype: str
    channels: list = field(default_factory=list)
    units: list = field(default_factory=list)
    last_seq: int = -1
    next_sample: int = 0
    t_ns: int = 0
    error: str | None = None


STATES = ("idle", "running", "ended", "error")


def encode_info(info: StreamInfo) -> list:
    """Frames of a stream-info message: ``[topic, header]``."""
    return [info_topic(info.stream), pack({
        "version": PROTOCOL_VERSION,
        "kind": "info",
        "stream": info.stream,
        "session": info.session,
        "amp": info.amp,
        "state": info.state,
        "fs": info.fs,
        "dtype": info.dtype,
        "channels": list(info.channels),
        "units": list(info.units),
        "last_seq": info.last_seq,
        "next_sample": info.next_sample,
        "t_ns": info.t_ns,
        "error": info.error,
    })]


def decode_info(frame_or_map, stream: str | None = None) -> StreamInfo:
    m = frame_or_map if isinstance(frame_or_map, dict) else unpack_map(frame_or_map, "stream info")
    f = _Fields(m, "stream info")
    f.version()
    f.kind("info")
    session = f.m.get("session")
    if session is not None:
        session = f.str("session", SESSION_ID)
    channels = f.str_list("channels")
    if len(channels) > MAX_CHANNELS:
        raise ProtocolError("stream info: too many channels")
    state = f.str("state")
    if state not in STATES:
        raise ProtocolError(f"stream info: field 'state'={state!r} is not one of {STATES}")
    info = StreamInfo(
        stream=f.str("stream", STREAM_NAME),
        session=session,
        amp=f.str("amp", max_len=64),
        state=state,
        fs=f.positive("fs"),
        dtype=f.str("dtype", DTYPE),
        channels=channels,
        units=f.str_list("units", len(channels)),
        last_seq=f.int("last_seq", -1, 2**63 - 1),
        next_sample=f.int("next_sample", 0, 2**63 - 1),
        t_ns=f.int("t_ns", -(2**63), 2**63 - 1),
        error=f.opt_str("error"),
    )
    if stream is not None and info.stream != stream:
        raise ProtocolError(f"stream info: stream {info.stream!r} does not match topic stream {stream!r}")
    return info


def decode_message(frames) -> Block | StreamInfo | Marker | MarkerStreamInfo:
    """Decode one bus message (a list of frames) into the object it carries."""
    if not isinstance(frames, (list, tuple)) or not frames:
        raise ProtocolError("empty message")
    prefix, stream = split_topic(frames[0])
    if prefix == DATA:
        if len(frames) != 3:
            raise ProtocolError(f"data message has {len(frames)} frames, expected 3")
        return decode_block_frames(frames[1], frames[2], stream)
    if len(frames) != 2:
        raise ProtocolError(f"{prefix[:-1].decode()} message has {len(frames)} frames, expected 2")
    if prefix == MARKER:
        return decode_marker(frames[1], stream)
    m = unpack_map(frames[1], "stream info")
    if m.get("kind") == "marker_info":
        return decode_marker_info(m, stream)
    return decode_info(m, stream)


# ---------------------------------------------------------------------------
# markers


@dataclass(frozen=True, slots=True)
class Marker:
    """One marker as published by the markers service.

    Attributes
    ----------
    stream, session : str
        Marker stream name and the markers service's session (new each time
        the service starts).
    seq : int
        Per-stream, per-session sequence number, from 0, without gaps.
    t_ns : int
        When the marker's first byte arrived, integer nanoseconds of the
        markers host's monotonic clock (or the sender's own stamp, if it gave
        one over ZeroMQ and the service accepted it).
    label : str
        The marker text, without its line ending.
    source : str
        Where it came from: ``"tcp:HOST:PORT"``, ``"udp:HOST:PORT"``,
        ``"zmq"`` or ``"amp:<stream>"``.
    flags : list of str
        E.g. ``"invalid_utf8"`` (undecodable bytes were replaced by U+FFFD),
        ``"sender_time"`` (``t_ns`` is the sender's stamp).
    """

    stream: str
    session: str
    seq: int
    t_ns: int
    label: str
    source: str = ""
    flags: tuple = ()


def encode_marker(m: Marker) -> list:
    """Frames of a marker message: ``[topic, header]``."""
    return [marker_topic(m.stream), pack({
        "version": PROTOCOL_VERSION,
        "kind": "marker",
        "stream": m.stream,
        "session": m.session,
        "seq": m.seq,
        "t_ns": m.t_ns,
        "label": m.label,
        "source": m.source,
        "flags": list(m.flags),
    })]


def decode_marker(frame, stream: str | None = None) -> Marker:
    f = _Fields(unpack_map(frame, "marker"), "marker")
    f.version()
    f.kind("marker")
    m = Marker(
        stream=f.str("stream", STREAM_NAME),
        session=f.str("session", SESSION_ID),
        seq=f.int("seq", 0, 2**63 - 1),
        t_ns=f.int("t_ns", -(2**63), 2**63 - 1),
        label=f.str("label", max_len=MAX_LABEL_LENGTH),
        source=f.str("source", max_len=256),
        flags=tuple(f.str_list("flags")),
    )
    if stream is not None and m.stream != stream:
        raise ProtocolError(f"marker: stream {m.stream!r} does not match topic stream {stream!r}")
    return m


@dataclass(frozen=True, slots=True)
class MarkerStreamInfo:
    """Heartbeat of a marker stream, every quarter second: ``last_seq`` shows tail losses."""

    stream: str
    session: str
    last_seq: int
    t_ns: int


def encode_marker_info(info: MarkerStreamInfo) -> list:
    return [info_topic(info.stream), pack({
        "version": PROTOCOL_VERSION,
        "kind": "marker_info",
        "stream": info.stream,
        "session": info.session,
        "last_seq": info.last_seq,
        "t_ns": info.t_ns,
    })]


def decode_marker_info(frame_or_map, stream: str | None = None) -> MarkerStreamInfo:
    m = frame_or_map if isinstance(frame_or_map, dict) else unpack_map(frame_or_map, "marker stream info")
    f = _Fields(m, "marker stream info")
    f.version()
    f.kind("marker_info")
    info = MarkerStreamInfo(
        stream=f.str("stream", STREAM_NAME),
        session=f.str("session", SESSION_ID),
        last_seq=f.int("last_seq", -1, 2**63 - 1),
        t_ns=f.int("t_ns", -(2**63), 2**63 - 1),
    )
    if stream is not None and info.stream != stream:
        raise ProtocolError(f"marker stream info: stream {info.stream!r} does not match topic {stream!r}")
    return info


# ---------------------------------------------------------------------------
# control requests and replies (ROUTER/DEALER, REQ-compatible envelope)

#: Exception types a reply may name that the client raises as themselves;
#: anything else becomes a RemoteError. Names are looked up, never evaluated.
BUILTIN_ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "KeyError": KeyError,
                  "RuntimeError": RuntimeError, "NotImplementedError": NotImplementedError,
                  "FileExistsError": FileExistsError, "FileNotFoundError": FileNotFoundError,
                  "PermissionError": PermissionError, "Forbidden": Forbidden}

COMMAND = re.compile(r"^[a-z_]{1,32}$")


def encode_request(cmd: str, **args) -> bytes:
    """Encode a control request ``{"version", "cmd", **args}``."""
    return pack({"version": PROTOCOL_VERSION, "cmd": cmd, **args})


def decode_request(frame) -> tuple[str, dict]:
    """Return ``(cmd, args)`` of a control request."""
    m = unpack_map(frame, "control request")
    f = _Fields(m, "control request")
    f.version()
    cmd = f.str("cmd", COMMAND)
    _check_plain(m, "control request")
    args = {k: v for k, v in m.items() if k not in ("version", "cmd")}
    return cmd, args


def encode_reply(result=None, request_id=None) -> bytes:
    """A successful reply; ``request_id`` echoes the request's ``id`` field."""
    return pack({"version": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result})


def encode_error(exc_type: str, message: str, request_id=None) -> bytes:
    """A failed reply naming the exception type and its message."""
    return pack({"version": PROTOCOL_VERSION, "id": request_id, "ok": False,
                 "error": {"type": exc_type, "message": message}})


def dispatch(commands: dict, cmd: str, args: dict):
    """Call ``commands[cmd](**args)``, refusing unknown commands and arguments by name."""
    fn = commands.get(cmd)
    if fn is None:
        raise ValueError(f"unknown command {cmd!r}; commands: {', '.join(sorted(commands))}")
    params = inspect.signature(fn).parameters
    unknown = [k for k in args if k not in params]
    if unknown:
        raise TypeError(f"command {cmd!r} takes no argument {', '.join(map(repr, unknown))}")
    missing = [p.name for p in params.values()
               if p.default is inspect.Parameter.empty and p.name not in args]
    if missing:
        raise TypeError(f"command {cmd!r} needs argument {', '.join(map(repr, missing))}")
    return fn(**args)


class ReplyFrames:
    """A control result followed by extra reply frames (e.g. history blocks)."""

    __slots__ = ("result", "frames")

    def __init__(self, result, frames: list):
        self.result = result
        self.frames = frames


def serve_request(frames: list, handle) -> tuple[list, str | None, Exception | None]:
    """Answer one control request received on a ROUTER socket.

    ``frames`` is what the ROUTER received: the envelope (peer identity and
    any routing frames, up to and including the empty delimiter frame) and
    one request frame. ``handle(cmd, args)`` returns the result (or a
    :class:`ReplyFrames`) or raises; the exception's type name and message go
    back to the caller.

    Returns
    -------
    reply : list
        Frames to send on the ROUTER socket (the same envelope, then the reply).
    cmd : str or None
        The command, None if the request was malformed.
    error : Exception or None
        What went wrong, for the service's log and counters.
    """
    try:
        split = frames.index(b"", 1)
        envelope, body = frames[:split + 1], frames[split + 1:]
    except ValueError:  # a DEALER that sent no delimiter: answer it in kind
        envelope, body = frames[:1], frames[1:]
    cmd = rid = None
    try:
        if len(body) != 1:
            raise ProtocolError(f"control request has {len(body)} body frames, expected 1")
        cmd, args = decode_request(body[0])
        rid = args.pop("id", None)
        if not isinstance(rid, (int, str)) or isinstance(rid, bool):
            rid = None
        result = handle(cmd, args)
    except Exception as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        # Without its traceback: the traceback's frames reach the caller's frame,
        # which holds the error; that cycle would keep the request's frames
        # (up to the socket's message size) alive until the cyclic GC runs.
        exc.__traceback__ = exc.__context__ = exc.__cause__ = None
        return envelope + [encode_error(type(exc).__name__, str(message), rid)], cmd, exc
    if isinstance(result, ReplyFrames):
        return envelope + [encode_reply(result.result, rid)] + result.frames, cmd, None
    return envelope + [encode_reply(result, rid)], cmd, None


@dataclass(frozen=True, slots=True)
class Reply:
    ok: bool
    request_id: object = None
    result: object = None
    error_type: str | None = None
    error_message: str | None = None


def decode_reply(frame) -> Reply:
    f = _Fields(unpack_map(frame, "control reply"), "control reply")
    f.version()
    ok = f.m.get("ok")
    rid = f.m.get("id")
    if ok is True:
        return Reply(True, rid, f.m.get("result"))
    if ok is False:
        err = f.m.get("error")
        if not isinstance(err, dict):
            raise ProtocolError("control reply: field 'error' must be a map")
        e = _Fields(err, "control reply error")
        return Reply(False, rid, None, e.str("type", max_len=64), e.str("message", max_len=65536))
    raise ProtocolError(f"control reply: field 'ok' must be true or false, not {ok!r}")

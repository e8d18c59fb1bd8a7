"""The wire's common ground: limits, names, topics, msgpack framing and field validation.

``docs/protocol.md`` is the normative description of the wire; the modules of
:mod:`mushu_core.wire` are its only implementation, shared by the services
and the client. Every decoder validates every field it reads and raises
:class:`ProtocolError` naming what is wrong. Nothing is ever unpickled:
msgpack maps, strings, numbers and raw bytes are the only things a decoder
accepts.
"""

from __future__ import annotations

import math
import re
import threading

import msgpack

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


def check_plain(obj, what: str, depth: int = 0):
    """Refuse anything but maps, lists and plain scalars (msgpack decodes its
    timestamp extension itself, past ``ext_hook``)."""
    if depth > 32:
        raise ProtocolError(f"{what}: nested more than 32 levels deep")
    if isinstance(obj, dict):
        for v in obj.values():
            check_plain(v, what, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            check_plain(v, what, depth + 1)
    elif not isinstance(obj, PLAIN_SCALARS):
        raise ProtocolError(f"{what}: values of type {type(obj).__name__} are not allowed")


def _refuse_ext(code, data):
    raise ProtocolError(f"msgpack extension type {code} is not allowed")


class Fields:
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

    def opt_positive(self, key):
        return None if self.m.get(key) is None else self.positive(key)

    def opt_finite(self, key):
        v = self.m.get(key)
        if v is None:
            return None
        if type(v) not in (int, float) or not math.isfinite(v):
            raise ProtocolError(f"{self.what}: field {key!r}={v!r} must be a finite number")
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

"""The other bus messages: stream info, markers and marker stream info; and decoding any message."""

from __future__ import annotations

from dataclasses import dataclass, field

from .blocks import Block, decode_block_frames
from .codec import (DATA, DTYPE, MARKER, MAX_CHANNELS, MAX_LABEL_LENGTH, PROTOCOL_VERSION, SESSION_ID, STREAM_NAME,
                    Fields, ProtocolError, info_topic, marker_topic, pack, split_topic, unpack_map)

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
    fs_measured : float or None
        The device's effective sampling rate on the amp host's clock, as the
        amp's clock model measures it (``fs`` when the driver knows its
        sample times); None before the first read of a session, or from an
        amp that does not say.
    drift_ppm : float or None
        ``fs_measured`` against ``fs``, in parts per million.
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
    fs_measured: float | None = None
    drift_ppm: float | None = None


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
        **({} if info.fs_measured is None else {"fs_measured": info.fs_measured, "drift_ppm": info.drift_ppm}),
    })]


def decode_info(frame_or_map, stream: str | None = None) -> StreamInfo:
    m = frame_or_map if isinstance(frame_or_map, dict) else unpack_map(frame_or_map, "stream info")
    f = Fields(m, "stream info")
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
        fs_measured=f.opt_positive("fs_measured"),
        drift_ppm=f.opt_finite("drift_ppm"),
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
    f = Fields(unpack_map(frame, "marker"), "marker")
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
    f = Fields(m, "marker stream info")
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

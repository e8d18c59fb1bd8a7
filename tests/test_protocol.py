"""The wire protocol: round trips, and every malformed message rejected by name."""

import msgpack
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mushu_core import wire as p
from mushu_core.wire import blocks


def header(**kw):
    h = dict(stream="eeg", session="ab" * 16, seq=7, first_sample=100, n_samples=3, n_channels=2,
             fs=1000.0, dtype="<f4", t_ns=123456789)
    h.update(kw)
    return p.BlockHeader(**h)


def block_frames(**kw):
    h = header(**kw)
    data = np.arange(h.n_samples * h.n_channels, dtype=h.dtype).reshape(h.n_samples, h.n_channels)
    return [bytes(f) for f in p.encode_block(h, data)], data


def raw_header(**changes):
    frames, _ = block_frames()
    m = msgpack.unpackb(frames[1])
    for k, v in changes.items():
        if v is KeyError:
            del m[k]
        else:
            m[k] = v
    return [frames[0], msgpack.packb(m), frames[2]]


def test_block_round_trip_keeps_every_field_and_value():
    frames, data = block_frames()
    assert frames[0] == b"data/eeg/"
    b = p.decode_message(frames)
    assert b.header == header()
    np.testing.assert_array_equal(b.data, data)


def test_a_blocks_read_time_travels_and_readers_that_ignore_it_see_the_same_block():
    frames, _ = block_frames(t_read_ns=123999999)
    assert p.decode_message(frames).header == header(t_read_ns=123999999)
    m = msgpack.unpackb(frames[1])
    assert m["t_read_ns"] == 123999999 and {k: v for k, v in m.items() if k != "t_read_ns"} == \
        msgpack.unpackb(block_frames()[0][1])  # an optional field: everything else is as without it


@pytest.mark.parametrize("dtype", [">f4", "<f8", "<i2", ">i4", "|u1", "<u8"])
def test_explicit_byte_orders_decode_to_the_same_values(dtype):
    frames, data = block_frames(dtype=dtype)
    b = p.decode_message(frames)
    assert b.data.dtype.str == dtype
    np.testing.assert_array_equal(b.data, data)


@pytest.mark.parametrize("change, words", [
    ({"version": 2}, "protocol version 2"),
    ({"kind": "info"}, "'kind'"),
    ({"seq": -1}, "'seq'"),
    ({"seq": 1.5}, "'seq' must be an integer"),
    ({"seq": True}, "'seq' must be an integer"),
    ({"first_sample": "0"}, "'first_sample'"),
    ({"n_samples": 0}, "'n_samples'"),
    ({"n_channels": 70000}, "'n_channels'"),
    ({"fs": 0}, "'fs'"),
    ({"fs": float("nan")}, "'fs'"),
    ({"dtype": "f4"}, "'dtype'"),
    ({"dtype": "O"}, "'dtype'"),
    ({"dtype": "<U4"}, "'dtype'"),
    ({"session": "xyz"}, "'session'"),
    ({"stream": "other"}, "does not match topic"),
    ({"t_ns": KeyError}, "missing field 't_ns'"),
    ({"t_read_ns": "soon"}, "'t_read_ns' must be an integer"),
    ({"t_read_ns": 2**64 - 1}, "'t_read_ns'"),
    ({"n_samples": 4}, "payload is 24 bytes"),
])
def test_malformed_block_headers_are_rejected_naming_the_field(change, words):
    with pytest.raises(p.ProtocolError, match=words.replace("(", r"\(").replace("'", "'")):
        p.decode_message(raw_header(**change))


@pytest.mark.parametrize("frames, words", [
    ([], "empty message"),
    ([b"foo/eeg/", b"", b""], "topic"),
    ([b"data/eeg", b"", b""], "topic"),
    ([b"data/e g/", b"", b""], "topic"),
    ([b"data/eeg/", b"\x93\x01\x02\x03", b""], "must be a msgpack map"),
    ([b"data/eeg/", b"\xc1", b""], "not valid msgpack"),
    ([b"data/eeg/", b"x" * (p.MAX_HEADER_BYTES + 1), b""], "over the"),
    ([b"data/eeg/", msgpack.packb({"version": 1})], "expected 3"),
    ([b"info/eeg/", b"\x80", b"extra"], "expected 2"),
    ([b"data/eeg/", msgpack.packb(msgpack.ExtType(1, b"x")), b""], "extension type"),
])
def test_foreign_messages_are_rejected(frames, words):
    with pytest.raises(p.ProtocolError, match=words):
        p.decode_message(frames)


def test_pickle_payload_is_just_refused():
    import pickle
    frames = [b"data/eeg/", pickle.dumps({"version": 1}), b""]
    with pytest.raises(p.ProtocolError):
        p.decode_message(frames)


def test_info_round_trip():
    info = p.StreamInfo(stream="eeg", session="cd" * 16, amp="rampamp", state="running", fs=250.0,
                        dtype="<f4", channels=["C3", "C4"], units=["uV", "uV"], last_seq=9,
                        next_sample=1000, t_ns=5, error=None)
    assert p.decode_message(p.encode_info(info)) == info


def test_info_with_units_not_matching_channels_is_rejected():
    info = p.StreamInfo(stream="eeg", session=None, amp="x", state="idle", fs=1.0, dtype="<f4",
                        channels=["a", "b"], units=["uV"])
    with pytest.raises(p.ProtocolError, match="'units' has 1 entries, expected 2"):
        p.decode_message(p.encode_info(info))


def test_control_request_and_reply_round_trip():
    cmd, args = p.decode_request(p.encode_request("configure", id=3, kwargs={"fs": 100}))
    assert (cmd, args) == ("configure", {"id": 3, "kwargs": {"fs": 100}})
    r = p.decode_reply(p.encode_error("ValueError", "bad fs", 3))
    assert (r.ok, r.request_id, r.error_type, r.error_message) == (False, 3, "ValueError", "bad fs")


def test_serve_request_answers_garbage_with_an_error_in_the_same_envelope():
    reply, cmd, err = p.serve_request([b"peer", b"", b"\xff\xfe"], lambda c, a: None)
    assert reply[:2] == [b"peer", b""] and cmd is None and isinstance(err, p.ProtocolError)
    assert p.decode_reply(reply[2]).error_type == "ProtocolError"


def test_dispatch_names_unknown_commands_and_arguments():
    cmds = {"fs": lambda: 1.0}
    with pytest.raises(ValueError, match="unknown command 'nope'"):
        p.dispatch(cmds, "nope", {})
    with pytest.raises(TypeError, match="takes no argument 'x'"):
        p.dispatch(cmds, "fs", {"x": 1})


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4))
def test_random_frames_never_raise_anything_but_protocol_error(frames):
    try:
        p.decode_message(frames)
    except p.ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["version", "kind", "stream", "session", "seq", "first_sample",
                                        "n_samples", "n_channels", "fs", "dtype", "t_ns"]),
                       st.one_of(st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=8),
                                 st.booleans(), st.none(), st.binary(max_size=8))))
def test_random_header_maps_never_raise_anything_but_protocol_error(m):
    base = msgpack.unpackb(block_frames()[0][1])
    base.update(m)
    try:
        p.decode_message([b"data/eeg/", msgpack.packb(base), b"\0" * 24])
    except p.ProtocolError:
        pass


# -- property tests: every decoder meets arbitrary input with ProtocolError only ----

_SCALARS = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=12)
            | st.binary(max_size=12))
#: Any msgpack value: scalars, lists and maps nested a few levels.
ANY_VALUE = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
_INFO = p.encode_info(p.StreamInfo(stream="eeg", session="cd" * 16, amp="rampamp", state="running", fs=250.0,
                                   dtype="<f4", channels=["C3", "C4"], units=["uV", "uV"]))
_MARKER = p.encode_marker(p.Marker("markers", "ef" * 16, 3, 99, "S 1", "tcp:127.0.0.1:5", ("x",)))
_MARKER_INFO = p.encode_marker_info(p.MarkerStreamInfo("markers", "ef" * 16, 3, 99))
#: A valid message of each kind, to be corrupted field by field.
VALID = {"block": block_frames()[0], "info": _INFO, "marker": _MARKER, "marker_info": _MARKER_INFO}


def corrupted_map(frames):
    """A strategy of the map in frame 1 of ``frames`` with fields replaced, added or removed."""
    base = msgpack.unpackb(frames[1])
    keys = st.sampled_from(sorted(base) + ["markers", "extra"])
    return st.tuples(st.dictionaries(keys, ANY_VALUE, max_size=4), st.lists(keys, max_size=2)).map(
        lambda change: {**{k: v for k, v in base.items() if k not in change[1]}, **change[0]})


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(VALID)), st.data())
def test_corrupted_messages_of_every_kind_raise_protocol_error_only(kind, data):
    frames = list(VALID[kind])
    frames[1] = msgpack.packb(data.draw(corrupted_map(frames)))
    if kind == "block":
        frames[2] = data.draw(st.sampled_from([frames[2], b"", frames[2][:-1], frames[2] * 2]))
    try:
        msg = p.decode_message(frames)
    except p.ProtocolError as exc:
        assert str(exc)
    else:
        assert type(msg).__name__ in ("Block", "StreamInfo", "Marker", "MarkerStreamInfo")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"data/eeg/", b"info/eeg/", b"marker/markers/", b"info/markers/"]),
       st.one_of(ANY_VALUE.map(msgpack.packb), st.binary(max_size=64)),
       st.lists(st.binary(max_size=16), max_size=3))
def test_wrong_types_and_frame_counts_raise_protocol_error_only(topic, header_frame, more):
    try:
        p.decode_message([topic, header_frame, *more])
    except p.ProtocolError:
        pass


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 2000))
def test_deeply_nested_msgpack_is_refused(depth):
    nested = b"\x91" * depth + b"\xc0"  # [[[...nil...]]]
    frame = b"\x81\xa3cmd" + nested
    for decode in (p.decode_request, p.decode_reply, lambda f: p.decode_message([b"info/eeg/", f])):
        with pytest.raises(p.ProtocolError):
            decode(frame)


# -- control requests and replies -----------------------------------------------

def _configure(fs: float, channels: int = 8):
    if type(fs) not in (int, float) or type(channels) is not int:
        raise TypeError("fs must be a number and channels an integer")
    return {"fs": fs, "channels": channels}


COMMANDS = {"ping": lambda: "pong", "configure": _configure}
REQUEST_MAPS = st.dictionaries(st.sampled_from(["version", "cmd", "id", "fs", "channels", "other"]), ANY_VALUE,
                               max_size=5).map(lambda m: {"version": 1, "cmd": "configure", **m})


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=8), max_size=3),
       st.one_of(REQUEST_MAPS.map(msgpack.packb), ANY_VALUE.map(msgpack.packb), st.binary(max_size=40)),
       st.lists(st.binary(max_size=8), max_size=2))
def test_serve_request_answers_any_frames_in_their_envelope(envelope, body, more):
    frames = [b"peer", *envelope, b"", body, *more]
    reply, cmd, error = p.serve_request(frames, lambda c, a: p.dispatch(COMMANDS, c, a))
    n_env = frames.index(b"", 1) + 1
    assert reply[:n_env] == frames[:n_env]
    decoded = p.decode_reply(reply[n_env])  # the client can always read the answer
    assert decoded.ok is (error is None) and len(reply) == n_env + 1
    if not decoded.ok:
        assert decoded.error_type == type(error).__name__ and decoded.error_message


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=6))
def test_serve_request_answers_truncated_multiparts(frames):
    reply, _cmd, error = p.serve_request(frames, lambda c, a: p.dispatch(COMMANDS, c, a))
    assert reply[0] == frames[0] and p.decode_reply(reply[-1]).ok is (error is None)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.dictionaries(st.sampled_from(["version", "id", "ok", "result", "error"]), ANY_VALUE, max_size=5)
    .map(lambda m: {"version": 1, **m}),
    st.fixed_dictionaries({"version": st.just(1), "ok": st.just(False),
                           "error": st.dictionaries(st.sampled_from(["type", "message"]), ANY_VALUE)}),
    ANY_VALUE).map(msgpack.packb))
def test_reply_decoding_raises_protocol_error_only(frame):
    try:
        r = p.decode_reply(frame)
    except p.ProtocolError:
        return
    assert r.ok in (True, False)
    if not r.ok:
        assert type(r.error_type) is str and type(r.error_message) is str


def test_a_refused_request_keeps_no_reference_to_its_frames():
    import sys
    big = bytes(p.MAX_HEADER_BYTES + 1)
    frames = [b"peer", b"", big]
    reply, cmd, error = p.serve_request(frames, lambda c, a: None)
    del frames
    # no traceback, so no cycle through the caller's frame keeps the request alive until a GC
    assert isinstance(error, p.ProtocolError) and error.__traceback__ is None
    assert sys.getrefcount(big) == 2  # ``big`` and the call's argument


def _decoded(frame, stream):
    try:
        return p.decode_block_header(frame, stream)
    except p.ProtocolError:
        return "ProtocolError"


def _near(*bounds):
    """Integers in, at and around the given size classes of msgpack's encoding."""
    return st.one_of(*(st.integers(lo, hi) for lo, hi in bounds), st.sampled_from([lo for lo, _ in bounds]))


@settings(max_examples=1000, deadline=None)
@given(_near((256, 65535), (0, 2**64 - 1)), _near((65536, 2**32 - 1), (0, 2**64 - 1)),
       _near((2**32, 2**63 - 1), (-(2**63), 2**64 - 1)), _near((0, 127), (128, 70000)),
       st.lists(st.tuples(st.one_of(st.integers(0, 200), st.just(0)), st.integers(0, 255)), max_size=3),
       st.one_of(st.none(), _near((2**32, 2**63 - 1), (-(2**63), 2**64 - 1))))
@example(seq=256, first=65536, t_ns=2**32, n=1, flips=[(29, 65)], t_read=None)  # stream 'eeg' flipped to 'Aeg'
def test_a_header_read_by_its_layout_decodes_exactly_as_msgpack_would(seq, first, t_ns, n, flips, t_read):
    # The layout of the last header decoded (blocks._HeaderLayout) reads the next ones
    # without msgpack: for any next frame, valid or corrupted, the result must be the
    # full decoder's (the same header, or a ProtocolError).
    read = {} if t_read is None else {"t_read_ns": 2**40 + 7}
    template = raw_header(seq=300, first_sample=70000, t_ns=2**40, **read)[1]
    assert _decoded(template, "eeg") != "ProtocolError" and "eeg" in blocks._layouts
    read = {} if t_read is None else {"t_read_ns": t_read}
    frame = bytearray(raw_header(seq=seq, first_sample=first, t_ns=t_ns, n_samples=n, **read)[1])
    for at, value in flips:
        if at < len(frame):
            frame[at] = value
    frame = bytes(frame)
    layout = blocks._layouts["eeg"]
    expected = _decoded(frame, None)  # msgpack and the field checks, no layout
    if expected != "ProtocolError" and expected.stream != "eeg":
        expected = "ProtocolError"  # a flip made it another stream's header, which topic "eeg" must refuse
    assert _decoded(frame, "eeg") == expected
    if expected != "ProtocolError" and len(frame) == layout.length:
        assert layout.decode(frame) in (None, expected)


def test_consecutive_headers_are_read_by_their_layout():
    p.decode_block_header(raw_header(seq=1000, first_sample=3000)[1], "eeg")
    frame = raw_header(seq=1001, first_sample=3003, t_ns=987654321)[1]
    assert blocks._layouts["eeg"].decode(frame) == header(seq=1001, first_sample=3003, t_ns=987654321)


def test_consecutive_headers_with_read_times_are_read_by_their_layout():
    p.decode_block_header(raw_header(seq=1000, first_sample=3000, t_read_ns=2**40)[1], "eeg")
    frame = raw_header(seq=1001, first_sample=3003, t_ns=987654321, t_read_ns=2**40 + 3_000_000)[1]
    expected = header(seq=1001, first_sample=3003, t_ns=987654321, t_read_ns=2**40 + 3_000_000)
    assert blocks._layouts["eeg"].decode(frame) == expected

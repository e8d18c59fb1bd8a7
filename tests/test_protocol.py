"""The wire protocol: round trips, and every malformed message rejected by name."""

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mushu_client import protocol as p


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

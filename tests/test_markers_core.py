"""Unit tests of the markers service's pure core: framing, labels, history, counters."""

import os

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mushu_core.wire import MAX_LABEL_LENGTH, ReplyFrames, decode_marker, decode_marker_info, decode_message
from mushu_markers.core import (
    MAX_LABEL_BYTES,
    LabelError,
    LineFramer,
    MarkerLog,
    MarkersCore,
    check_label,
    decode_label,
    split_datagram,
)
from mushu_markers.journal import MarkerJournal

# -- LineFramer --------------------------------------------------------------


def test_framer_stamps_each_line_with_its_first_bytes_read():
    f = LineFramer()
    assert f.feed(b"ab", 10) == []
    assert f.feed(b"c\nde", 20) == [(10, b"abc")]
    assert f.feed(b"f\ng\nh\n", 30) == [(20, b"def"), (30, b"g"), (30, b"h")]
    assert f.pending == 0


def test_framer_byte_by_byte_keeps_first_byte_time():
    f = LineFramer()
    out = []
    for i, b in enumerate(b"label\r\n"):
        out += f.feed(bytes([b]), 100 + i)
    assert out == [(100, b"label\r")]


def test_framer_keeps_empty_lines_for_the_caller_to_count():
    assert LineFramer().feed(b"\n\na\n", 5) == [(5, b""), (5, b""), (5, b"a")]


def test_framer_finish_returns_the_unterminated_line():
    f = LineFramer()
    f.feed(b"x\nlast", 7)
    assert f.finish() == [(7, b"last")]
    assert f.finish() == []


def test_framer_bounds_a_line_without_newline_and_resynchronises():
    f = LineFramer(max_bytes=10)
    assert f.feed(b"0123456789", 1) == []
    out = f.feed(b"abcdef", 2)
    assert out == [(1, b"0123456789a")]           # cut to max + 1: too long for any label
    assert f.pending == 0
    assert f.feed(b"x" * 100_000, 3) == []         # still discarding, nothing buffered
    assert f.pending == 0
    assert f.feed(b"tail\nnext\n", 4) == [(4, b"next")]


def test_framer_cuts_a_long_line_that_arrives_whole():
    f = LineFramer(max_bytes=10)
    assert f.feed(b"y" * 50 + b"\nok\n", 1) == [(1, b"y" * 11), (1, b"ok")]


@given(st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), max_size=20),
       st.lists(st.integers(1, 7), min_size=1, max_size=30))
def test_framer_any_split_gives_the_same_lines(labels, cuts):
    stream = b"".join(label + b"\n" for label in labels)
    f = LineFramer()
    out, pos, i = [], 0, 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        out += f.feed(stream[pos:pos + n], pos)
        pos, i = pos + n, i + 1
    assert [line for _t, line in out] == labels
    # each line's stamp is that of the read holding its first byte
    starts = []
    p = 0
    for label in labels:
        starts.append(p)
        p += len(label) + 1
    for (t, _line), start in zip(out, starts):
        assert t <= start


# -- datagrams and labels ----------------------------------------------------


def test_split_datagram():
    assert split_datagram(b"S1\n") == [b"S1"]
    assert split_datagram(b"S1") == [b"S1"]
    assert split_datagram(b"a\nb\r\nc") == [b"a", b"b\r", b"c"]
    assert split_datagram(b"\n") == [b""]


def test_decode_label_rules():
    assert decode_label(b"S  1\r") == ("S  1", [])
    assert decode_label("Reiz äöü ✓".encode()) == ("Reiz äöü ✓", [])
    assert decode_label(b"a\tb") == ("a\tb", [])
    assert decode_label(b"ab\xffc") == ("ab\ufffdc", ["invalid_utf8"])
    assert decode_label(b"a\x00b\x7f\rc") == ("a\ufffdb\ufffd\ufffdc", ["control_chars"])
    assert decode_label("x\u0085".encode()) == ("x\ufffd", ["control_chars"])
    with pytest.raises(LabelError) as e:
        decode_label(b"\r")
    assert e.value.kind == "empty_lines"


def test_label_length_limit_is_in_characters():
    assert decode_label(("✓" * MAX_LABEL_LENGTH).encode())[0] == "✓" * MAX_LABEL_LENGTH
    for raw in (b"a" * (MAX_LABEL_LENGTH + 1), b"x" * (MAX_LABEL_BYTES + 1)):
        with pytest.raises(LabelError) as e:
            decode_label(raw)
        assert e.value.kind == "too_long"
    with pytest.raises(LabelError):
        check_label("z" * (MAX_LABEL_LENGTH + 1), [])


def test_framer_cut_lines_are_always_too_long():
    f = LineFramer()
    (_t, cut), = f.feed(b"\xf0" * (MAX_LABEL_BYTES + 100), 1)
    with pytest.raises(LabelError):
        decode_label(cut)


# -- MarkerLog ---------------------------------------------------------------


def test_marker_log_bounded_by_count_and_bytes():
    log = MarkerLog(max_markers=3, max_bytes=1000)
    for i in range(5):
        log.append(b"%d" % i)
    assert (len(log), log.oldest_seq, log.next_seq) == (3, 2, 5)
    assert log.since(0) == [b"2", b"3", b"4"]
    assert log.since(4) == [b"4"]
    assert log.since(5) == []
    assert log.since(2, limit=2) == [b"2", b"3"]
    small = MarkerLog(max_markers=100, max_bytes=10)
    for i in range(5):
        small.append(b"abcd")
    assert len(small) == 2 and small.nbytes == 8


# -- MarkersCore -------------------------------------------------------------


def _decoded(messages):
    return [decode_message(m) for m in messages]


def test_core_numbers_markers_across_sources():
    core = MarkersCore("mk")
    a = core.ingest_lines([(1, b"one"), (2, b"")], "tcp:1.2.3.4:5", "tcp_markers")
    b = core.ingest_datagram(b"two\nthree\n", 3, "udp:h:9")
    c = core.ingest_zmq([b"four"], 4)
    ms = _decoded(a + b + c)
    assert [(m.seq, m.t_ns, m.label, m.source) for m in ms] == [
        (0, 1, "one", "tcp:1.2.3.4:5"), (1, 3, "two", "udp:h:9"), (2, 3, "three", "udp:h:9"), (3, 4, "four", "zmq")]
    assert {m.session for m in ms} == {core.session} and {m.stream for m in ms} == {"mk"}
    counts = core.counts
    assert (counts["markers"], counts["tcp_markers"], counts["udp_markers"], counts["zmq_markers"],
            counts["empty_lines"]) == (4, 1, 2, 1, 1)
    info = decode_marker_info(core.heartbeat()[1])
    assert (info.session, info.last_seq) == (core.session, 3)


def test_core_counts_bad_input_and_keeps_flagged_labels():
    core = MarkersCore()
    assert core.ingest_datagram(b"", 1, "udp:x:1") == []
    out = core.ingest_lines([(1, b"a" * 2000), (2, b"\xc3("), (3, b"n\x00l")], "tcp:x:1", "tcp_markers")
    ms = _decoded(out)
    assert [(m.label, m.flags) for m in ms] == [("\ufffd(", ("invalid_utf8",)), ("n\ufffdl", ("control_chars",))]
    c = core.counts
    assert (c["empty_datagrams"], c["too_long"], c["invalid_utf8"], c["control_chars"]) == (1, 1, 1, 1)
    assert [m.seq for m in ms] == [0, 1]


def test_core_zmq_map_messages():
    core = MarkersCore()
    (m1,) = _decoded(core.ingest_zmq([msgpack.packb({"label": "with time", "t_ns": 42})], 99))
    assert (m1.label, m1.t_ns, m1.flags) == ("with time", 42, ("sender_time",))
    (m2,) = _decoded(core.ingest_zmq([msgpack.packb({"label": "no time", "t_ns": None})], 99))
    assert (m2.t_ns, m2.flags) == (99, ())
    (m3,) = _decoded(core.ingest_zmq([msgpack.packb({"label": "bare"})], 98))
    assert m3.t_ns == 98
    for bad in ([msgpack.packb({"t_ns": 1})], [msgpack.packb({"label": "x", "t_ns": "1"})],
                [msgpack.packb({"label": 5})], [b"a", b"b"], [msgpack.packb({"label": "x", "t_ns": 2**63})]):
        assert core.ingest_zmq(bad, 1) == []
    assert core.counts["bad_zmq_messages"] == 5
    # a frame that merely starts like a map is a (flagged) text label
    (m4,) = _decoded(core.ingest_zmq([b"\x81oops"], 5))
    assert m4.flags == ("invalid_utf8",)
    assert core.ingest_zmq([msgpack.packb({"label": "z" * 5000})], 1) == []
    assert core.counts["too_long"] == 1


def test_core_control_commands():
    core = MarkersCore("mk", history_markers=2)
    for i in range(3):
        core.ingest_lines([(i, b"m%d" % i)], "tcp:x:1", "tcp_markers")
    ping = core.handle("ping", {})
    assert ping["service"] == "markers" and ping["session"] == core.session and ping["stream"] == "mk"
    st_ = core.handle("status", {})
    assert st_["last_seq"] == 2 and st_["history"]["markers"] == 2 and st_["counts"]["markers"] == 3
    assert isinstance(core.handle("time", {})["t_ns"], int)
    reply = core.handle("history", {"session": core.session, "from_seq": 0})
    assert isinstance(reply, ReplyFrames)
    assert reply.result == {"session": core.session, "markers": 2, "oldest_seq": 1, "last_seq": 2}
    assert [decode_marker(f).label for f in reply.frames] == ["m1", "m2"]
    with pytest.raises(ValueError, match=f"'{'0' * 32}'.*'{core.session}'"):
        core.handle("history", {"session": "0" * 32})
    with pytest.raises(TypeError):
        core.handle("history", {"session": core.session, "from_seq": -1})
    with pytest.raises(ValueError, match="unknown command"):
        core.handle("start", {})


# -- property tests of the framing, labels and core -----------------------------

from hypothesis import settings  # noqa: E402

from mushu_core.wire import decode_reply, dispatch, encode_request, serve_request  # noqa: E402
from mushu_markers.core import COUNTERS  # noqa: E402


def _one_shot(stream: bytes, max_bytes: int) -> list[bytes]:
    f = LineFramer(max_bytes)
    return [line for _t, line in f.feed(stream, 0) + f.finish()]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200).map(lambda b: b.replace(b"a", b"\n")), st.integers(1, 12),
       st.lists(st.integers(1, 30), min_size=1, max_size=20))
def test_framer_any_bytes_in_any_chunks_equal_one_shot(stream, max_bytes, cuts):
    f = LineFramer(max_bytes)
    out, pos, i = [], 0, 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        out += f.feed(stream[pos:pos + n], pos)
        assert f.pending <= max_bytes  # never more than one label's bytes held
        pos, i = pos + n, i + 1
    out += f.finish()
    assert [line for _t, line in out] == _one_shot(stream, max_bytes)
    assert all(len(line) <= max_bytes + 1 for _t, line in out)


@given(st.binary(max_size=100))
def test_split_datagram_keeps_every_byte_but_the_line_ends(data):
    lines = split_datagram(data)
    assert b"\n".join(lines) == data.removesuffix(b"\n")
    assert not any(b"\n" in line for line in lines)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40) | st.text(max_size=40).map(str.encode), st.integers(1, MAX_LABEL_BYTES))
def test_decode_label_gives_one_printable_line_or_names_its_counter(raw, max_bytes):
    try:
        label, flags = decode_label(raw, max_bytes)
    except LabelError as exc:
        assert exc.kind in COUNTERS and str(exc)
        return
    assert 0 < len(label.encode()) <= max(max_bytes, len(raw)) * 3
    assert not any(ord(c) < 32 and c != "\t" or 0x7F <= ord(c) <= 0x9F for c in label)
    assert set(flags) <= {"invalid_utf8", "control_chars"}


_ANY = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
                    | st.binary(max_size=8), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=30), _ANY.map(msgpack.packb),
                          st.dictionaries(st.sampled_from(["label", "t_ns"]), _ANY).map(msgpack.packb)),
                max_size=3))
def test_zmq_ingress_publishes_valid_markers_or_counts_a_problem(frames):
    core = MarkersCore()
    before = sum(core.counts[k] for k in COUNTERS[4:])
    out = core.ingest_zmq(frames, 7)
    for m in _decoded(out):  # whatever is published is a valid marker
        assert m.source == "zmq"
    assert len(out) == 1 or sum(core.counts[k] for k in COUNTERS[4:]) > before


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["ping", "status", "time", "history", "nosuch"]),
       st.dictionaries(st.sampled_from(["session", "from_seq", "id", "x"]), _ANY, max_size=3))
def test_control_commands_answer_any_arguments(cmd, args):
    core = MarkersCore()
    core.ingest_lines([(1, b"m")], "tcp:x:1", "tcp_markers")
    if "session" in args and args["session"] == "current":
        args["session"] = core.session
    reply, _cmd, error = serve_request([b"peer", b"", encode_request(cmd, **args)], core.handle)
    r = decode_reply(reply[2])
    assert r.ok is (error is None)
    if error is not None:
        assert isinstance(error, (ValueError, TypeError)), error


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(-2**63, 2**64 - 1), _ANY))
def test_history_from_any_sequence_number(from_seq):
    core = MarkersCore()
    core.ingest_lines([(1, b"m")], "tcp:x:1", "tcp_markers")
    try:
        reply = dispatch(core.commands, "history", {"session": core.session, "from_seq": from_seq})
    except TypeError as exc:
        assert "from_seq" in str(exc)
        return
    assert reply.result["markers"] == (1 if from_seq == 0 else 0)


def test_subscriptions_to_other_topics_are_counted():
    core = MarkersCore("mk")
    assert core.subscription(b"\x01marker/mk/") == (True, b"marker/mk/")
    assert core.subscription(b"\x01") == (True, b"") and core.subscription(b"\x00info/") == (False, b"info/")
    for bad in (b"\x01marker/mk/x", b"\x01nonsense", b"\x02", b""):
        assert core.subscription(bad) is None
    assert core.counts["bad_subscriptions"] == 4
    # another stream's topics: a SUB socket that follows the amp too sends them here; quietly passed over
    for other in (b"\x01marker/other/", b"\x01data/eeg/", b"\x00info/eeg/"):
        assert core.subscription(other) is None
    assert core.counts["bad_subscriptions"] == 4 and core.counts["other_stream_subscriptions"] == 3


# -- the journal ---------------------------------------------------------------


def _journaled(path, clock="boot-1", **kw):
    return MarkersCore(journal=MarkerJournal(str(path), "markers", clock), **kw)


def _send(core, *labels):
    return [decode_marker(frames[1]) for frames in core.ingest_lines([(i, lab.encode()) for i, lab in
                                                                       enumerate(labels)], "test", "tcp_markers")]


def test_a_restarted_core_goes_on_in_the_journals_session_with_its_history(tmp_path):
    path = tmp_path / "journal"
    first = _journaled(path)
    sent = _send(first, "a", "b", "c")
    again = _journaled(path)  # the process was killed and started again
    assert again.session == first.session and again.resumed == 3
    assert [decode_marker(f) for f in again.log.since(0)] == sent
    assert _send(again, "d")[0].seq == 3
    third = _journaled(path)
    assert [decode_marker(f).label for f in third.log.since(0)] == ["a", "b", "c", "d"]
    assert third.cmd_status()["journal"] == {"path": str(path), "bytes": path.stat().st_size, "resumed_markers": 4}


def test_a_torn_journal_is_cut_and_another_boots_journal_starts_a_new_session(tmp_path):
    path = tmp_path / "journal"
    first = _journaled(path)
    _send(first, "a", "b")
    with open(path, "ab") as f:
        f.write(b"\x40\x00\x00\x00half a rec")  # the process died in the middle of a write
    again = _journaled(path)
    assert again.session == first.session and again.log.next_seq == 2
    assert _send(again, "c")[0].seq == 2 and _journaled(path).log.next_seq == 3  # appended after the cut
    rebooted = _journaled(path, clock="boot-2")  # its monotonic stamps belong to another clock
    assert rebooted.session != first.session and rebooted.log.next_seq == 0 and rebooted.resumed == 0
    assert _journaled(path, clock="boot-2").session == rebooted.session


def test_the_journal_is_rewritten_with_the_history_and_stays_bounded(tmp_path):
    path = tmp_path / "journal"
    core = _journaled(path, history_markers=100)
    for i in range(30):
        _send(core, *(f"marker {i}-{j} " + "x" * 400 for j in range(200)))
    assert path.stat().st_size < 2 * (core.log.nbytes + 400) + (1 << 20) + 100_000
    again = _journaled(path, history_markers=100)
    assert again.log.next_seq == 6000 and [f for f in again.log.since(0)] == list(core.log.since(0))


def test_a_journal_that_cannot_be_written_costs_the_journal_not_the_marker(tmp_path):
    path = tmp_path / "journal"
    core = _journaled(path)
    os.close(core.journal._fd)  # as if the disk refused every write from now on
    core.journal._fd = os.open(os.devnull, os.O_RDONLY)
    assert [m.label for m in _send(core, "still published")] == ["still published"]
    assert core.counts["journal_errors"] == 1

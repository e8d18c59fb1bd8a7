"""The stream followers, without sockets: every sample and marker once, in order, or reported lost."""

import numpy as np

from mushu_amp.drivers.rampamp import ramp
from mushu_core.follow.stream import BlockFollower
from mushu_core.wire import Block, BlockHeader, StreamInfo

FS, CH, N = 1000.0, 2, 10  # 10 samples a block
MS = 1_000_000
A, B, C = "a" * 32, "b" * 32, "c" * 32


def block(session, seq, t0=0, n=N):
    h = BlockHeader("eeg", session, seq, seq * N, n, CH, FS, "<f4", t0 + seq * N * MS)
    return Block(h, ramp(seq * N, n, CH))


def info(session, next_sample):
    return StreamInfo("eeg", session, "rampamp", "running", FS, "<f4", ["x", "y"], ["uV", "uV"], 0, next_sample, 0)


class Amp:
    """The amp's side: its sessions' blocks, and a history that holds the last ``keep`` of each."""

    def __init__(self, keep=1000):
        self.blocks, self.keep, self.asked = {}, keep, []

    def make(self, session, count, t0=0):
        self.blocks[session] = [block(session, seq, t0) for seq in range(count)]
        return self.blocks[session]

    def history(self, session, from_sample, until):
        self.asked.append((session, from_sample, until))
        kept = self.blocks.get(session, [])[-self.keep:]
        for b in kept:
            if b.header.first_sample + b.header.n_samples > from_sample and b.header.first_sample < until:
                yield b


class Sink:
    def __init__(self, follow_new=True):
        self.rows, self.gaps, self.sessions, self.follow_new = [], [], [], follow_new

    def samples(self, b, skip, stop):
        self.rows.append((b.header.session, b.header.first_sample + skip, b.data[skip:stop]))

    def lost(self, first, count, reason):
        self.gaps.append((first, count, reason))

    def new_session(self, old, b, not_acquired):
        self.sessions.append((old, b.header.session, not_acquired))
        return self.follow_new

    def data(self, session=A):
        return np.concatenate([d for s, _, d in self.rows if s == session])


def follower(amp, sink=None, **kw):
    sink = sink or Sink()
    return BlockFollower(sink, amp.history, **kw), sink


def test_blocks_missed_before_the_first_live_one_and_between_come_from_the_history_once():
    amp = Amp()
    blocks = amp.make(A, 10)
    f, sink = follower(amp)
    f.begin(A, 0)
    for seq in (3, 4, 4, 7, 9):  # a slow joiner, a repeat, drops on the bus
        f.on_block(blocks[seq])
    np.testing.assert_array_equal(sink.data(), ramp(0, 100, CH))
    assert sink.gaps == [] and f.next_sample == 100 and f.refetched == 60 and f.duplicates == N


def test_a_lost_tail_is_fetched_when_the_stream_info_shows_it():
    amp = Amp()
    blocks = amp.make(A, 5)
    f, sink = follower(amp)
    f.begin(A, 0)
    f.on_block(blocks[0])
    f.on_info(info(A, 50))  # the last four blocks never came
    np.testing.assert_array_equal(sink.data(), ramp(0, 50, CH))
    f.on_info(info(B, 900))  # another session's info changes nothing here
    assert f.next_sample == 50 and f.session == A


def test_what_the_history_no_longer_holds_is_reported_lost_with_where_and_how_much():
    amp = Amp(keep=3)
    blocks = amp.make(A, 10)
    f, sink = follower(amp)
    f.begin(A, 0)
    f.on_block(blocks[9])  # the history holds blocks 7-9 only
    assert sink.gaps == [(0, 70, "no longer in the amp's history")] and f.lost == 70
    np.testing.assert_array_equal(sink.data(), ramp(70, 30, CH))
    # a history that gives nothing at all: everything up to the block is lost
    amp.blocks[A] = []
    f.on_info(info(A, 120))
    assert sink.gaps[-1] == (100, 20, "no longer in the amp's history") and f.next_sample == 120


def test_a_restart_is_a_new_session_after_the_samples_not_acquired_and_old_blocks_still_queued_are_dropped():
    amp = Amp()
    old = amp.make(A, 5)
    new = amp.make(B, 5, t0=150 * MS)  # restarted 100 ms after the old session's last sample
    f, sink = follower(amp)
    f.begin(A, 0)
    for b in old[:4]:
        f.on_block(b)
    f.on_block(new[2])  # the new session: its first samples come from the history
    assert sink.sessions == [(A, B, 110)]  # samples 40..49 of A were never delivered, nor acquired after it
    f.on_block(old[4])  # still queued from the old session: dropped
    np.testing.assert_array_equal(sink.data(B), ramp(0, 30, CH))
    assert f.session == B and f.next_sample == 30 and sink.data(A).shape[0] == 40


def test_a_sink_may_stop_following_or_hold_a_new_session():
    amp = Amp()
    old, new = amp.make(A, 3), amp.make(B, 3, t0=100 * MS)
    held = Sink(follow_new=None)  # "not yet": the consumer gives the block again later
    f, _ = follower(amp, held)
    f.begin(A, 0)
    f.on_block(old[0])
    f.on_block(new[0])
    assert f.session == A and f.followed and held.sessions
    held.follow_new = True
    f.on_block(new[0])
    assert f.session == B and held.data(B).shape[0] == N
    stop = Sink(follow_new=False)  # a recording of the old session ends there
    g, _ = follower(amp, stop)
    g.begin(A, 0)
    g.on_block(old[0])
    g.on_block(new[1])
    g.on_block(old[1])
    assert not g.followed and stop.data(A).shape[0] == N and not [r for r in stop.rows if r[0] == B]


def test_a_fill_with_a_deadline_goes_on_where_it_stopped_without_asking_the_history_again():
    amp = Amp()
    blocks = amp.make(A, 50)
    f, sink = follower(amp)
    f.begin(A, 0)
    f.on_block(blocks[49], deadline_ns=0)  # the deadline passed at once: one block, then behind
    assert f.behind and f.next_sample == N and len(amp.asked) == 1
    while not f.catch_up(deadline_ns=0):
        pass
    assert not f.behind and len(amp.asked) == 1  # the same reply went on, step by step
    f.on_block(blocks[49])
    np.testing.assert_array_equal(sink.data(), ramp(0, 500, CH))


def test_a_fill_up_to_a_sample_ends_there_even_inside_a_block():
    amp = Amp()
    blocks = amp.make(A, 5)
    f, sink = follower(amp)
    f.begin(A, 0)
    f.on_block(blocks[0])
    f.fill(25)  # a stop at sample 25
    np.testing.assert_array_equal(sink.data(), ramp(0, 25, CH))
    assert f.next_sample == 25 and sink.gaps == []


# -- markers -----------------------------------------------------------------------------------------

from mushu_core.follow.markers import MarkerFollower  # noqa: E402
from mushu_core.wire import Marker, MarkerStreamInfo  # noqa: E402


def mk(session, seq, t_ns=None):
    return Marker("markers", session, seq, seq * MS if t_ns is None else t_ns, f"m{seq}", "tcp:x", ())


def beat(session, last_seq, t_ns=0):
    return MarkerStreamInfo("markers", session, last_seq, t_ns)


class Markers:
    """The markers service's side: its sessions' markers, a history of the last ``keep`` of each."""

    def __init__(self, keep=1000):
        self.sessions, self.keep = {}, keep

    def make(self, session, count):
        self.sessions[session] = [mk(session, seq) for seq in range(count)]
        return self.sessions[session]

    def history(self, session, from_seq, until):
        return [m for m in self.sessions.get(session, [])[-self.keep:] if from_seq <= m.seq < until]


class MarkerLog:
    def __init__(self):
        self.got, self.lost = [], []

    def marker(self, m):
        self.got.append((m.session[:1], m.seq))

    def markers_lost(self, session, first, count):
        self.lost.append((session[:1], first, count))


def test_markers_come_once_in_order_with_what_the_bus_dropped_fetched():
    svc, log = Markers(), MarkerLog()
    ms = svc.make(A, 6)
    f = MarkerFollower(log, svc.history)
    f.join(A, 0)
    for i in (0, 2, 2, 5):  # drops and a repeat
        f.on_message(ms[i])
    assert log.got == [("a", i) for i in range(6)] and log.lost == []


def test_a_heartbeat_reveals_a_lost_tail_and_promises_how_far_the_service_has_published():
    svc, log = Markers(), MarkerLog()
    ms = svc.make(A, 4)
    f = MarkerFollower(log, svc.history)
    f.join(A, 0)
    f.on_message(ms[0])
    f.on_message(beat(A, 3, t_ns=77))
    assert log.got == [("a", i) for i in range(4)] and f.promised_ns == 77


def test_markers_gone_from_the_history_are_lost_and_a_new_session_is_followed_from_its_first():
    svc, log = Markers(keep=2), MarkerLog()
    svc.make(A, 10)
    f = MarkerFollower(log, svc.history)
    f.join(A, 0)
    f.on_message(beat(A, 9))
    assert log.lost == [("a", 0, 8)] and log.got == [("a", 8), ("a", 9)] and f.lost == 8
    svc.make(B, 2)  # the markers service restarted
    f.on_message(svc.sessions[B][1])
    assert log.got[-2:] == [("b", 0), ("b", 1)] and f.session == B


def test_before_its_join_a_follower_fetches_nothing_and_markers_stamped_before_the_join_are_no_loss():
    svc, log = Markers(keep=3), MarkerLog()
    svc.make(A, 20)
    f = MarkerFollower(log, svc.history, stamped_before_join=lambda m: m.t_ns < 18 * MS)
    f.on_message(beat(A, 19))  # before the start: only where the service is
    assert f.next_seq == 20 and log.got == [] and log.lost == []
    # a consumer that never heard the service joins; its first contact is a heartbeat of a long session
    g = MarkerFollower(log, svc.history, stamped_before_join=lambda m: m.t_ns < 18 * MS)
    g.join()
    g.on_message(beat(A, 19))
    assert log.lost == [] and log.got == [("a", 17), ("a", 18), ("a", 19)]


def test_a_marker_older_than_the_next_expected_is_a_repeat_and_a_restarted_service_starts_at_seq_0():
    svc, log = Markers(), MarkerLog()
    ms = svc.make(A, 8)
    f = MarkerFollower(log, svc.history)
    f.join(A, 5)
    f.on_message(ms[3])  # already seen
    f.on_message(ms[7])  # 5 and 6 come from the history first
    assert log.got == [("a", 5), ("a", 6), ("a", 7)] and f.next_seq == 8
    other = svc.make(C, 3)
    f.on_message(other[2])
    assert log.got[-3:] == [("c", 0), ("c", 1), ("c", 2)] and f.session == C and f.next_seq == 3


def test_a_fill_stopped_at_its_deadline_goes_on_past_what_it_first_asked_for():
    # A consumer that falls behind (a restarted recorder) fills from the history in steps; by the next
    # step the amp has gone on, and the next live block starts after the range the first step asked for.
    amp = Amp()
    blocks = amp.make(A, 20)
    f, sink = follower(amp)
    f.begin(A, 0)
    assert not f.fill(50, deadline_ns=0)  # one block, then the deadline
    assert f.behind and f.next_sample == N
    f.on_block(blocks[15])  # the history holds 50..150 too: nothing is lost
    np.testing.assert_array_equal(sink.data(), ramp(0, 160, CH))
    assert sink.gaps == [] and f.lost == 0 and not f.behind
    f.on_block(blocks[16])
    f.catch_up()
    assert f.next_sample == 170 and sink.gaps == []


# -- the sample clock ------------------------------------------------------------


def test_times_of_a_run_of_samples_are_each_sample_s_time_of_across_blocks():
    from mushu_core.follow.timeline import Timeline

    timeline = Timeline()
    rng = np.random.default_rng(5)
    first, t = 0, 10**12
    for _ in range(40):  # blocks of varying size, stamps jittered so that neighbours overlap or leave gaps
        n = int(rng.integers(1, 30))
        timeline.add(first, t + int(rng.integers(-300_000, 300_000)), n, 3000.0)
        first, t = first + n, t + round(n * 1e9 / 3000)
    for start, n in [(0, first), (7, 1), (13, 200), (first - 5, 5)]:
        expected = [timeline.time_of(s) for s in range(start, start + n)]
        assert timeline.times_of(start, n).tolist() == expected

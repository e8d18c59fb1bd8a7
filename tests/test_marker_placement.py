"""Placing markers on samples, without sockets."""

from mushu_core.follow.placement import MarkerPlacer
from mushu_core.follow.timeline import Timeline
from mushu_core.wire import Marker

S = "5" * 32
MS = 1_000_000  # ns


def timeline(blocks, fs=1000.0):
    tl = Timeline()
    for first, t_ns, n in blocks:
        tl.add(first, t_ns, n, fs)
    return tl


def marker(seq, t_ns, label=None, session=S):
    return Marker("markers", session, seq, t_ns, label or f"m{seq}", "tcp:x", ())


def test_a_marker_lands_on_the_first_sample_acquired_at_or_after_it():
    tl = timeline([(0, 100 * MS, 4), (4, 104 * MS + 300_000, 4)])  # second block stamped 0.3 ms late
    assert tl.sample_at(100 * MS) == 0
    assert tl.sample_at(100 * MS + 1) == 1
    assert tl.sample_at(102 * MS + 500_000) == 3
    assert tl.sample_at(103 * MS + 1) == 4        # between blocks: the next block's first sample
    assert tl.sample_at(107 * MS + 300_000) == 7
    assert tl.sample_at(107 * MS + 300_001) is None  # not acquired yet


def test_a_markers_sample_does_not_depend_on_the_blocks_that_arrive_after_it():
    # block 1 was read 5 ms late, block 2 on time: their sample times overlap
    blocks = [(0, 0, 5), (5, 10 * MS, 5), (10, 8 * MS, 5)]
    early, full = timeline(blocks[:2]), timeline(blocks)
    for t in (9 * MS, 11 * MS, 12 * MS + 1, 13 * MS):
        assert early.sample_at(t) == full.sample_at(t), t  # a consumer that has block 2 already agrees
    assert full.sample_at(11 * MS) == 6  # the first sample, in sample order, acquired at or after it
    assert full.sample_at(14 * MS + 1) is None  # after every sample that has arrived


def test_place_returns_ms_from_the_first_returned_sample_and_holds_back_the_rest():
    tl = timeline([(10, 10 * MS, 5)])
    mm = MarkerPlacer()
    mm.start_ns = 10 * MS
    for seq, t in enumerate([10 * MS, 12 * MS + 1, 14 * MS, 14 * MS + 1]):
        mm.add(marker(seq, t))
    assert mm.place(tl, [[10, 5]], 1000.0) == [(0.0, "m0"), (3.0, "m1"), (4.0, "m2")]
    tl.add(15, 15 * MS, 5, 1000.0)
    assert mm.place(tl, [[15, 5]], 1000.0) == [(0.0, "m3")]


def test_markers_on_one_sample_keep_their_arrival_order():
    tl = timeline([(0, 0, 10)])
    mm = MarkerPlacer()
    mm.start_ns = 0
    labels = ["c", "a", "b"]
    for seq, label in enumerate(labels):
        mm.add(marker(seq, 5 * MS - 10, label))
    assert mm.place(tl, [[0, 10]], 1000.0) == [(5.0, "c"), (5.0, "a"), (5.0, "b")]


def test_markers_stamped_out_of_order_each_land_on_their_sample():
    # senders' own stamps (sender_time) need not come in order: a later-stamped marker arrives first
    tl = timeline([(0, 0, 10)])
    mm = MarkerPlacer()
    mm.start_ns = 0
    for seq, t in enumerate([12 * MS, 7 * MS, 3 * MS, 30 * MS, 9 * MS - 1]):
        mm.add(marker(seq, t))
    assert [(sample, m.label) for sample, m, _ in mm.place_samples(tl, 10)] == [(3, "m2"), (7, "m1"), (9, "m4")]
    assert mm.pending == 2  # 12 ms and 30 ms: not acquired yet
    tl.add(10, 10 * MS, 10, 1000.0)
    assert [(sample, m.label) for sample, m, _ in mm.place_samples(tl, 20)] == [(12, "m0")]
    assert mm.pending == 1


def test_markers_before_the_first_sample_are_counted_not_returned():
    tl = timeline([(0, 100 * MS, 10)])
    mm = MarkerPlacer()
    mm.start_ns = 100 * MS
    mm.add(marker(0, 50 * MS))            # long before start
    mm.add(marker(1, 100 * MS - 300_000))  # within the period before the first sample: sample 0
    assert mm.place(tl, [[0, 10]], 1000.0) == [(0.0, "m1")]
    assert mm.before_start == 1


def test_a_marker_whose_sample_was_already_returned_comes_on_it_at_a_negative_ms_and_is_counted_late():
    tl = timeline([(0, 0, 10), (10, 10 * MS, 10)])
    mm = MarkerPlacer()
    mm.start_ns = 0
    assert mm.place(tl, [[0, 10]], 1000.0) == []
    mm.add(marker(0, 3 * MS))
    assert mm.place(tl, [[10, 10]], 1000.0) == [(-7.0, "m0")]  # sample 3: 7 rows before this data
    assert mm.late == 1


def test_a_late_marker_counts_back_over_returned_samples_only():
    # returned: samples 0..9, then (10..19 lost) 20..29; now 30..39
    tl = timeline([(0, 0, 10), (20, 20 * MS, 10), (30, 30 * MS, 10)])
    mm = MarkerPlacer()
    mm.start_ns = 0
    assert mm.place(tl, [[0, 10], [20, 10]], 1000.0) == []
    mm.add(marker(0, 5 * MS))    # sample 5: position 5 of 20 returned
    mm.add(marker(1, 15 * MS))   # lost sample 15: the next returned one, sample 20 (position 10)
    mm.add(marker(2, 33 * MS))   # in this data
    assert mm.place(tl, [[30, 10]], 1000.0) == [(-15.0, "m0"), (-10.0, "m1"), (3.0, "m2")]
    assert mm.late == 2


def test_rows_account_for_lost_samples_between_segments():
    tl = timeline([(0, 0, 10), (20, 20 * MS, 10)])
    mm = MarkerPlacer()
    mm.start_ns = 0
    mm.add(marker(0, 22 * MS))   # sample 22 is row 12 (10 rows, then samples 20..)
    mm.add(marker(1, 15 * MS))   # in the lost gap: the next returned sample, row 10
    assert mm.place(tl, [[0, 10], [20, 10]], 1000.0) == [(10.0, "m1"), (12.0, "m0")]


def test_the_timeline_forgets_old_blocks_in_batches_and_keeps_the_times_it_needs():
    tl = timeline([(i, i * MS, 1) for i in range(1000)])
    tl.forget_before(100)  # fewer than 256 blocks to drop: kept (amortised)
    assert tl.time_of(0) == 0 and tl.sample_at(0) == 0
    tl.forget_before(600)
    assert tl.sample_at(0) == 600  # earlier times map to the first sample kept
    assert tl.time_of(600) == 600 * MS and tl.time_of(999) == 999 * MS and tl.end_sample == 1000


def test_after_a_new_session_a_marker_never_lands_on_the_old_sessions_rows():
    mm = MarkerPlacer()
    mm.start_ns = 0
    old = timeline([(0, 0, 100)])
    assert mm.place(old, [[0, 100]], 1000.0) == []
    # the amp restarted: sample indexes start again at 0, the new session's first five samples were lost
    mm.begin_session()
    new = timeline([(5, 205 * MS, 10)])
    mm.add(marker(0, 202 * MS))  # in the lost samples: it lands on the next returned one
    # no rows yet (held back for markers still on their way): nothing placed before the data has ended
    assert mm.place(new, [], 1000.0) == []
    assert mm.place(new, [[5, 10]], 1000.0) == [(0.0, "m0")]  # the first new row, not row 2 of the old session

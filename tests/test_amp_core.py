"""AmpCore and its History, without sockets."""

import time

import numpy as np
import pytest

from mushu_amp.core import BLOCK_OVERHEAD_BYTES, MAX_BLOCK_BYTES, AmpCore, History, block_cost
from mushu_amp.drivers.rampamp import ramp
from mushu_core.wire import BlockHeader, ReplyFrames, decode_block_frames, encode_block_header


def make_block(first, n, ch=4, seq=None):
    h = BlockHeader("eeg", "a" * 32, first if seq is None else seq, first, n, ch, 1000.0, "<f4", 0)
    return h, encode_block_header(h), ramp(first, n, ch)


def test_history_is_bounded_in_bytes_and_finds_blocks_by_sample_and_seq():
    blocks = [make_block(i * 5, 5, seq=i) for i in range(30)]
    costs = [block_cost(frame, data) for _, frame, data in blocks]
    assert costs[0] == 5 * 4 * 4 + len(blocks[0][1]) + BLOCK_OVERHEAD_BYTES  # payload, header, objects
    hist = History(limit_bytes=sum(costs[20:]))  # the last ten blocks, headers and all
    for block in blocks:
        hist.append(*block)
    assert len(hist) == 10 and hist.nbytes == sum(costs[20:]) and hist.oldest_sample == 100
    assert [h.first_sample for h, _, _ in hist.since_sample(123)] == list(range(120, 150, 5))
    assert [h.first_sample for h, _, _ in hist.since_sample(0)][0] == 100  # older: from the oldest kept
    assert [h.seq for h, _, _ in hist.since_seq(27)] == [27, 28, 29]
    assert [h.seq for h, _, _ in hist.since_sample(120, max_bytes=160)] == [24, 25]


def test_history_compacts_without_losing_order():
    hist = History(limit_bytes=3 * block_cost(*make_block(9999, 1, seq=9999)[1:]))
    for i in range(10_000):
        hist.append(*make_block(i, 1, seq=i))
    assert [h.seq for h, _, _ in hist.since_seq(0)] == [9997, 9998, 9999]


def started_core(fs=1000, channels=4):
    core = AmpCore()
    core.cmd_use("rampamp")
    core.cmd_configure({"fs": fs, "channels": channels})
    core.cmd_start()
    return core


def test_acquire_numbers_and_stamps_contiguous_blocks():
    core = started_core()
    blocks = []
    t_end = time.monotonic() + 0.05
    while time.monotonic() < t_end:
        blocks += core.acquire()
        time.sleep(0.001)
    assert [h.seq for h, _, _ in blocks] == list(range(len(blocks)))
    firsts = [h.first_sample for h, _, _ in blocks]
    assert firsts == list(np.cumsum([0] + [h.n_samples for h, _, _ in blocks[:-1]]))
    assert all(b.t_ns >= a.t_ns for (a, _, _), (b, _, _) in zip(blocks, blocks[1:]))
    data = np.concatenate([d for _, _, d in blocks])
    np.testing.assert_array_equal(data, ramp(0, len(data), 4))


def test_a_large_read_is_split_into_bounded_blocks():
    core = started_core(fs=1_000_000, channels=64)
    time.sleep(0.05)  # ~50k samples x 256 bytes is far over one block
    blocks = core.acquire()
    assert len(blocks) > 1
    assert all(d.nbytes <= MAX_BLOCK_BYTES for _, _, d in blocks)
    assert blocks[1][0].t_ns - blocks[0][0].t_ns == round(blocks[0][0].n_samples * 1e9 / 1e6)


def test_history_command_returns_decodable_blocks():
    core = started_core()
    time.sleep(0.01)
    core.acquire()
    r = core.handle("history", {"session": core.session, "from_sample": 0})
    assert isinstance(r, ReplyFrames) and r.result["blocks"] * 2 == len(r.frames)
    block = decode_block_frames(r.frames[0], r.frames[1])
    assert block.header.first_sample == 0
    with pytest.raises(TypeError, match="exactly one of"):
        core.handle("history", {"session": core.session})


def test_driver_failure_moves_the_core_to_error_state():
    core = started_core()

    def broken():
        raise OSError("unplugged")

    core.driver.get_data = broken
    assert core.acquire() == []
    assert core.state == "error" and "OSError: unplugged" in core.error
    assert core.info().state == "error" and core.info().error == core.error


def test_a_read_time_the_driver_took_is_the_blocks_read_time():
    core = started_core(channels=4)
    took = []

    def read():  # the device's read returns; decoding its samples takes 3 ms
        core.driver.read_ns = time.monotonic_ns()
        took.append(core.driver.read_ns)
        time.sleep(0.003)
        return ramp(0, 5, 4), []

    core.driver.get_data = read
    (header, _, _), = core.acquire()
    assert header.t_read_ns == took[0]
    core.driver.get_data = lambda: (ramp(5, 5, 4), [])  # a driver that takes no read time: the return's
    before = time.monotonic_ns()
    (header, _, _), = core.acquire()
    assert before <= header.t_read_ns <= time.monotonic_ns()


def test_driver_times_are_on_the_process_clock_with_its_offset():
    from mushu_core import clock
    clock.set_offset(100.0)  # as if on a host whose clock is 100 s ahead
    try:
        core = started_core()  # rampamp knows its sample times (time.monotonic_ns)
        time.sleep(0.01)
        blocks = core.acquire()
        now = clock.now_ns()
    finally:
        clock.set_offset(0.0)
    assert blocks and now - 1e9 < blocks[-1][0].t_ns <= now
    assert now - 1e9 < blocks[-1][0].t_read_ns <= now


def test_driver_returning_the_wrong_shape_is_an_error_not_a_corrupt_stream():
    core = started_core(channels=4)
    core.driver.get_data = lambda: (np.zeros((3, 5), np.float32), [])
    assert core.acquire() == []
    assert core.state == "error" and "shape (3, 5)" in core.error


def test_the_status_says_how_a_session_began(tmp_path):
    state = str(tmp_path / "amp.json")
    core = AmpCore(state_file=state)
    core.handle("use", {"amp": "rampamp"})
    core.handle("configure", {"kwargs": {"fs": 1000, "channels": 2}})
    assert core.cmd_status()["session_origin"] is None
    core.handle("start", {})
    assert core.cmd_status()["session_origin"] == "command"  # a client's start
    # the service comes up again (supervisord) and restores its running state: a restart
    again = AmpCore(state_file=state)
    assert again.restore_state()
    assert again.cmd_status()["session_origin"] == "restored"
    again.handle("stop", {})
    again.handle("start", {})
    assert again.cmd_status()["session_origin"] == "command"
    core.cmd_stop()
    again.cmd_stop()


def test_commands_do_not_wait_for_a_busy_disk(tmp_path, monkeypatch):
    # An fsync waits for the disk: seconds while a recording writes to it. The state file is for
    # a restarted process (the page cache serves it), so saving it must not wait.
    monkeypatch.setattr("os.fsync", lambda fd: time.sleep(2.0))
    core = AmpCore(state_file=str(tmp_path / "amp.json"))
    t = time.monotonic()
    core.handle("use", {"amp": "rampamp"})
    core.handle("configure", {"kwargs": {"fs": 1000, "channels": 2}})
    core.handle("start", {})
    core.handle("stop", {})
    assert time.monotonic() - t < 1.0
    again = AmpCore(state_file=str(tmp_path / "amp.json"))
    assert again.restore_state() and again.config == {"fs": 1000, "channels": 2}

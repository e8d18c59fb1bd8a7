"""The recorder's core without sockets: what it does when the amp's history is slower than the amp."""

from __future__ import annotations

import time

import numpy as np

from mushu_amp.drivers.rampamp import ramp
from mushu_client.clock import host_clock_id, now_ns
from mushu_client.protocol import Block, BlockHeader
from mushu_client.recording import load
from mushu_recorder.core import CATCH_UP_STEP_NS, RecorderCore, Services

SESSION = "0123456789abcdef0123456789abcdef"
FS, CHANNELS, N = 1000.0, 4, 10  # 10-sample blocks


def block(seq: int, t0: int) -> Block:
    h = BlockHeader("eeg", SESSION, seq, seq * N, N, CHANNELS, FS, "<f4", t0 + seq * N * 1_000_000)
    return Block(h, ramp(seq * N, N, CHANNELS))


def core_with(tmp_path, history) -> RecorderCore:
    status = {"session": SESSION, "stream": "eeg", "config": {}, "channels": [f"c{i}" for i in range(CHANNELS)],
              "fs": FS, "amp": "rampamp", "unit": "a.u."}
    clock = {"t_ns": 0, "clock": host_clock_id()}
    return RecorderCore(str(tmp_path), Services(
        amp_status=lambda: status, amp_history=history, markers_status=lambda: None,
        markers_history=lambda *a: iter(()), amp_time=lambda: clock, markers_time=lambda: clock))


def test_samples_the_history_cannot_give_are_a_gap_before_the_live_block(tmp_path):
    t0 = now_ns()
    core = core_with(tmp_path, lambda session, from_sample, until: iter(()))  # it holds nothing any more
    core.handle("record", {"name": "gap", "session": SESSION, "first_sample": 0})
    core.on_block(block(0, t0))
    core.on_block(block(5, t0))  # blocks 1-4 never came
    result = core.handle("finish", {"end_sample": 6 * N})
    assert [(g["sample"], g["count"]) for g in result["gaps"]] == [(N, 4 * N)]
    data = load(result["base"]).data
    np.testing.assert_array_equal(data[:N], ramp(0, N, CHANNELS))
    assert np.isnan(data[N:5 * N]).all()
    np.testing.assert_array_equal(data[5 * N:], ramp(5 * N, N, CHANNELS))


def test_a_recorder_behind_the_amp_catches_up_in_steps_and_answers_in_between(tmp_path):
    t0 = now_ns()
    blocks = [block(seq, t0) for seq in range(400)]
    fetched = []

    def slow_history(session, from_sample, until):  # 2 ms a block: 0.8 s for the whole history
        for b in blocks[from_sample // N:]:
            if b.header.first_sample >= until:
                return
            time.sleep(0.002)
            fetched.append(b.header.seq)
            yield b

    core = core_with(tmp_path, slow_history)
    core.handle("record", {"name": "behind", "session": SESSION, "first_sample": 0})
    # the bus delivers the newest block: everything before it is to come from the history
    t = time.monotonic()
    core.on_block(blocks[-1])
    took = time.monotonic() - t
    assert took < 3 * CATCH_UP_STEP_NS / 1e9, took  # one step, not the 0.8 s of the whole history
    assert core.active.behind and 0 < core.active.next_sample < blocks[-1].header.first_sample
    assert core.handle("status", {})["recording"]["next_sample"] == core.active.next_sample
    steps = 0
    while core.active.behind:  # the service's loop ticks between control requests
        core.tick()
        steps += 1
    assert steps >= 5
    result = core.handle("finish", {"end_sample": 400 * N})
    assert result["gaps"] == [] and result["n_samples"] == 400 * N
    assert fetched == list(range(400))  # each block fetched once, in order
    np.testing.assert_array_equal(load(result["base"]).data, ramp(0, 400 * N, CHANNELS))

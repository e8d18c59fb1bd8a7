"""The recorder's core without sockets: what it does when the amp's history is slower than the amp."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest

from mushu_amp.drivers.rampamp import ramp
from mushu_core.clock import host_clock_id, now_ns
from mushu_core.recordings import load
from mushu_core.wire import Block, BlockHeader
from mushu_recorder.core import CATCH_UP_STEP_NS, RecorderCore, Services
from mushu_recorder.files import BackgroundSync

SESSION = "0123456789abcdef0123456789abcdef"
FS, CHANNELS, N = 1000.0, 4, 10  # 10-sample blocks


def block(seq: int, t0: int) -> Block:
    h = BlockHeader("eeg", SESSION, seq, seq * N, N, CHANNELS, FS, "<f4", t0 + seq * N * 1_000_000)
    return Block(h, ramp(seq * N, N, CHANNELS))


def core_with(tmp_path, history) -> RecorderCore:
    status = {"session": SESSION, "stream": "eeg", "config": {}, "channels": [f"c{i}" for i in range(CHANNELS)],
              "fs": FS, "amp": "rampamp", "unit": "a.u."}
    clock = {"t_ns": 0, "clock": host_clock_id()}

    def no_markers_service():
        raise ConnectionError("no markers service runs")  # as its status says (None)
    return RecorderCore(str(tmp_path), Services(
        amp_status=lambda: status, amp_history=history, markers_status=lambda: None,
        markers_history=lambda *a: iter(()), amp_time=lambda: clock, markers_time=no_markers_service))


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


# -- how a recording ends without its client ------------------------------------------------------

OTHER, THIRD = "1" * 32, "2" * 32


def block_of(session: str, seq: int, t0: int) -> Block:
    h = BlockHeader("eeg", session, seq, seq * N, N, CHANNELS, FS, "<f4", t0 + seq * N * 1_000_000)
    return Block(h, ramp(seq * N, N, CHANNELS))


def amp_core(tmp_path):
    """A core whose amp status the test changes: (core, status), with the amp's history empty."""
    core = core_with(tmp_path, lambda session, from_sample, until: iter(()))
    status = core.services.amp_status()
    status.update(last_seq=-1, session_origin="command")
    return core, status


def acquire(core, status, session: str, blocks: int, t0: int, first_seq: int = 0, origin: str = "command"):
    """The amp acquires ``blocks`` blocks of ``session`` (begun as ``origin`` says) and the core receives them live."""
    if status["session"] != session:
        status.update(session=session, last_seq=-1, session_origin=origin)
    for seq in range(first_seq, first_seq + blocks):
        status["last_seq"] = seq
        core.on_block(block_of(session, seq, t0))


def test_a_lease_not_renewed_ends_the_recording_at_the_last_sample_it_has(tmp_path):
    core, status = amp_core(tmp_path)
    with pytest.raises(ValueError, match="lease_s must be .* at least 2"):
        core.handle("record", {"name": "short", "session": SESSION, "first_sample": 0, "lease_s": 0.5})
    token = core.handle("record", {"name": "leased", "session": SESSION, "first_sample": 0, "lease_s": 2.0})["token"]
    acquire(core, status, SESSION, 5, now_ns())
    assert core.handle("renew", {"token": token})["state"] == "recording"
    core.active.renewed_ns -= 1_500_000_000
    core.tick()
    assert core.active is not None  # within its lease
    core.active.renewed_ns -= 1_000_000_000  # 2.5 s since the last renewal
    core.tick()
    assert core.active is None
    renewed = core.handle("renew", {"token": token})
    assert renewed["state"] == "ended" and renewed["ended_by"] == "lease"
    assert "did not renew its lease for 2 s" in renewed["end_reason"]
    # its client's finish, late, gets that result: at the last sample the recorder had, not the client's
    result = core.handle("finish", {"end_sample": 100 * N, "token": token, "session": SESSION})
    assert result["ended_by"] == "lease" and result["n_samples"] == result["end_sample"] == 5 * N
    rec = load(result["base"])
    assert rec.meta["mushu"]["ended_by"] == "lease" and rec.meta["mushu"]["state"] == "complete"
    np.testing.assert_array_equal(rec.data, ramp(0, 5 * N, CHANNELS))
    with pytest.raises(ValueError, match="no recording has token 'nonsense'"):
        core.handle("renew", {"token": "nonsense"})


def test_a_session_a_start_command_began_ends_the_recording_and_a_restart_is_a_gap(tmp_path):
    core, status = amp_core(tmp_path)
    t0 = now_ns()
    core.handle("record", {"name": "one", "session": SESSION, "first_sample": 0})
    acquire(core, status, SESSION, 3, t0)
    # the same amp process begins another session (a client stopped and started it): the recording ends
    acquire(core, status, OTHER, 2, t0 + 10**9)
    assert core.active is None
    one = core.last_finished
    assert one["ended_by"] == "session" and one["gaps"] == [] and one["n_samples"] == 3 * N
    np.testing.assert_array_equal(load(one["base"]).data, ramp(0, 3 * N, CHANNELS))

    core.handle("record", {"name": "two", "session": OTHER, "first_sample": 2 * N})
    acquire(core, status, OTHER, 2, t0 + 10**9, first_seq=2)
    # the amp process restarts and restores its running state: a gap, and the recording goes on
    acquire(core, status, THIRD, 2, t0 + 2 * 10**9, origin="restored")
    assert core.active is not None and core.active.session == THIRD
    result = core.handle("finish", {"end_sample": 2 * N, "session": THIRD})
    assert result["ended_by"] == "client"
    ((gap),) = result["gaps"]
    assert gap["reason"] == "amp restarted" and gap["sample"] == 2 * N
    data = load(result["base"]).data
    np.testing.assert_array_equal(data[:2 * N], ramp(2 * N, 2 * N, CHANNELS))
    np.testing.assert_array_equal(data[2 * N + gap["count"]:], ramp(0, 2 * N, CHANNELS))


def test_a_refusal_names_the_recording_in_progress_and_how_to_end_it(tmp_path):
    core, status = amp_core(tmp_path)
    client = {"pid": 4321, "host": "lab-pc", "program": "experiment.py"}
    token = core.handle("record", {"name": "a", "session": SESSION, "first_sample": 0, "lease_s": 10.0,
                                   "client": client})["token"]
    acquire(core, status, SESSION, 2, now_ns())
    with pytest.raises(RuntimeError, match=r"already recording '.*/a' \(started by pid 4321 on host lab-pc "
                                           r"\(experiment.py\); its client renewed its lease .* s ago; without a "
                                           r"renewal it ends .* s from now\); a controller ends it with "
                                           r"'mushu record stop a', its client with stop\(\)"):
        core.handle("record", {"name": "b", "session": SESSION, "first_sample": 0})
    with pytest.raises(ValueError, match=r"recording '.*/b' is not in progress \('.*/a' is: 'mushu record stop a' "
                                         r"ends it\)"):
        core.handle("stop", {"name": "b"})
    # a client that started the amp again asks: the recording in progress had its session end
    status.update(session=OTHER, last_seq=0, session_origin="command")
    assert core.handle("record", {"name": "b", "session": OTHER, "first_sample": 0})["base"].endswith("/b")
    assert core.handle("renew", {"token": token})["ended_by"] == "session"
    stopped = core.handle("stop", {"name": "b"})
    assert stopped["ended_by"] == "controller" and load(stopped["base"]).meta["mushu"]["ended_by"] == "controller"
    with pytest.raises(RuntimeError, match="no recording is in progress"):
        core.handle("stop", {})


def test_a_resumed_recording_keeps_its_token_and_lease(tmp_path):
    core, status = amp_core(tmp_path)
    token = core.handle("record", {"name": "kept", "session": SESSION, "first_sample": 0, "lease_s": 4.0})["token"]
    acquire(core, status, SESSION, 2, now_ns())
    core.sync()
    again = core_with(tmp_path, lambda session, from_sample, until: iter(()))  # the recorder restarted
    assert again.resume().endswith("/kept")
    assert again.active.lease_s == 4.0 and again.handle("renew", {"token": token})["state"] == "recording"


def test_a_busy_disk_holds_up_neither_a_recording_nor_its_finish(tmp_path, monkeypatch):
    # An fsync on a busy disk takes seconds; the service syncs in a thread of its own
    # (BackgroundSync) while its loop writes and answers, and waits for it when it exits.
    synced = []

    def slow_fsync(fd):
        time.sleep(0.5)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr("os.fsync", slow_fsync)
    core, status = amp_core(tmp_path)
    # a markers service that has published everything: finish() need not wait for it
    core.services = dataclasses.replace(core.services, markers_status=lambda: {
        "session": OTHER, "last_seq": -1, "promised_ns": 2**62})
    core.sync_files = syncer = BackgroundSync()
    t = time.monotonic()
    core.handle("record", {"name": "busy", "session": SESSION, "first_sample": 0})
    acquire(core, status, SESSION, 20, now_ns())
    core.sync()
    result = core.handle("finish", {"end_sample": 20 * N})
    assert time.monotonic() - t < 0.5 and result["n_samples"] == 20 * N
    syncer.close()
    assert {os.path.basename(p) for p in synced} >= {"busy.eeg", "busy.meta", "busy.marker", "busy.times"}
    np.testing.assert_array_equal(load(result["base"]).data, ramp(0, 20 * N, CHANNELS))

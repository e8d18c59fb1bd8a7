"""The recorder survives SIGKILL with nothing lost, repairs torn tails, and fails cleanly on a full disk."""

import json
import os
import random
import resource
import signal
import time
import warnings

import numpy as np
import pytest

import mushu_client
from mushu_amp.drivers.rampamp import ramp
from mushu_client import MarkerSender, RecordingError, RecordingWarning
from mushu_core.recordings import load
from mushu_recorder.files import JOURNAL, RecordingWriter

FS = 1000
CH = 16


def open_amp(amp_svc, markers_svc, rec_svc):
    # No marker grace: a marker that reaches the client after its sample was returned comes at a
    # negative ms, still on the sample the recorder writes it on.
    amp = mushu_client.get_amp("rampamp", data=amp_svc.data, control=amp_svc.control, markers=markers_svc.data,
                               markers_control=markers_svc.control, recorder=rec_svc.control)
    amp.configure(fs=FS, channels=CH)
    return amp


class Collector:
    """What the client's get_data returned: data, and markers at absolute sample positions."""

    def __init__(self, amp):
        self.amp, self.chunks, self.markers, self.n = amp, [], [], 0

    def read(self):
        data, markers = self.amp.get_data()
        self.markers += [(self.n + round(ms * FS / 1000), label) for ms, label in markers]
        self.chunks.append(data)
        self.n += len(data)
        return len(data)

    def drain(self):
        while self.read():
            pass

    @property
    def data(self):
        return np.concatenate(self.chunks)


def recorded_markers(rec):
    return [(round(ms * FS / 1000), label) for ms, label in rec.markers]


def test_sigkill_at_random_moments_loses_nothing(spawn_amp, spawn_markers, spawn_recorder):
    amp_svc, mk = spawn_amp(), spawn_markers()
    rec = spawn_recorder(amp_svc, mk)
    sender = MarkerSender("127.0.0.1", mk.port)
    rng = random.Random(1234)
    kills = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordingWarning)  # the recorder is down now and then
        with open_amp(amp_svc, mk, rec) as amp:
            amp.start("crashy")
            c = Collector(amp)
            t_end = time.monotonic() + 8.0
            next_kill = time.monotonic() + rng.uniform(0.3, 1.2)
            next_marker = time.monotonic()
            while time.monotonic() < t_end:
                c.read()
                now = time.monotonic()
                if now >= next_marker:
                    sender.send(f"marker {len(c.markers)} at {c.n}")
                    next_marker = now + rng.uniform(0.01, 0.1)
                if now >= next_kill:
                    rec.proc.send_signal(signal.SIGKILL)
                    rec.proc.wait()
                    kills += 1
                    # sometimes the recorder stays down a while (the amp's history covers it)
                    time.sleep(rng.choice([0, 0, 0.3, 1.0]))
                    rec = spawn_recorder(like=rec)
                    next_kill = time.monotonic() + rng.uniform(0.3, 1.2)
            amp.stop()
            c.drain()
            result = amp.recording_result
    sender.close()
    assert kills >= 4
    recording = load(result["base"])
    assert recording.gaps == []
    assert recording.data.shape == c.data.shape
    np.testing.assert_array_equal(recording.data, c.data)  # every sample exactly once
    np.testing.assert_array_equal(c.data, ramp(0, len(c.data), CH))
    assert len(c.markers) > 30
    got = recorded_markers(recording)
    assert amp.marker_counts["before_start"] == 0 and amp.marker_counts["lost"] == 0
    # late markers too (returned after their sample, at a negative ms) are on the recorder's sample
    assert sorted(got) == sorted(c.markers), ([m for m in got if m not in c.markers], [m for m in c.markers if m not in got])
    assert not os.path.exists(result["base"] + JOURNAL)
    assert json.load(open(result["base"] + ".meta"))["mushu"]["state"] == "complete"
    # every sample's block times once, in order, whatever the kills interrupted
    times = recording.block_times()
    assert times["sample"][0] == 0 and times["sample"][-1] + times["n"][-1] == len(c.data)
    np.testing.assert_array_equal(times["sample"][1:], times["sample"][:-1] + times["n"][:-1])
    assert (np.diff(times["t_ns"]) > 0).all() and (times["t_read_ns"] > 0).all()


def test_resume_repairs_torn_tails(tmp_path):
    base = str(tmp_path / "torn")
    w = RecordingWriter.create(base, ["a", "b"], 100.0, "rampamp", ["uV", "uV"], {"first_sample": 0})
    w.append(ramp(0, 10, 2))
    w.add_marker(3, "three", seq=0, session="s" * 32, t_ns=1)
    w.add_marker(7, "seven,\nwith a newline", seq=1, session="s" * 32, t_ns=2)
    w.add_block_times(0, 12, 5_000, 95_000)  # its line goes first: the process died after 10 of its 12 samples
    w.sync()
    w.close()
    # a crash in the middle of writes: half a sample, half a journal line, half a marker line
    with open(base + ".eeg", "ab") as f:
        f.write(b"\x00\x00\x80\x3f\x00\x00")
    with open(base + JOURNAL, "a") as f:
        f.write('{"sample": 9, "seq": 2, "ses')
    with open(base + ".marker", "a") as f:
        f.write("90.000000 ni")
    with open(base + ".times", "a") as f:  # times of samples the .eeg never got, then a torn line
        f.write("10 5 105000 -\n15 5 1")
    w = RecordingWriter.resume(base)
    assert w.n_samples == 10 and [m["label"] for m in w.markers] == ["three", "seven,\nwith a newline"]
    w.append(ramp(10, 5, 2))
    w.add_block_times(10, 5, 105_000, None)
    w.finish()
    r = load(base)
    np.testing.assert_array_equal(r.data, ramp(0, 15, 2))
    assert r.block_times().tolist() == [(0, 10, 5_000, 95_000), (10, 5, 105_000, 0)]
    assert r.markers == [(30.0, "three"), (70.0, "seven,\nwith a newline")]
    vmrk = open(base + ".vmrk").read()
    assert "Mk2=Stimulus,three,4,1,0" in vmrk and "Mk3=Stimulus,seven\\1\\nwith a newline,8,1,0" in vmrk


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_a_full_disk_stops_the_recording_with_a_clear_error_and_readable_files(spawn_amp, spawn_recorder):
    amp_svc = spawn_amp()
    rec = spawn_recorder(amp_svc, preexec_fn=_limit_file_size)
    amp = mushu_client.get_amp("rampamp", data=amp_svc.data, control=amp_svc.control, recorder=rec.control)
    amp.configure(fs=5000, channels=CH)  # 320 kB/s against a 200 kB file size limit
    amp.start("full")
    c = Collector(amp)
    with pytest.warns(RecordingWarning, match="File too large"):
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            c.read()
    with pytest.raises(RecordingError, match="File too large"):
        amp.stop()
    c.drain()
    status = rec.ctl().call("status")
    assert status["state"] == "idle" and "File too large" in status["last_error"]
    r = load(os.path.join(rec.data_dir, "full"))
    assert 0 < len(r.data) <= 200_000 // (4 * CH)
    np.testing.assert_array_equal(r.data, c.data[:len(r.data)])  # what was written is right
    assert r.meta["mushu"]["state"] == "failed" and "File too large" in r.meta["mushu"]["error"]
    amp.start("next")  # the recorder records again (a new file, within the limit)
    amp.stop()
    amp.close()


def test_a_missing_directory_is_refused_before_acquisition_starts(spawn_amp, spawn_recorder, tmp_path):
    amp_svc = spawn_amp()
    rec = spawn_recorder(amp_svc)
    with mushu_client.get_amp("rampamp", data=amp_svc.data, control=amp_svc.control, recorder=rec.control) as amp:
        with pytest.raises(FileNotFoundError, match="does not exist"):
            amp.start(str(tmp_path / "no" / "such" / "dir" / "rec"))
        assert amp.status()["state"] == "idle"


def test_an_amp_restart_is_a_gap_of_the_missed_samples_in_the_recording(spawn_amp, spawn_recorder):
    import zmq

    from mushu_core.wire import Block, decode_block_header, decode_message
    args = ("--amp", "rampamp", "--configure", json.dumps({"fs": FS, "channels": 4}))
    amp_svc = spawn_amp(*args)
    rec = spawn_recorder(amp_svc)
    raw = zmq.Context.instance().socket(zmq.SUB)  # block times, to check the gap's size
    raw.setsockopt(zmq.RCVHWM, 0)
    raw.connect(amp_svc.data)
    raw.subscribe(b"data/")
    amp = mushu_client.get_amp("rampamp", data=amp_svc.data, control=amp_svc.control, recorder=rec.control)
    blocks = []

    def collect(seconds):  # read as we go: libzmq reattaches a reconnected peer only once the old pipe is read
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            if raw.poll(10):
                msg = decode_message(raw.recv_multipart())
                if isinstance(msg, Block):
                    blocks.append(msg.header)

    amp.start("restarted")
    collect(0.5)
    t_kill = time.monotonic()
    amp_svc.proc.send_signal(signal.SIGKILL)
    amp_svc.proc.wait()
    collect(0.3)
    spawn_amp(*args, "--start", like=amp_svc)
    t_up = time.monotonic()  # the new session's sample 0 was acquired before the amp answered
    collect(0.5)
    amp.stop()
    result = amp.recording_result
    collect(0.1)
    raw.close(linger=0)
    sessions = list(dict.fromkeys(h.session for h in blocks))
    assert len(sessions) == 2, len(blocks)
    # the new session's sample 0 was acquired at its first block's stamp, which its history still holds
    _, (first_new, *_) = amp_svc.ctl().request("history", session=sessions[1], from_sample=0)
    first_new = decode_block_header(first_new.bytes)
    amp.close()
    r = load(result["base"])
    (gap,) = r.gaps
    assert gap["reason"] == "amp restarted"
    assert first_new.first_sample == 0
    # The recording's old session ends just after its last sample in the file (blocks the dying amp
    # never delivered to the recorder are part of the gap), timed by the least-delayed stamp of
    # the old session's last blocks: a stamp is late by the driver's read, never early.
    old = [h for h in blocks if h.session == sessions[0]][-64:]
    end_sample = r.meta["mushu"]["segments"][0]["first_sample"] + gap["sample"]
    t_end_old = min(h.t_ns - h.first_sample * 1_000_000 for h in old) + end_sample * 1_000_000
    assert abs(gap["count"] - (first_new.t_ns - t_end_old) / 1e6) <= 1  # the samples the amp did not acquire
    # blocks the dying amp acquired but never delivered are in the gap too: half a second of them at most
    assert 250 <= gap["count"] <= (t_up - t_kill) * FS + 500
    first = gap["sample"]
    np.testing.assert_array_equal(r.data[:first], ramp(0, first, 4))
    assert np.isnan(r.data[first:first + gap["count"]]).all()
    after = r.data[first + gap["count"]:]
    np.testing.assert_array_equal(after, ramp(0, len(after), 4))  # the new session from its sample 0
    assert len(after) > 300
    assert (first, f"mushu:gap {gap['count']}") in recorded_markers(r)

"""A recording is never left behind: a second start(), a client that dies, a recording nobody stops.

Real amp and recorder processes; the client that dies is a subprocess killed with SIGKILL.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from conftest import free_port
from test_orchestration import mushu
from test_security import as_controller, keys  # noqa: F401 (fixtures)

import mushu_client
from mushu_amp.drivers.rampamp import ramp
from mushu_client import RecordingError, RecordingWarning
from mushu_core.control import ControlClient
from mushu_core.leases import RENEW_S
from mushu_core.recordings import load

FS, CH = 1000, 4
#: The lease of a killed client's recording: short, for the test's sake.
LEASE_S = 3.0

#: A client that records and counts the samples get_data() returned, until it is killed.
RECORDING_CLIENT = """
import sys, mushu_client
data, control, recorder, markers, markers_control, lease = sys.argv[1:]
amp = mushu_client.get_amp("rampamp", data=data, control=control, recorder=recorder, markers=markers,
                           markers_control=markers_control)
amp.start("a", lease=float(lease))
n = 0
while True:
    n += len(amp.get_data()[0])
    print(n, flush=True)
"""


def nowhere() -> str:
    """An endpoint where nothing answers (no markers service in these tests)."""
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture
def services(spawn_amp, spawn_recorder):
    amp = spawn_amp("--amp", "rampamp", "--configure", json.dumps({"fs": FS, "channels": CH}))
    return amp, spawn_recorder(amp)


def client(services, **kw) -> mushu_client.Amp:
    amp, rec = services
    return mushu_client.get_amp("rampamp", data=amp.data, control=amp.control, recorder=rec.control,
                                markers=nowhere(), markers_control=nowhere(), **kw)


def read(amp, n: int, timeout: float = 10.0) -> np.ndarray:
    """At least ``n`` samples from get_data()."""
    chunks, got = [], 0
    deadline = time.monotonic() + timeout
    while got < n:
        assert time.monotonic() < deadline, f"only {got} of {n} samples in {timeout} s"
        chunks.append(amp.get_data()[0])
        got += len(chunks[-1])
    return np.concatenate(chunks)


def drain(amp) -> np.ndarray:
    """What get_data() still returns after stop()."""
    chunks = []
    while len(data := amp.get_data()[0]):
        chunks.append(data)
    return np.concatenate(chunks) if chunks else np.zeros((0, CH), np.float32)


def recorder_status(rec) -> dict:
    ctl = ControlClient(rec.control, 2.0, "recorder")
    try:
        return ctl.call("status")
    finally:
        ctl.close()


def wait_idle(rec, timeout: float) -> float:
    """Wait until the recorder records nothing; when that was (time.monotonic())."""
    deadline = time.monotonic() + timeout
    while (status := recorder_status(rec))["state"] != "idle":
        assert time.monotonic() < deadline, f"still recording after {timeout} s: {status['recording']}"
        time.sleep(0.05)
    return time.monotonic()


def killed_client(services, lease: float, samples: int = 500):
    """Run RECORDING_CLIENT until it returned ``samples`` samples, SIGKILL it; (its last count, kill time)."""
    amp, rec = services
    proc = subprocess.Popen([sys.executable, "-c", RECORDING_CLIENT, amp.data, amp.control, rec.control,
                             nowhere(), nowhere(), str(lease)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while int((line := proc.stdout.readline()) or -1) < samples:
            assert line and time.monotonic() < deadline, f"the recording client stopped early: {line!r}"
    finally:
        proc.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        text = line + proc.stdout.read()
        proc.wait()
    return int(text[:text.rfind("\n")].split()[-1]), t_kill  # the last line it wrote whole


def recording(rec, name: str):
    r = load(os.path.join(rec.data_dir, name))
    return r, r.meta["mushu"]


def test_a_second_start_finishes_the_first_recording_and_says_so(services):
    _, rec = services
    with client(services) as amp:
        amp.start("a")
        before = read(amp, 300)
        with pytest.warns(RecordingWarning, match=r"start\(\) finished recording '.*/a' first \(\d+ samples\)"):
            amp.start()
        assert amp.recording is None and amp.recording_result["base"].endswith("/a")
        assert recorder_status(rec)["state"] == "idle"  # nothing left running on the recorder
        read(amp, 100)
        amp.stop()  # no recording: nothing to finish, nothing raised
        drain(amp)
        r, meta = recording(rec, "a")
        assert meta["state"] == "complete" and meta["ended_by"] == "client" and r.gaps == []
        assert len(r.data) >= len(before)
        np.testing.assert_array_equal(r.data, ramp(0, len(r.data), CH))

        amp.start("b")  # a later start(name) is not refused
        read(amp, 200)
        with pytest.warns(RecordingWarning, match="finished recording '.*/b' first"):
            amp.start("c")  # finishes b where c begins (the amp runs on)
        assert amp.recording.endswith("/c")
        read(amp, 200)
        amp.stop()
        drain(amp)
    (b, b_meta), (c, c_meta) = recording(rec, "b"), recording(rec, "c")
    assert b_meta["state"] == c_meta["state"] == "complete"
    assert b_meta["end_sample"] <= c_meta["first_sample"]
    for r, meta in ((b, b_meta), (c, c_meta)):
        np.testing.assert_array_equal(r.data, ramp(meta["first_sample"], len(r.data), CH))


def test_a_killed_client_s_recording_ends_within_its_lease_with_every_sample_it_had(services):
    _, rec = services
    returned, t_kill = killed_client(services, LEASE_S)
    t_idle = wait_idle(rec, LEASE_S + 10)
    # the last renewal came at most a renewal period (and some scheduling) before the kill
    assert LEASE_S - 2 * RENEW_S < t_idle - t_kill < LEASE_S + 3, t_idle - t_kill
    r, meta = recording(rec, "a")
    assert meta["state"] == "complete" and meta["ended_by"] == "lease" and "lease" in meta["end_reason"]
    assert r.gaps == [] and len(r.data) >= returned
    np.testing.assert_array_equal(r.data, ramp(0, len(r.data), CH))
    size = os.path.getsize(os.path.join(rec.data_dir, "a.eeg"))
    with client(services) as amp:  # a later client records again, from the amp session the dead one started
        amp.start("b")
        read(amp, 300)
        amp.stop()
        got = drain(amp)
    b, b_meta = recording(rec, "b")
    assert b_meta["state"] == "complete" and len(b.data) >= 300 + len(got) - 1
    np.testing.assert_array_equal(b.data, ramp(b_meta["first_sample"], len(b.data), CH))
    assert os.path.getsize(os.path.join(rec.data_dir, "a.eeg")) == size


def test_a_client_dropped_without_stop_lets_its_lease_run_out(services):
    _, rec = services
    amp = client(services)
    amp.start("dropped", lease=2.0)
    read(amp, 200)
    del amp
    gc.collect()  # the Amp is gone (its sockets too): nothing renews the lease
    wait_idle(rec, 2.0 + 5)
    assert recording(rec, "dropped")[1]["ended_by"] == "lease"


def test_a_new_amp_session_after_a_killed_client_is_not_written_into_its_recording(services):
    _, rec = services
    returned, _ = killed_client(services, 60.0)  # a lease that outlasts the test: the session ends it
    with client(services) as amp:
        with pytest.raises(RuntimeError, match=r"already recording '.*/a' \(started by pid \d+ on host .*; its "
                                               r"client renewed its lease .* a controller ends it with "
                                               r"'mushu record stop a'"):
            amp.start("b")  # the amp still runs the dead client's session: its recording goes on
        assert amp.status()["state"] == "running"  # joined, so not stopped by the refusal
        amp.stop()  # a new user, changing the amp's settings
        amp.configure(fs=FS, channels=CH)
        amp.start()  # a new amp session, by a start command: not the amp restarting
        read(amp, 200)
        wait_idle(rec, 10)  # well within the lease
        amp.start("b")
        read(amp, 300)
        amp.stop()
        drain(amp)
    r, meta = recording(rec, "a")
    assert meta["state"] == "complete" and meta["ended_by"] == "session" and "started again" in meta["end_reason"]
    assert r.gaps == [] and len(meta["segments"]) == 1 and len(r.data) >= returned
    np.testing.assert_array_equal(r.data, ramp(0, len(r.data), CH))  # no NaN, no sample of the new session
    b, b_meta = recording(rec, "b")
    assert b_meta["state"] == "complete" and b_meta["amp_session"] != meta["amp_session"]


def test_a_controller_ends_a_live_client_s_recording_and_its_stop_says_so(services):
    _, rec = services
    env = {**os.environ, "MUSHU_RECORDER_CONTROL": rec.control}
    with client(services) as amp:
        amp.start("a")
        read(amp, 300)
        done = mushu("record", "stop", env=env)
        assert "finished" in done.stdout and "/a" in done.stdout
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            deadline = time.monotonic() + 3 * RENEW_S + 2  # the next renewal tells, and get_data() says so
            while not caught and time.monotonic() < deadline:
                amp.get_data()
        assert [str(w.message) for w in caught] == [f"recording {amp.recording!r}: ended (stopped by a controller "
                                                    "('mushu record stop'))"]
        with pytest.raises(RecordingError, match=r"ended at amp sample \d+ before it was finished: stopped by a "
                                                 r"controller \('mushu record stop'\)"):
            amp.stop()
        assert amp.recording_result["ended_by"] == "controller"
        drain(amp)
    r, meta = recording(rec, "a")
    assert meta["state"] == "complete" and r.gaps == [] and len(r.data) >= 300
    np.testing.assert_array_equal(r.data, ramp(0, len(r.data), CH))


def test_mushu_record_shows_and_ends_a_recording_left_running_and_a_viewer_may_not(
        keys, as_controller, spawn_amp, spawn_recorder):  # noqa: F811 (fixtures)
    amp_svc = spawn_amp("--amp", "rampamp", "--configure", json.dumps({"fs": FS, "channels": CH}),
                        env=as_controller)
    rec = spawn_recorder(amp_svc, env=as_controller)
    services = (amp_svc, rec)
    env = {**os.environ, "MUSHU_RECORDER_CONTROL": rec.control}  # MUSHU_KEYS: the controller's
    viewer = {**env, "MUSHU_KEYS": keys["viewer"]}
    with client(services) as amp:
        amp.start("left", lease=None)  # a recording meant to outlive its client
        read(amp, 300)
    # its client is gone without stop(): the recording runs on, and the viewer sees it and how to end it
    shown = mushu("record", "status", env=viewer).stdout
    assert f"recording {os.path.join(rec.data_dir, 'left')}:" in shown
    assert "no lease" in shown and "started by pid" in shown and "end it: mushu record stop left" in shown
    with client(services) as other:
        with pytest.raises(RuntimeError, match=r"already recording '.*/left' \(.*it has no lease .* "
                                               r"'mushu record stop left'"):
            other.start("b")
    refused = mushu("record", "stop", "left", env=viewer, check=False)
    assert refused.returncode == 1 and "forbidden: role viewer may not 'stop'" in refused.stderr
    assert "controller" in refused.stderr
    assert recorder_status(rec)["state"] == "recording"
    wrong = mushu("record", "stop", "other", env=env, check=False)
    assert wrong.returncode == 1 and "is not in progress" in wrong.stderr and "mushu record stop left" in wrong.stderr
    done = mushu("record", "stop", "left", env=env)
    assert f"finished {os.path.join(rec.data_dir, 'left')}:" in done.stdout
    assert recorder_status(rec)["state"] == "idle"
    shown = mushu("record", "status", env=viewer).stdout
    assert "no recording in progress" in shown and "stopped by a controller" in shown
    again = mushu("record", "stop", env=env, check=False)
    assert again.returncode == 1 and "no recording is in progress" in again.stderr
    r, meta = recording(rec, "left")
    assert meta["state"] == "complete" and meta["ended_by"] == "controller" and meta["lease_s"] is None
    assert len(r.data) >= 300
    np.testing.assert_array_equal(r.data, ramp(0, len(r.data), CH))
    with client(services) as amp:  # and the next recording starts
        amp.start("b")
        read(amp, 100)
        amp.stop()
        drain(amp)
    assert recording(rec, "b")[1]["state"] == "complete"

"""A service that dies and returns: the client reconnects by itself and reports the gap exactly."""

import json
import signal
import time
import warnings

import numpy as np
import pytest

import mushu_client
from mushu_amp.drivers.rampamp import ramp
from mushu_client import GapWarning, ServiceWarning
from mushu_core.control import ControlClient
from mushu_core.wire import decode_marker

FS = 1000


def test_the_client_follows_an_amp_restart_and_reports_the_samples_not_acquired(spawn_amp):
    args = ("--amp", "rampamp", "--configure", json.dumps({"fs": FS, "channels": 4}))
    svc = spawn_amp(*args)
    amp = mushu_client.get_amp("rampamp", data=svc.data, control=svc.control, timeout=0.2)
    amp.start()
    chunks = []

    def read(seconds):
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            chunks.append(amp.get_data()[0])

    read(0.5)
    before = sum(map(len, chunks))
    svc.proc.send_signal(signal.SIGKILL)
    svc.proc.wait()
    t_down = time.monotonic()
    with pytest.warns(ServiceWarning, match="not answering"):
        read(1.3)  # no exception reaches the loop while the amp is away
    spawn_amp(*args, "--start", like=svc)  # as a supervisor would; acquisition resumes
    t_up = time.monotonic()
    with pytest.warns(GapWarning, match="the amp restarted") as record:
        read(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read(0.3)
    assert amp.connected
    amp.stop()
    read(0.1)
    amp.close()
    data = np.concatenate(chunks)
    ((first, lost),) = amp.gaps
    old = data[:first]
    new = data[first:]
    np.testing.assert_array_equal(old, ramp(0, len(old), 4))
    np.testing.assert_array_equal(new, ramp(0, len(new), 4))  # the new session, from its sample 0
    assert first >= before
    # the samples the amp did not acquire: about the time it was down, never less
    assert (t_up - t_down) * FS * 0.5 < lost < (t_up - t_down) * FS + 1500
    assert "samples were not acquired" in str(record[0].message)


def test_markers_of_the_old_session_stay_on_its_samples_after_an_amp_restart(spawn_amp, spawn_markers,
                                                                                spawn_recorder):
    """A marker stamped before the amp died but published late (a busy markers service) lands on the old
    session's sample, in the client and in the recording, not on the restarted amp's first sample."""
    import os
    args = ("--amp", "rampamp", "--configure", json.dumps({"fs": FS, "channels": 4}))
    svc, mk = spawn_amp(*args), spawn_markers()
    rec = spawn_recorder(svc, mk)
    sender = mushu_client.MarkerSender("127.0.0.1", mk.port)
    amp = mushu_client.get_amp("rampamp", data=svc.data, control=svc.control, markers=mk.data,
                               markers_control=mk.control, recorder=rec.control, timeout=0.2)
    chunks, markers, n = [], [], 0

    def read(seconds):
        nonlocal n
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            data, mks = amp.get_data()
            markers.extend((n + round(ms * FS / 1000), label) for ms, label in mks)
            chunks.append(data)
            n += len(data)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GapWarning)
        warnings.simplefilter("ignore", ServiceWarning)
        amp.start("restart-markers")
        read(0.5)
        sender.send("before")
        read(0.2)
        os.kill(mk.proc.pid, signal.SIGSTOP)  # busy: what it receives now is stamped now, published later
        try:
            for i in range(5):
                sender.send(f"old-{i}")
            read(0.1)
            svc.proc.send_signal(signal.SIGKILL)
            svc.proc.wait()
            read(0.5)
            spawn_amp(*args, "--start", like=svc)
            read(0.5)
        finally:
            os.kill(mk.proc.pid, signal.SIGCONT)
        read(1.0)
        sender.send("after")
        read(0.5)
        amp.stop()
        read(0.3)
        result = amp.recording_result
    amp.close()
    sender.close()
    ((first, lost),) = amp.gaps  # the old session's samples are data[:first]
    labels = [label for _, label in markers]
    assert labels == ["before"] + [f"old-{i}" for i in range(5)] + ["after"], markers
    assert all(sample < first for sample, label in markers if label != "after"), (first, markers)
    recording = mushu_client.load(result["base"])
    (gap,) = recording.gaps
    recorded = [(round(ms * FS / 1000), label) for ms, label in recording.markers if not label.startswith("mushu:")]
    assert [label for _, label in recorded] == labels
    assert all(sample < gap["sample"] for sample, label in recorded if label != "after"), (gap, recorded)
    # the same samples in both: the old session's from its first sample, the new one's after the gap
    assert [s for s, label in recorded if label != "after"] == [s for s, label in markers if label != "after"]


def test_a_markers_service_restarted_from_its_journal_goes_on_in_the_same_session(spawn_amp, spawn_markers,
                                                                                  tmp_path):
    """Killed and started again with its journal (as ``mushu up`` runs it), the markers service keeps its
    session, history and sequence numbers: a client that follows it sees no gap and no new session, and a
    consumer that comes later fetches every marker from the history."""
    svc = spawn_amp("--amp", "rampamp", "--configure", json.dumps({"fs": FS, "channels": 2}))
    journal = ("--journal", str(tmp_path / "markers-journal.bin"))
    mk = spawn_markers(*journal)
    amp = mushu_client.get_amp("rampamp", data=svc.data, control=svc.control, markers=mk.data,
                               markers_control=mk.control, timeout=0.5)
    got = []

    def read_until(labels, within=5.0):
        deadline = time.monotonic() + within
        while got != labels:
            assert time.monotonic() < deadline, got
            got.extend(label for _ms, label in amp.get_data()[1])

    with warnings.catch_warnings():
        warnings.simplefilter("error", GapWarning)  # a lost marker, or a new marker session, fails the test
        warnings.simplefilter("ignore", ServiceWarning)  # the markers service is away for a moment
        amp.start()
        with mushu_client.MarkerSender("127.0.0.1", mk.port) as sender:
            for label in ("a", "b", "c"):
                sender.send(label)
        read_until(["a", "b", "c"])
        session = ControlClient(mk.control, 2.0, "markers").call("status")["session"]
        mk.proc.send_signal(signal.SIGKILL)
        mk.proc.wait()
        mk = spawn_markers(*journal, like=mk)
        with mushu_client.MarkerSender("127.0.0.1", mk.port) as sender:
            sender.send("d")
        read_until(["a", "b", "c", "d"])
        amp.stop()
    amp.close()
    ctl = ControlClient(mk.control, 2.0, "markers")
    status = ctl.call("status")
    assert status["session"] == session and status["last_seq"] == 3 and status["journal"]["resumed_markers"] == 3
    reply, frames = ctl.request("history", session=session, from_seq=0)
    assert [decode_marker(f.bytes).label for f in frames] == ["a", "b", "c", "d"]
    ctl.close()

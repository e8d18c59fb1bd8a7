"""Under ``mushu up``, SIGKILL each service in turn during a recording: nothing is lost but what
the amp could not acquire while it was down, and that gap is recorded exactly. The client, the
recording and the LSL bridge (beside it, a consumer like the recorder) agree on every sample, the gap
and every marker's sample."""

import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
from test_lsl import open_inlet, unique
from support import isolated_env, mushu
from test_orchestration import answers, force_down, supervised

import mushu_client
from mushu_amp.drivers.rampamp import ramp
from mushu_cli import supervise
from mushu_client import GapWarning, MarkerSender, RecordingWarning, ServiceWarning
from mushu_core.recordings import load

FS = 1000


def test_killing_each_service_during_a_recording(tmp_path):
    env = isolated_env(tmp_path)
    mushu("up", env=env)
    bridge = None
    try:
        amp = mushu_client.get_amp("rampamp", data=env["MUSHU_AMP_DATA"], control=env["MUSHU_AMP_CONTROL"],
                                   markers=env["MUSHU_MARKERS_DATA"], markers_control=env["MUSHU_MARKERS_CONTROL"],
                                   recorder=env["MUSHU_RECORDER_CONTROL"], timeout=0.2, marker_grace=0.2)
        amp.configure(fs=FS, channels=8)
        name = unique("recovery")
        bridge = subprocess.Popen([sys.executable, "-m", "mushu_lslbridge", "--amp-data", env["MUSHU_AMP_DATA"],
                                   "--amp-control", env["MUSHU_AMP_CONTROL"], "--markers-data",
                                   env["MUSHU_MARKERS_DATA"], "--markers-control", env["MUSHU_MARKERS_CONTROL"],
                                   "--name", name, "--log-level", "WARNING"], env=env)
        inlet, minlet = open_inlet(name), open_inlet(f"{name}-markers")
        sender = MarkerSender("127.0.0.1", int(env["MUSHU_MARKERS_PORT"]))
        chunks, markers, n = [], [], 0
        sent = 0

        def run(seconds):
            nonlocal n, sent
            t_end = time.monotonic() + seconds
            next_marker = time.monotonic()
            while time.monotonic() < t_end:
                data, mk = amp.get_data()  # no exception may reach this loop
                markers.extend((n + round(ms * FS / 1000), label) for ms, label in mk)
                chunks.append(data)
                n += len(data)
                if time.monotonic() >= next_marker:
                    try:
                        sender.send(f"m{sent}")
                        sent += 1
                    except mushu_client.ServiceUnavailable:
                        pass  # the markers service is down: a stimulus program would retry
                    next_marker = time.monotonic() + 0.1

        def kill(name):
            deadline = time.monotonic() + 10
            while (info := supervised(env).get(name, {})).get("statename") != "RUNNING":
                assert time.monotonic() < deadline, info
                run(0.05)
            os.kill(info["pid"], signal.SIGKILL)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            amp.start("killed")
            run(1.0)
            for name in ("recorder", "markers", "amp"):
                kill(name)
                run(2.5)  # supervisord restarts it within two seconds; the others go on
            amp.stop()
            while True:
                data, mk = amp.get_data()
                markers.extend((n + round(ms * FS / 1000), label) for ms, label in mk)
                chunks.append(data)
                n += len(data)
                if not len(data):
                    break
        sender.close()
        kinds = {type(w.message) for w in caught}
        assert kinds <= {GapWarning, ServiceWarning, RecordingWarning}, [str(w.message) for w in caught]
        result = amp.recording_result
        counts = amp.marker_counts
        amp.close()
        for service in ("amp", "markers", "recorder"):
            assert answers(env[supervise.CONTROL[service]], service) is not None
        lsl_data, lsl_stamps, lsl_markers = pull_all(inlet, minlet, n, len(markers))
        assert bridge.poll() is None, "the bridge exited"
    finally:
        if bridge is not None:
            bridge.terminate()
            bridge.wait(10)
        force_down(env)

    data = np.concatenate(chunks)
    rec = load(result["base"])
    # one gap: the samples the amp did not acquire while it was down. A SIGKILLed amp may have delivered
    # its last block to the client and not to the recorder (or the other way round), and its history
    # died with it: that block is part of the gap on the side that missed it. So the two agree on where
    # the new session's sample 0 lies, and on everything but that last block of the old session.
    (gap,) = rec.gaps
    ((first, lost),) = amp.gaps
    assert gap["reason"] == "amp restarted" and 50 < gap["count"] < 3000
    old_in_file = gap["sample"]
    assert abs(old_in_file + gap["count"] - (first + lost)) <= 1
    assert abs(old_in_file - first) <= 5, (old_in_file, first)  # a block or two of 1 ms
    # every other sample the client got is in the file, in place; the gap is NaN
    kept = ~np.isnan(rec.data).any(axis=1)
    assert (~kept).sum() == gap["count"] and kept[:old_in_file].all()
    new_in_file = rec.data[old_in_file + gap["count"]:]
    common = min(old_in_file, first)
    np.testing.assert_array_equal(rec.data[:common], data[:common])
    np.testing.assert_array_equal(new_in_file, data[first:])
    np.testing.assert_array_equal(data[:first], ramp(0, first, 8))
    np.testing.assert_array_equal(data[first:], ramp(0, len(data) - first, 8))
    # the markers too: the same labels on the same samples of each session

    def place(row):
        return ("old", row) if row < old_in_file else ("new", row - old_in_file - gap["count"])
    recorded = [(place(round(ms * FS / 1000)), label) for ms, label in rec.markers
                if not label.startswith("mushu:gap")]
    returned = [(("old", n) if n < first else ("new", n - first), label) for n, label in markers]
    assert sent > 50 and len(markers) > 40
    # None lost. A marker that an overloaded machine delays past the grace comes late (at a negative ms),
    # still on its exact sample: late or not, the file and the client have it on the same sample.
    assert counts["lost"] == 0, counts
    assert recorded == returned

    # The bridge agrees: the same samples of each session (all but the old session's last block or two,
    # which a SIGKILLed amp may not have delivered to it), the gap between them in its timestamps, and
    # each marker at the timestamp of the sample the client put it on.
    (restart,) = np.flatnonzero(np.diff(lsl_data[:, 0]) < 0) + 1  # the ramp starts again at 0
    assert abs(restart - first) <= 5, (restart, first)
    np.testing.assert_array_equal(lsl_data[:restart], ramp(0, restart, 8))
    np.testing.assert_array_equal(lsl_data[restart:], data[first:first + len(lsl_data) - restart])
    assert len(lsl_data) - restart >= len(data) - first - FS // 10  # what it had not pushed yet when it was asked
    stamp_gap = (lsl_stamps[restart] - lsl_stamps[restart - 1]) * FS - 1
    assert abs(stamp_gap - (gap["count"] + old_in_file - restart)) <= 5, (stamp_gap, gap, restart)
    row_of = {round(t * 1e6): row for row, t in enumerate(lsl_stamps)}
    bridged = []
    for t, label in lsl_markers:
        row = row_of.get(round(t * 1e6))
        assert row is not None, f"marker {label!r} is not at a sample's timestamp"
        bridged.append(((("old", row) if row < restart else ("new", row - restart)), label))
    assert sorted(bridged, key=lambda m: m[1]) == sorted(returned, key=lambda m: m[1])


def pull_all(inlet, minlet, n_samples, n_markers, timeout=10.0):
    """Everything the bridge's outlets gave: ``(data, stamps, [(stamp, label)])``."""
    values, stamps, markers = [], [], []
    deadline = time.monotonic() + timeout
    while (sum(map(len, values)) < n_samples - FS // 10 or len(markers) < n_markers) and time.monotonic() < deadline:
        v, t = inlet.pull_chunk(timeout=0.1, max_samples=8192)
        if t:
            values.append(np.asarray(v, np.float32))
            stamps += t
        labels, mstamps = minlet.pull_chunk(timeout=0.0, max_samples=1000)
        markers += [(ts, v[0]) for v, ts in zip(labels, mstamps)]
    return np.concatenate(values), np.asarray(stamps), markers

"""Every sample's true acquisition time, through the real services: a device that delivers chunks late
and runs on a drifting clock (tests/drifting_device.py), markers over UDP at known send times, the
client and the recording."""

import collections
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import zmq

import mushu_client
from mushu_client import MarkerSender
from mushu_core.recordings import load
from mushu_core.wire import Marker, decode_message, marker_topic

TESTS = Path(__file__).parent
PLUGIN = {"MUSHU_DRIVERS": "drifting=drifting_device:DriftingAmp",
          "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
FS, CH = 1000.0, 8


def test_a_late_drifting_device_has_every_marker_on_its_true_sample_in_client_and_recording(
        spawn_amp, spawn_markers, spawn_recorder, tmp_path):
    amp_svc, mk = spawn_amp(env=PLUGIN), spawn_markers()
    rec_svc = spawn_recorder(amp_svc, mk)
    truth = tmp_path / "truth.json"
    observer = zmq.Context.instance().socket(zmq.SUB)  # what the markers service stamped
    observer.setsockopt(zmq.SUBSCRIBE, marker_topic("markers"))
    observer.connect(mk.data)
    amp = mushu_client.get_amp("drifting", data=amp_svc.data, control=amp_svc.control, markers=mk.data,
                               markers_control=mk.control, recorder=rec_svc.control, marker_grace=0.0)
    amp.configure(fs=FS, channels=CH, chunk=8, ppm=100.0, latency_ms=[0.5, 4.0], declared_latency_ms=0.5,
                  truth=str(truth), seed=7)
    rng = random.Random(7)
    sent, placed, n, chunks = {}, {}, 0, []
    amp.start(str(tmp_path / "timing"))
    time.sleep(0.5)  # markers from the first half second on: the fit has its first reads
    with MarkerSender(port=mk.port, protocol="udp") as sender:
        sender.send("warm-up")  # its first send makes the socket: the ones measured go out at once
        t_end = time.monotonic() + 12
        next_marker = time.monotonic()
        while time.monotonic() < t_end:
            data, markers = amp.get_data()
            for ms, label in markers:  # late markers come at a negative ms: still their exact sample
                if label != "warm-up":
                    placed[label] = n + round(ms * FS / 1000)
            chunks.append(data)
            n += len(data)
            if time.monotonic() >= next_marker:
                label = f"m{len(sent)}"
                sent[label] = time.monotonic_ns()
                sender.send(label)
                next_marker = time.monotonic() + rng.uniform(0.02, 0.08)
    amp.stop()
    while True:
        data, markers = amp.get_data()
        for ms, label in markers:
            if label != "warm-up":
                placed[label] = n + round(ms * FS / 1000)
        chunks.append(data)
        n += len(data)
        if not len(data):
            break
    status = amp._ctl.call("status")
    result = amp.recording_result
    amp.close()

    data = np.concatenate(chunks)
    first = int(data[0, 0]) // CH  # the ramp holds each sample's index
    np.testing.assert_array_equal(data[:, 0], (first + np.arange(len(data))) * CH)
    t = json.loads(truth.read_text())

    def true_sample(t_ns):  # the first sample acquired at or after the marker was sent
        return math.ceil((t_ns - t["t0_ns"]) / t["period_ns"])

    assert len(sent) > 150 and set(placed) == set(sent)
    off = {label: first + placed[label] - true_sample(sent[label]) for label in sent}
    # Read-time stamps are late by the whole chunk latency (0.5-4 ms here): they put markers p50 two
    # samples early, up to nine. With the clock model every marker is within a sample of its true one;
    # the early ones are those sent within the wake-up time the model does not know of after a sample.
    stamped = {}
    while observer.poll(0):
        msg = decode_message(observer.recv_multipart())
        if isinstance(msg, Marker) and msg.label != "warm-up":
            stamped[msg.label] = msg.t_ns
    observer.close(0)
    on_it = sum(1 for d in off.values() if d in (0, 1))
    assert all(-1 <= d <= 1 for d in off.values()), collections.Counter(off.values())
    assert on_it >= 0.85 * len(sent), collections.Counter(off.values())

    assert set(stamped) == set(sent)
    assert all(stamped[label] >= sent[label] for label in sent)  # no marker stamped before its send

    clock = status["clock"]
    assert clock["model"] == "fitted" and clock["fitted"] and clock["anchors"] == 1
    assert abs(clock["drift_ppm"] - 100.0) < 10, clock
    rec = load(result["base"])
    assert rec.meta["mushu"]["fs_measured"] > FS and abs(rec.meta["mushu"]["drift_ppm"] - 100.0) < 10
    # the recording has each marker on the sample the client returned it on
    recorded = {label: round(ms * FS / 1000) for ms, label in rec.markers
                if not label.startswith("mushu:") and label != "warm-up"}
    assert recorded == placed

    # NAME.times: each block's stamp and its raw read time, from which the clock can be refitted offline
    times = rec.block_times()
    start = rec.meta["mushu"]["segments"][0]["first_sample"]
    assert times["sample"][0] == 0 and times["sample"][-1] + times["n"][-1] == len(rec.data)
    acquired = t["t0_ns"] + (start + times["sample"]) * t["period_ns"]
    settled = times["sample"] >= FS  # the first second's stamps come from the model's first reads
    assert np.abs(times["t_ns"] - acquired)[settled].max() < 1e6  # then within 1 ms of the truth
    ends = {}
    for row in times:  # one observation per read: the end of the last block it delivered
        ends[int(row["t_read_ns"])] = int(row["sample"] + row["n"])
    t_read = np.array(list(ends), float)
    end = np.array(list(ends.values()), float)
    last_acquired = t["t0_ns"] + (start + end - 1) * t["period_ns"]
    assert (t_read >= last_acquired).all()  # no read returns before its samples were acquired
    slope = np.polyfit(end, t_read - t_read[0], 1)[0]
    assert abs((1e9 / FS / slope - 1) * 1e6 - 100.0) < 20  # the raw reads alone give the drift

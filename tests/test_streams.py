"""Several amp streams read as one (mushu_client.Streams): two amp services, one on another host's clock
(``--clock-offset``), at different rates, and markers over UDP, through the real services."""

import random
import time

import numpy as np
import pytest

import mushu_client
from mushu_client import MarkerSender, Streams

#: (stream, sampling rate, channels, the amp host's clock offset in s)
STREAMS = [("eeg", 1000, 8, 0.0), ("emg", 2000, 4, 5.0)]
RATES = {stream: fs for stream, fs, *_ in STREAMS}
#: How far a time on this host's clock may be from the truth: the offset estimate of another host's clock.
CLOCK_TOLERANCE_NS = 200_000


def _amps(spawn_amp, mk):
    amps = []
    for stream, fs, channels, offset in STREAMS:
        svc = spawn_amp("--stream", stream, "--clock-offset", str(offset))
        amp = mushu_client.get_amp("rampamp", data=svc.data, control=svc.control, markers=mk.data,
                                   markers_control=mk.control)
        amp.configure(fs=fs, channels=channels)
        amps.append(amp)
    return amps


def test_streams_come_on_one_clock_with_each_marker_on_the_sample_of_its_time_in_every_stream(
        spawn_amp, spawn_markers):
    mk = spawn_markers()
    rng = random.Random(3)
    got = {stream: {"data": [], "times": [], "markers": {}, "n": 0} for stream, *_ in STREAMS}
    sent = {}
    late = []  # (stream, newest sample time - time of the return): none may be in the future
    with Streams(_amps(spawn_amp, mk)) as streams, MarkerSender(port=mk.port, protocol="udp") as sender:
        sender.send("warm-up")
        streams.start()
        next_marker, t_end = time.monotonic() + 0.3, time.monotonic() + 3.0
        while True:
            stopping = time.monotonic() > t_end
            if stopping:
                streams.stop()
            while True:
                chunk = streams.get_data()
                returned_ns = time.monotonic_ns()
                for stream, d in chunk.items():
                    g = got[stream]
                    assert len(d.times_ns) == len(d.data)
                    if len(d.data):
                        late.append((stream, int(d.times_ns[-1]) - returned_ns))
                    for ms, label in d.markers:
                        assert label not in g["markers"], f"{label} twice in {stream}"
                        g["markers"][label] = g["n"] + round(ms * RATES[stream] / 1000)
                    g["data"].append(d.data)
                    g["times"].append(d.times_ns)
                    g["n"] += len(d.data)
                if not stopping or not any(len(d.data) for d in chunk.values()):
                    break
            if stopping:
                break
            if time.monotonic() >= next_marker and time.monotonic() < t_end - 0.2:
                label = f"m{len(sent)}"
                sent[label] = time.monotonic_ns()
                sender.send(label)
                next_marker = time.monotonic() + rng.uniform(0.02, 0.06)
        gaps = {stream: amp.gaps for stream, amp in streams.amps.items()}

    assert len(sent) > 30
    assert all(d < 0 for _, d in late), [x for x in late if x[1] >= 0][:5]  # no sample from the future
    assert max(d for _, d in late) > -100_000_000  # and the newest not older than a tenth of a second
    marker_times = {}
    for stream, fs, channels, _ in STREAMS:
        g = got[stream]
        data, times = np.concatenate(g["data"]), np.concatenate(g["times"])
        assert gaps[stream] == [] and len(data) > 2 * fs
        np.testing.assert_array_equal(data[:, 0], (data[0, 0] // channels + np.arange(len(data))) * channels)
        period = 1e9 / fs
        steps = np.diff(times)
        assert abs(np.median(steps) - period) < 0.01 * period and steps.min() > 0
        markers = {label: sample for label, sample in g["markers"].items() if label != "warm-up"}
        assert set(markers) == set(sent), (stream, set(sent) ^ set(markers))
        for label, sample in markers.items():
            # the first sample acquired at or after the marker's stamp, which follows its send
            assert times[sample] >= sent[label] - CLOCK_TOLERANCE_NS, (stream, label)
            assert times[sample - 1] < sent[label] + 5_000_000, (stream, label)  # stamped within 5 ms
            marker_times.setdefault(label, {})[stream] = (times[sample], period)
    for label, by_stream in marker_times.items():
        (ta, pa), (tb, pb) = by_stream.values()
        assert abs(ta - tb) <= max(pa, pb) + CLOCK_TOLERANCE_NS, (label, ta - tb)


def test_two_amps_of_one_stream_are_refused(spawn_amp, spawn_markers):
    mk = spawn_markers()
    svc = spawn_amp()
    amps = [mushu_client.get_amp("rampamp", data=svc.data, control=svc.control, markers=mk.data,
                                 markers_control=mk.control) for _ in range(2)]
    try:
        with pytest.raises(ValueError, match="two amps of stream 'eeg'.*\\[amp.NAME\\]"):
            Streams(amps)
    finally:
        for amp in amps:
            amp.close()

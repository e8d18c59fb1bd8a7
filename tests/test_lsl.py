"""LSL both ways with real outlets and inlets on this machine: lslamp reads an LSL stream and its
markers through the amp service; mushu-lsl-bridge publishes a mushu stream and its markers to LSL.

LSL traffic stays on this machine (``tests/conftest.py`` sets ``LSLAPICFG`` for the whole run); every
test names its streams uniquely.
"""

import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
from support import published_blocks

import mushu_client
from mushu_amp.drivers.rampamp import ramp
from mushu_client import MarkerSender

pylsl = pytest.importorskip("pylsl")


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def eeg_outlet(name, fs, labels, unit="microvolts"):
    info = pylsl.StreamInfo(name, "EEG", len(labels), fs, "float32", f"{name}-src")
    chans = info.desc().append_child("channels")
    for label in labels:
        ch = chans.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("unit", unit)
    return pylsl.StreamOutlet(info)


class Pusher(threading.Thread):
    """Pushes ramp samples at ``fs`` with exact LSL timestamps, and a marker on every 50th sample.

    Sample ``k`` is stamped ``t0 + k / fs`` and pushed ``lag`` seconds later, as a device that delivers
    its samples late stamps them with their acquisition time.
    """

    def __init__(self, outlet, fs, channels, marker_outlet=None, lag=0.0):
        super().__init__(daemon=True)
        self.outlet, self.fs, self.channels, self.marker_outlet = outlet, fs, channels, marker_outlet
        self.lag, self.t0 = lag, None
        self.halt = threading.Event()

    def run(self):
        start, k = pylsl.local_clock(), 0
        self.t0 = t0 = start - self.lag
        while not self.halt.is_set():
            due = int((pylsl.local_clock() - start) * self.fs) + 1
            if due > k:
                self.outlet.push_chunk(ramp(k, due - k, self.channels), [t0 + i / self.fs for i in range(k, due)])
                for i in range(k, due):
                    if self.marker_outlet is not None and i % 50 == 25:
                        self.marker_outlet.push_sample([f"m{i}"], t0 + i / self.fs)
                k = due
            time.sleep(0.005)


def read_for(amp, seconds, fs):
    chunks, markers, got = [], [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        data, mk = amp.get_data()
        markers += [(got + round(ms * fs / 1000), label) for ms, label in mk]
        chunks.append(data)
        got += len(data)
    return np.concatenate(chunks), markers


def test_lslamp_reads_labels_units_data_and_markers_on_their_samples(amp_service):
    name, fs = unique("mushu-eeg"), 250
    outlet = eeg_outlet(name, fs, ["Fz", "Cz", "Pz"])
    moutlet = pylsl.StreamOutlet(pylsl.StreamInfo(f"{name}-m", "Markers", 1, 0, "string", f"{name}-m-src"))
    pusher = Pusher(outlet, fs, 3, moutlet)
    pusher.start()
    amp = mushu_client.get_amp("lslamp", data=amp_service.data, control=amp_service.control)
    try:
        amp.configure(name=name, marker_name=f"{name}-m", timeout=1.0, marker_timeout=0.5)
        assert amp.get_channels() == ["Fz", "Cz", "Pz"] and amp.get_sampling_frequency() == fs
        assert amp.status()["unit"] == "microvolts"
        amp.start()
        data, markers = read_for(amp, 1.5, fs)
        amp.stop()
    finally:
        pusher.halt.set()
        amp.close()
    assert len(data) > 250
    k0 = int(data[0, 0]) // 3  # the first sample read: every later one follows it without a gap
    np.testing.assert_array_equal(data, ramp(k0, len(data), 3))
    assert len(markers) >= 4
    for sample, label in markers:
        assert abs(k0 + sample - int(label[1:])) <= 1, (sample, label)
    sent = [i for i in range(k0 + 1, k0 + len(data) - 10) if i % 50 == 25]
    assert sorted(int(label[1:]) for _, label in markers)[:len(sent)] == sent  # none lost


def test_lslamp_stamps_each_sample_with_its_lsl_timestamp_not_its_arrival(amp_service):
    name, fs, lag = unique("mushu-eeg"), 500, 0.03
    pusher = Pusher(eeg_outlet(name, fs, ["A", "B"]), fs, 2, lag=lag)  # samples arrive 30 ms after their stamp
    pusher.start()
    try:
        blocks, clock = published_blocks(amp_service, "lslamp", 2.0, name=name, marker_type=None, timeout=1.0)
    finally:
        pusher.halt.set()
    assert len(blocks) > 20 and clock["model"] == "stamped" and abs(clock["drift_ppm"]) < 1000
    for b in blocks:
        k = int(b.data[0, 0]) // 2  # the ramp holds each sample's index
        stamped = (pusher.t0 + k / fs) * 1e9  # pylsl.local_clock() is the monotonic clock
        assert abs(b.header.t_ns - stamped) < 0.5e6, (k, b.header.t_ns - stamped)
        assert b.header.t_read_ns - b.header.time_of(b.header.n_samples - 1) > 0.8 * lag * 1e9  # read late


def test_lslamp_without_a_stream_fails_fast_and_without_markers_still_reads(amp_service):
    amp = mushu_client.get_amp("lslamp", data=amp_service.data, control=amp_service.control)
    missing = unique("absent")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=f"name='{missing}'.*0.3 s"):
        amp.configure(name=missing, timeout=0.3)
    assert time.monotonic() - t0 < 1.5
    name, fs = unique("mushu-eeg"), 200
    pusher = Pusher(eeg_outlet(name, fs, ["A", "B"]), fs, 2)
    pusher.start()
    try:
        amp.configure(name=name, marker_name=unique("absent-markers"), timeout=1.0, marker_timeout=0.2)
        amp.start()
        data, markers = read_for(amp, 0.6, fs)
        amp.stop()
    finally:
        pusher.halt.set()
        amp.close()
    assert len(data) > 60 and markers == []
    np.testing.assert_array_equal(data, ramp(int(data[0, 0]) // 2, len(data), 2))


@pytest.fixture
def spawn_bridge():
    started = []

    def spawn(amp, markers, name):
        proc = subprocess.Popen([sys.executable, "-m", "mushu_lslbridge", "--amp-data", amp.data,
                                 "--amp-control", amp.control, "--markers-data", markers.data,
                                 "--markers-control", markers.control, "--name", name, "--log-level", "WARNING"])
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def open_inlet(name, timeout=10.0):
    found = pylsl.resolve_bypred(f"name='{name}'", 1, timeout)
    assert found, f"LSL stream {name!r} did not appear"
    inlet = pylsl.StreamInlet(found[0])
    inlet.open_stream(5.0)
    return inlet


def test_bridge_publishes_every_sample_and_marker_with_aligned_timestamps(spawn_amp, spawn_markers, spawn_bridge):
    svc, mk = spawn_amp(), spawn_markers()
    fs, n, name = 500, 600, unique("mushu-bridge")
    amp = mushu_client.get_amp("replayamp", data=svc.data, control=svc.control, markers=mk.data,
                               markers_control=mk.control, marker_grace=0.1)  # no marker late
    channels = ["Fz", "Cz", "Pz", "Oz"]
    amp.configure(data=ramp(0, n, 4), marker=[[200.0, "replayed 100"], [700.0, "replayed 350"]],
                  channels=channels, fs=fs, realtime=True, blocksize_samples=10)
    spawn_bridge(svc, mk, name)
    inlet, minlet = open_inlet(name), open_inlet(f"{name}-markers")
    desc = inlet.info(2.0)
    assert (desc.type(), desc.channel_count(), desc.nominal_srate()) == ("EEG", 4, fs)
    assert desc.get_channel_labels() == channels and desc.get_channel_units() == ["uV"] * 4
    amp.start()
    chunks, placed, got = [], [], 0
    sent = [f"marker {i}" for i in range(5)]
    with MarkerSender(port=mk.port) as sender:
        with pytest.raises(mushu_client.EndOfData):
            while True:
                if sent and got >= 50 * (6 - len(sent)):
                    sender.send(sent.pop(0))
                data, mks = amp.get_data()
                placed += [(got + round(ms * fs / 1000), label) for ms, label in mks]
                chunks.append(data)
                got += len(data)
    np.testing.assert_array_equal(np.concatenate(chunks), ramp(0, n, 4))
    assert sorted(label for _, label in placed) == sorted([f"marker {i}" for i in range(5)] +
                                                          ["replayed 100", "replayed 350"])
    assert (100, "replayed 100") in placed and (350, "replayed 350") in placed
    assert amp.marker_counts["late"] == 0

    values, stamps = [], []
    deadline = time.monotonic() + 10
    while sum(map(len, values)) < n and time.monotonic() < deadline:
        v, t = inlet.pull_chunk(timeout=0.2, max_samples=4096)
        if t:
            values.append(np.asarray(v, np.float32))
            stamps += t
    np.testing.assert_array_equal(np.concatenate(values), ramp(0, n, 4))  # every sample, exactly
    stamps = np.asarray(stamps)
    assert np.all(np.diff(stamps) > 0)
    lsl_markers = {}
    while len(lsl_markers) < len(placed) and time.monotonic() < deadline:
        labels, mstamps = minlet.pull_chunk(timeout=0.2, max_samples=100)
        lsl_markers.update((v[0], t) for v, t in zip(labels, mstamps))
    assert set(lsl_markers) == {label for _, label in placed}
    for sample, label in placed:
        # each marker has the timestamp of the sample mushu put it on
        assert abs(stamps[sample] - lsl_markers[label]) < 1e-6, (label, stamps[sample] - lsl_markers[label])
    amp.close()


class FakeOutlet:
    def __init__(self):
        self.chunks, self.samples = [], []

    def push_chunk(self, data, stamps):
        self.chunks.append((np.array(data), list(stamps)))

    def push_sample(self, values, stamp):
        self.samples.append((values[0], stamp))


def test_bridge_keeps_stamps_increasing_and_gives_markers_their_sample_stamp(monkeypatch):
    from mushu_core.wire import Block, BlockHeader, Marker
    from mushu_lslbridge import bridge as bridge_module

    b = bridge_module.LSLBridge("tcp://127.0.0.1:9", "tcp://127.0.0.1:9", None, None, name=unique("unit"))
    b.outlet, b.marker_outlet = FakeOutlet(), FakeOutlet()
    b._outlet_key = (("a", "b"), 100.0, ("uV", "uV"), "<f4")
    session, ms = "a" * 32, 1_000_000

    def block(seq, t_ns, markers=()):
        h = BlockHeader("eeg", session, seq, seq * 10, 10, 2, 100.0, "<f4", t_ns, markers)
        return Block(h, ramp(seq * 10, 10, 2))

    def marker(seq, t_ns, label):
        return Marker("markers", "b" * 32, seq, t_ns, label)

    b.handle(marker(0, 500 * ms, "before the data"))   # waits: no data yet
    b.handle(block(0, 1000 * ms))
    b.handle(block(1, 1085 * ms, markers=((3, "driver"),)))  # stamped 15 ms early: overlaps block 0
    b.handle(marker(1, 1102 * ms, "in block 1"))
    b.handle(marker(2, 1500 * ms, "after the data"))  # waits for its sample
    stamps = np.concatenate([s for _d, s in b.outlet.chunks])
    np.testing.assert_array_equal(np.concatenate([d for d, _s in b.outlet.chunks]), ramp(0, 20, 2))
    assert np.all(np.diff(stamps) > 0)
    t0 = b.lsl_time(1000 * ms, None)
    np.testing.assert_allclose(stamps[:10], t0 + np.arange(10) * 0.01)  # untouched
    np.testing.assert_allclose(stamps[10], t0 + 0.09 + 1e-6)  # pushed just after sample 9
    np.testing.assert_allclose(stamps[11:], t0 + 0.085 + np.arange(1, 10) * 0.01)  # untouched again
    pushed = dict(b.marker_outlet.samples)
    assert pushed["before the data"] == b.lsl_time(500 * ms, None)  # its own stamp
    assert pushed["driver"] == stamps[13]
    assert pushed["in block 1"] == stamps[12]  # the first sample at or after 1102 ms: 1085 + 20 ms
    assert "after the data" not in pushed
    monkeypatch.setattr(bridge_module, "MARKER_HOLD_S", 0.0)
    b._push_waiting_markers()  # its sample did not come in time: out at its own stamp
    assert dict(b.marker_outlet.samples)["after the data"] == b.lsl_time(1500 * ms, None)
    b.close()

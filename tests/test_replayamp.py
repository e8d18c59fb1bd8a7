"""replayamp: libmushu's configure rules, clock pacing without drift, markers on their samples,
the end of the data, numpy arrays through the client, and a recording replayed bit for bit."""

import math
import os
import time

import numpy as np
import pytest

import mushu_client
from mushu_amp.core import AmpCore
from mushu_amp.drivers.base import EndOfData
from mushu_amp.drivers.rampamp import ramp
from mushu_amp.drivers.replayamp import ReplayAmp
from mushu_client import MarkerSender
from mushu_core.arrays import decode_array, encode_array, to_plain
from mushu_core.recordings import load


def replay_core(**config):
    core = AmpCore()
    core.cmd_use("replayamp")
    core.cmd_configure(config)
    core.cmd_start()
    return core


def read_core(core, pause=0.0):
    """Acquire until the end: (data, [(sample, label)]) from the published blocks."""
    blocks = []
    while core.state == "running":
        blocks += core.acquire()
        time.sleep(pause)
    assert core.state == "ended"
    data = np.concatenate([d for _h, _f, d in blocks])
    markers = [(h.first_sample + off, label) for h, _f, _d in blocks for off, label in h.markers]
    return data, markers


def test_configure_follows_libmushu_rules():
    amp = ReplayAmp()
    data = ramp(0, 100, 2)
    with pytest.raises(TypeError, match="exactly one"):
        amp.configure(data, [], ["a", "b"], 1000)
    with pytest.raises(TypeError, match="exactly one"):
        amp.configure(data, [], ["a", "b"], 1000, blocksize_ms=10, blocksize_samples=10)
    with pytest.raises(ValueError, match="2.4 samples"):
        amp.configure(data, [], ["a", "b"], 240, blocksize_ms=10)
    amp.configure(data, [], ["a", "b"], 1000, blocksize_ms=10)
    assert amp.blocksize == 10 and amp.get_channels() == ["a", "b"] and amp.get_sampling_frequency() == 1000
    amp.configure(data, None, None, 256, blocksize_ms=62.5)  # 16 samples
    assert amp.blocksize == 16 and amp.get_channels() == ["Ch_0", "Ch_1"]
    with pytest.raises(TypeError, match="path"):
        amp.configure(data, [], None, 100, blocksize_samples=1, path="x")
    with pytest.raises(TypeError, match="needs data and fs"):
        amp.configure(blocksize_samples=1)
    for bad in [dict(channels=["a"]), dict(data=[1, 2, 3]), dict(data=[[1, 2], [3]]), dict(fs=0),
                dict(marker=[[1.0]]), dict(marker=[[float("nan"), "x"]]), dict(marker=[[1, "x" * 1025]]),
                dict(blocksize_samples=0), dict(data=[["a", "b"]])]:
        kw = {"data": data, "marker": [], "channels": None, "fs": 100, "blocksize_samples": 5, **bad}
        with pytest.raises(ValueError):
            amp.configure(**kw)
    with pytest.raises(ValueError, match="cannot read recording"):
        amp.configure(path="/nonexistent/recording", blocksize_samples=1)
    assert amp.presets == []


def test_markers_land_on_their_samples_through_the_core_and_the_data_ends():
    # fs=240: ms of sample j is not a whole number of ns, so a marker at exactly that
    # time must still land on j (the first sample at or after its time).
    fs = 240
    marker = [[j * 1000 / fs, f"on {j}"] for j in (0, 1, 5, 6, 7, 239, 479)]
    marker += [[-5.0, "before"], [1000 / fs * 10.5, "between 10 and 11"], [333.333333, "333.33 ms"],
               [5000.0, "after the end"]]
    core = replay_core(data=ramp(0, 480, 3).tolist(), marker=marker, channels=["x", "y", "z"], fs=fs,
                       realtime=False, blocksize_samples=6)
    data, markers = read_core(core)
    np.testing.assert_array_equal(data, ramp(0, 480, 3))
    expected = [(j, f"on {j}") for j in (0, 1, 5, 6, 7, 239, 479)]
    expected += [(0, "before"), (11, "between 10 and 11"), (80, "333.33 ms")]
    assert sorted(markers) == sorted(expected)
    assert core.late_driver_markers == 0
    with pytest.raises(EndOfData):
        core.driver.get_data()
    core.cmd_start()  # again: from the beginning
    again, _ = read_core(core)
    np.testing.assert_array_equal(again, data)


def test_realtime_paces_whole_blocks_by_the_clock_without_drift():
    fs, block, n = 200, 10, 200  # 50 ms blocks, 1 s of data
    amp = ReplayAmp()
    amp.configure(ramp(0, n, 2), [], None, fs, blocksize_samples=block)
    t_before = time.monotonic_ns()
    amp.start()
    t_after = time.monotonic_ns()
    period_ns = block * 1e9 / fs
    total = 0
    rng = np.random.default_rng(1)
    while True:
        before = time.monotonic_ns()
        try:
            data, _ = amp.get_data()
        except EndOfData:
            break
        after = time.monotonic_ns()
        total += len(data)
        # every block due by now, and none before its time: (k + 1) blocks after the start
        assert min(n, math.floor((before - t_after) / period_ns) * block) <= total
        assert total <= min(n, math.floor((after - t_before) / period_ns) * block)
        time.sleep(rng.uniform(0, 0.008))
    elapsed = (time.monotonic_ns() - t_before) / 1e9
    assert total == n and 1.0 <= elapsed < 1.1


def test_realtime_false_returns_bounded_batches_as_fast_as_called():
    amp = ReplayAmp()
    amp.configure(np.zeros((100_000, 16)), [], None, 1000, realtime=False, blocksize_ms=10)
    amp.start()
    sizes = []
    t0 = time.monotonic()
    with pytest.raises(EndOfData):
        while True:
            sizes.append(len(amp.get_data()[0]))
    assert time.monotonic() - t0 < 0.5  # 100 s of data
    assert sum(sizes) == 100_000 and all(s % 10 == 0 for s in sizes[:-1])
    assert max(sizes) * 16 * 4 <= 1 << 20


def test_arrays_travel_as_plain_maps():
    for a in (np.arange(12, dtype=np.float64).reshape(3, 4), np.arange(6, dtype=">i2").reshape(2, 3),
              np.ones((0, 5), np.float32)):
        m = encode_array(a)
        assert set(m) == {"__ndarray__", "dtype", "shape", "base64"}
        b = decode_array(m)
        assert b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_array_equal(b, a)
    with pytest.raises(ValueError, match="configure\\(path=...\\)"):
        encode_array(np.zeros((1 << 20,), np.float32))
    with pytest.raises(ValueError):
        decode_array({**encode_array(np.zeros(3)), "shape": [4]})
    assert to_plain([(np.int64(3), "a"), np.arange(2), {"x": np.float32(0.5)}]) == [[3, "a"], [0, 1], {"x": 0.5}]
    assert to_plain(np.array(["a", "b"])) == ["a", "b"] and to_plain("s") == "s"


def test_client_sends_ndarrays_and_replay_is_paced_and_ends(amp_service):
    amp = mushu_client.get_amp("replayamp", data=amp_service.data, control=amp_service.control)
    fs, n = 500, 750  # 1.5 s
    values = ramp(0, n, 8).astype(np.float64)
    marker = [(np.int64(k * 1000 // fs), f"m{k}") for k in range(0, n, 100)]  # numpy numbers too
    amp.configure(data=values, marker=marker, channels=[f"E{i}" for i in range(8)], fs=np.float64(fs),
                  realtime=True, blocksize_ms=20)
    assert amp.get_channels() == [f"E{i}" for i in range(8)] and amp.get_sampling_frequency() == fs
    t0 = time.monotonic()
    amp.start()
    chunks, markers, got, arrived = [], [], 0, []
    with pytest.raises(mushu_client.EndOfData):  # announced with the stream info after the last block
        while True:
            data, mk = amp.get_data()
            if len(data):
                arrived.append(time.monotonic())
            markers += [(got + round(ms * fs / 1000), label) for ms, label in mk]
            chunks.append(data)
            got += len(data)
    # 1.5 s of data take 1.5 s (plus start(), which waits 0.1 s for the absent markers service)
    assert 1.5 <= arrived[-1] - t0 < 1.75
    np.testing.assert_array_equal(np.concatenate(chunks), ramp(0, n, 8))
    assert markers == [(k, f"m{k}") for k in range(0, n, 100)]
    assert amp.status()["state"] == "ended"
    # realtime=False: 20 s of data as fast as it goes
    amp.configure(data=ramp(0, 20_000, 8), marker=[], channels=None, fs=1000, realtime=False,
                  blocksize_samples=10)
    t0 = time.monotonic()
    amp.start()
    chunks = []
    with pytest.raises(mushu_client.EndOfData):
        while True:
            chunks.append(amp.get_data()[0])
    assert time.monotonic() - t0 < 2.0
    np.testing.assert_array_equal(np.concatenate(chunks), ramp(0, 20_000, 8))
    with pytest.raises(ValueError, match="path"):
        amp.configure(data=np.zeros((100_000, 8), np.float32), marker=[], channels=None, fs=1000,
                      blocksize_samples=10)
    amp.close()


def read_to_end(amp):
    chunks, markers, got = [], [], 0
    with pytest.raises(mushu_client.EndOfData):
        while True:
            data, mk = amp.get_data()
            markers += [(got + round(ms * amp.get_sampling_frequency() / 1000), label) for ms, label in mk]
            chunks.append(data)
            got += len(data)
    return np.concatenate(chunks), markers


def test_a_recording_replays_bit_exactly_and_records_again_identically(spawn_amp, spawn_markers, spawn_recorder):
    mk = spawn_markers()
    svc = spawn_amp()
    rec = spawn_recorder(svc, mk)
    endpoints = dict(data=svc.data, control=svc.control, markers=mk.data, markers_control=mk.control,
                     recorder=rec.control)
    amp = mushu_client.get_amp("rampamp", **endpoints)
    amp.configure(fs=1000, channels=4)
    amp.start("original")
    labels = ["S  1", "a,b", "tab\tinside", " padded ", "ünï ✓", "back\\slash"]
    with MarkerSender(port=mk.port) as sender:
        for label in labels:
            time.sleep(0.1)
            sender.send(label)
            amp.get_data()
    time.sleep(0.1)
    amp.stop()
    base = amp.recording_result["base"]
    original = load(base)
    assert len(original.markers) == len(labels) and len(original.data) > 600
    amp.close()

    amp = mushu_client.get_amp("replayamp", **endpoints)
    amp.configure(path=base, realtime=False, blocksize_samples=7)
    assert amp.get_channels() == original.channels and amp.status()["unit"] == "a.u."
    amp.start("replayed")
    data, markers = read_to_end(amp)
    amp.stop()
    np.testing.assert_array_equal(data, original.data)
    assert data.tobytes() == original.data.tobytes()
    assert markers == original.marker_samples()
    replayed = amp.recording_result["base"]
    for ext in (".eeg", ".marker"):
        with open(base + ext, "rb") as a, open(replayed + ext, "rb") as b:
            assert a.read() == b.read(), ext
    again = load(replayed)
    assert (again.channels, again.fs, again.markers) == (original.channels, original.fs, original.markers)
    assert again.meta["mushu"]["units"] == original.meta["mushu"]["units"]
    # a relative name is looked up under MUSHU_DATA_DIR (where the recorder puts it), here the cwd
    amp.configure(path=os.path.relpath(base), realtime=True, blocksize_ms=100)
    amp.close()

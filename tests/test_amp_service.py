"""The amp service as a real process on real sockets, driven through the client."""

import json
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import msgpack
import numpy as np
import pytest
import zmq
from conftest import free_port

import mushu_client
from mushu_amp.drivers.rampamp import ramp
from mushu_client import AmpError, GapWarning, ServiceUnavailable
from mushu_core.wire import decode_reply, encode_request


def get_amp(svc, name="rampamp", **kw):
    return mushu_client.get_amp(name, data=svc.data, control=svc.control, **kw)


def collect(amp, n, timeout=20.0):
    """get_data until at least n samples arrived; return them and the markers."""
    chunks, deadline = [], time.monotonic() + timeout
    while sum(len(c) for c in chunks) < n:
        assert time.monotonic() < deadline, f"only {sum(len(c) for c in chunks)} of {n} samples arrived"
        data, markers = amp.get_data()
        assert markers == []
        chunks.append(data)
    return np.concatenate(chunks)


def drain(amp):
    """After stop(): get_data until it returns nothing more."""
    chunks = [amp.get_data()[0]]
    while len(chunks[-1]):
        chunks.append(amp.get_data()[0])
    return np.concatenate(chunks)


def test_round_trip_returns_every_sample_from_the_first(amp_service):
    with get_amp(amp_service) as amp:
        amp.configure(fs=2000, channels=8)
        assert amp.get_channels() == [f"Ch_{i}" for i in range(8)]
        assert amp.get_sampling_frequency() == 2000
        amp.start()
        data = collect(amp, 1000)
        amp.stop()
        rest, _ = amp.get_data()
        data = np.concatenate([data, rest])
        assert data.dtype == np.float32 and data.shape[1] == 8
        np.testing.assert_array_equal(data, ramp(0, len(data), 8))
        # after stop the stream is complete: nothing more, and no waiting for it
        t = time.monotonic()
        empty, _ = amp.get_data()
        assert empty.shape == (0, 8) and time.monotonic() - t < 0.5
        assert amp.status()["next_sample"] == len(data)


def test_rampamp_64ch_1khz_for_10s_loses_repeats_and_reorders_nothing(amp_service):
    with warnings.catch_warnings():
        warnings.simplefilter("error", GapWarning)
        with get_amp(amp_service) as amp:
            amp.configure(fs=1000, channels=64)
            amp.start()
            chunks, t_end = [], time.monotonic() + 10
            while time.monotonic() < t_end:
                chunks.append(amp.get_data()[0])
            amp.stop()
            chunks.append(amp.get_data()[0])
            data = np.concatenate(chunks)
            assert 9_500 < len(data) < 11_500
            np.testing.assert_array_equal(data, ramp(0, len(data), 64))
            assert amp.lost_samples == 0 and amp.gaps == []


def test_sinusamp_has_exact_frequency_and_continuous_phase(amp_service):
    with get_amp(amp_service, "sinusamp") as amp:
        amp.configure(f=7, fs=1000, channels=3)
        amp.start()
        t0 = time.monotonic()
        data = collect(amp, 3000)
        elapsed = time.monotonic() - t0
        amp.stop()
        k = np.arange(len(data))
        expected = np.sin(2 * np.pi * 7 * k / 1000).astype(np.float32)
        np.testing.assert_allclose(data[:, 0], expected, atol=2e-6)
        assert (data == data[:, :1]).all()
        # fs samples per second of the clock: samples delivered match elapsed time
        assert abs(len(data) - elapsed * 1000) < 60


def test_sinusamp_phase_after_hours_matches_exact_arithmetic():
    import math
    from fractions import Fraction

    from mushu_amp.drivers.sinusamp import SinusAmp
    amp = SinusAmp()
    amp.configure(f=3, fs=1000, channels=1)
    k0 = 10 * 3600 * 1000  # ten hours in
    got = amp.samples(k0, 5)[:, 0]
    want = [math.sin(2 * math.pi * float(Fraction(3 * k, 1000) % 1)) for k in range(k0, k0 + 5)]
    np.testing.assert_allclose(got, np.float32(want), atol=1e-6)


def test_presets_and_defaults_follow_libmushu(amp_service):
    with get_amp(amp_service, "randomamp") as amp:
        assert amp.presets == [["Random noise at 50Hz, 16Channels", {"fs": 50, "channels": 16}],
                               ["Random noise at 1kHz, 128Channels", {"fs": 1000, "channels": 128}]]
        assert amp.get_sampling_frequency() == 100 and len(amp.get_channels()) == 17
        amp.start()
        data = collect(amp, 20)
        amp.stop()
        assert data.min() >= 0 and data.max() < 1024 and (data == np.round(data)).all()
    with get_amp(amp_service, "sinusamp") as amp:
        assert amp.get_sampling_frequency() == 10 and len(amp.get_channels()) == 16


def test_configuration_errors_raise_in_the_client_as_the_driver_raised_them(amp_service):
    with get_amp(amp_service) as amp:
        with pytest.raises(ValueError, match="fs must be a positive number"):
            amp.configure(fs=-5, channels=4)
        with pytest.raises(TypeError, match=r"rampamp.configure\(fs, channels\): missing channels"):
            amp.configure(fs=100)
        with pytest.raises(TypeError, match="unknown 'gain'"):
            amp.configure(fs=100, channels=2, gain=3)
        amp.configure(fs=100, channels=2)
        amp.start()
        with pytest.raises(RuntimeError, match="cannot configure while running"):
            amp.configure(fs=100, channels=3)
        with pytest.raises(RuntimeError, match="is running; stop it"):
            get_amp(amp_service, "sinusamp")
        amp.stop()
    with pytest.raises(KeyError, match="unknown amp 'nosuchamp'"):
        get_amp(amp_service, "nosuchamp")


def raw_request(sock, *frames, timeout=2000):
    sock.send_multipart(list(frames))
    assert sock.poll(timeout), "the service did not answer"
    return sock.recv_multipart()


def test_bad_control_requests_get_error_replies_and_the_service_keeps_serving(amp_service):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(amp_service.control)
    cases = [
        ([b"", encode_request("bogus")], "ValueError", "unknown command 'bogus'"),
        ([b"", encode_request("use", amp=5)], "TypeError", "amp must be a string"),
        ([b"", encode_request("use")], "TypeError", "needs argument 'amp'"),
        ([b"", encode_request("configure", kwargs=[1, 2])], "RuntimeError", "no amp selected"),
        ([b"", encode_request("history", session="x", from_sample=-1)], "ValueError", "session"),
        ([b"", b"\x00\xffgarbage"], "ProtocolError", "control request"),
        ([b"", b"\x91\x01"], "ProtocolError", "must be a msgpack map"),
        ([b"", b"\x82\xa7version\x01\xa3cmd\xc0"], "ProtocolError", "'cmd' must be a string"),
        ([b"", encode_request("ping"), b"extra"], "ProtocolError", "2 body frames"),
        ([b"", b"x" * 5_000_000], "ProtocolError", "over the"),
        ([b"", encode_request("configure", kwargs={"t": msgpack.Timestamp(1, 2)})], "ProtocolError",
         "Timestamp are not allowed"),
        ([b"no delimiter"], "ProtocolError", "control request"),
    ]
    for frames, etype, words in cases:
        reply = raw_request(sock, *frames)
        assert reply[0] == b"" or frames[0] != b""  # answered in the peer's own envelope
        r = decode_reply(reply[-1])
        assert not r.ok and r.error_type == etype and words in r.error_message, (frames, r)
    # garbage that is not even ZeroMQ
    with socket.create_connection(("127.0.0.1", int(amp_service.control.rsplit(":", 1)[1]))) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)) * 4)
    ctl = amp_service.ctl()
    status = ctl.call("status")
    # (ZeroMQ may accept the raw bytes as a legacy ZMTP peer: more refusals, never a crash)
    malformed = sum(etype == "ProtocolError" for _, etype, _ in cases)
    assert status["malformed_requests"] >= malformed
    assert status["refused_requests"] == len(cases) - malformed
    assert ctl.call("ping")["service"] == "amp"
    with get_amp(amp_service) as amp:  # and it still acquires
        amp.configure(fs=1000, channels=4)
        amp.start()
        assert len(collect(amp, 50)) >= 50
        amp.stop()
    sock.close()


BROKEN = "import numpy\nimport mushu_no_such_dependency\n"

FAILING = textwrap.dedent("""
    from mushu_amp.drivers.rampamp import RampAmp

    class FailingAmp(RampAmp):
        '''Delivers 50 samples, then the device "vanishes".'''
        def start(self):
            super().start()
            self.sent = 0
        def get_data(self):
            if self.sent >= 50:
                raise OSError("device vanished")
            data, markers = super().get_data()
            data = data[:50 - self.sent]
            self.sent += len(data)
            return data, markers
""")


@pytest.fixture
def plugin_env(tmp_path):
    (tmp_path / "brokenamp.py").write_text(BROKEN)
    (tmp_path / "failingamp.py").write_text(FAILING)
    return {"PYTHONPATH": str(tmp_path),
            "MUSHU_DRIVERS": "brokenamp=brokenamp:BrokenAmp,failingamp=failingamp:FailingAmp"}


def test_a_driver_whose_import_fails_is_skipped_not_fatal(spawn_amp, plugin_env):
    svc = spawn_amp(env=plugin_env)
    names = mushu_client.get_available_amps(control=svc.control)
    assert {"randomamp", "sinusamp", "rampamp", "failingamp"} <= set(names) and "brokenamp" not in names
    out = subprocess.run([sys.executable, "-m", "mushu_cli", "amps", "--json", "--control", svc.control],
                         capture_output=True, text=True, check=True)
    broken = {a["name"]: a for a in json.loads(out.stdout)}["brokenamp"]
    assert broken["available"] is False and broken["installed"] is False
    assert "mushu_no_such_dependency" in broken["reason"]
    with pytest.raises(RuntimeError, match="mushu_no_such_dependency"):
        get_amp(svc, "brokenamp")
    with get_amp(svc) as amp:  # the service is unharmed
        amp.start()
        assert len(collect(amp, 10)) >= 10
        amp.stop()


def test_a_driver_exception_reaches_the_client_and_status(spawn_amp, plugin_env):
    svc = spawn_amp(env=plugin_env)
    with get_amp(svc, "failingamp") as amp:
        amp.configure(fs=1000, channels=2)
        amp.start()
        got = 0
        with pytest.raises(AmpError, match="OSError: device vanished"):
            for _ in range(200):
                got += len(amp.get_data()[0])
        assert got == 50  # every sample before the failure
        status = amp.status()
        assert status["state"] == "error" and "device vanished" in status["error"]
        assert status["driver_errors"] == 1
        amp.start()  # a new start recovers
        assert len(collect(amp, 5)) >= 5
        amp.stop()


def test_samples_dropped_on_the_bus_are_refetched_from_history(spawn_amp):
    svc = spawn_amp("--sndhwm", "5")
    with warnings.catch_warnings():
        warnings.simplefilter("error", GapWarning)
        with get_amp(svc, hwm=5) as amp:
            amp.configure(fs=100_000, channels=32)  # 12.8 MB/s: more than the kernel's socket buffers
            amp.start()
            time.sleep(1.5)  # a consumer that stalls: the PUB drops past 5 queued blocks
            amp.stop()
            data = drain(amp)
            total = amp.status()["next_sample"]
            assert total > 100_000
            assert len(data) == total
            np.testing.assert_array_equal(data, ramp(0, total, 32))
            assert amp.lost_samples == 0 and amp.refetched_samples > 1000


def test_a_gap_the_history_cannot_fill_is_reported_with_its_exact_size(spawn_amp):
    svc = spawn_amp("--sndhwm", "5", "--history-mb", "0.05")
    with get_amp(svc, hwm=5) as amp:
        amp.configure(fs=100_000, channels=16)  # 6.4 MB/s against a 50 kB history
        amp.start()
        time.sleep(1.0)
        amp.stop()
        with pytest.warns(GapWarning, match="samples lost from sample"):
            data = drain(amp)
        total = amp.status()["next_sample"]
        assert amp.lost_samples > 0 and amp.refetched_samples > 0  # what the history still held is kept
        assert len(data) + amp.lost_samples == total
        # what was returned is exactly the samples outside the reported gaps
        kept = np.ones(total, bool)
        for first, count in amp.gaps:
            kept[first:first + count] = False
        np.testing.assert_array_equal(data, ramp(0, total, 16)[kept])


def test_no_service_gives_a_clear_error_naming_the_endpoint_without_hanging():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    t = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=endpoint):
        mushu_client.get_amp("rampamp", control=endpoint, timeout=0.5)
    with pytest.raises(ServiceUnavailable, match=endpoint):
        mushu_client.get_available_amps(control=endpoint, timeout=0.5)
    assert time.monotonic() - t < 3


def test_get_data_raises_when_the_service_dies(spawn_amp):
    svc = spawn_amp()
    amp = get_amp(svc, timeout=0.5, dead_after=1.0)
    amp.start()
    collect(amp, 10)
    svc.proc.kill()
    svc.proc.wait()
    t = time.monotonic()
    with pytest.warns(mushu_client.ServiceWarning, match="not answering"):
        while amp.connected:
            amp.get_data()
    print(f"the client noticed the dead amp after {time.monotonic() - t:.3f} s")
    assert time.monotonic() - t < 1.3  # within a second, give or take a busy machine
    with pytest.raises(ServiceUnavailable, match=svc.control):
        for _ in range(20):
            amp.get_data()
    amp.close()


def test_a_second_client_joins_a_running_amp(amp_service):
    with get_amp(amp_service) as first, get_amp(amp_service) as second:
        first.configure(fs=1000, channels=4)
        first.start()
        collect(first, 100)
        second.start()  # joins the session from the current sample on
        data = collect(second, 100)
        start = int(data[0, 0]) // 4
        np.testing.assert_array_equal(data, ramp(start, len(data), 4))
        first.stop()


def test_get_available_amps_lists_the_simulated_drivers(amp_service):
    names = mushu_client.get_available_amps(control=amp_service.control)
    assert names[:3] == ["randomamp", "sinusamp", "rampamp"]
    assert "gusbamp" not in names and "epoc" not in names  # no such device here


def test_mushu_amps_cli_without_a_service_lists_local_drivers():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out = subprocess.run([sys.executable, "-m", "mushu_cli", "amps", "--control", endpoint,
                          "--timeout", "0.3"], capture_output=True, text=True, check=True).stdout
    assert f"No amp service answers at {endpoint}" in out and "rampamp" in out
    js = subprocess.run([sys.executable, "-m", "mushu_cli", "amps", "--json", "--control", endpoint,
                         "--timeout", "0.3"], capture_output=True, text=True, check=True).stdout
    available = {a["name"]: a["available"] for a in json.loads(js)}
    simulated = {"randomamp", "sinusamp", "rampamp"}
    assert simulated <= {name for name, ok in available.items() if ok}
    assert not available["gusbamp"] and not available["epoc"]  # no hardware here
    assert simulated < set(available)


def test_a_client_on_the_amps_host_reads_its_local_ipc_endpoint_and_follows_a_restart(spawn_amp):
    svc = spawn_amp()
    with get_amp(svc) as amp:
        offer = amp.status()["local_data"]
        assert amp.bus_endpoint == offer["endpoint"] and amp.bus_endpoint.startswith("ipc://")
        amp.configure(fs=2000, channels=4)
        amp.start()
        data = collect(amp, 1000)
        # killed and restarted on the same endpoints: the same local endpoint, so the client's
        # subscription reconnects by itself and follows the new session
        svc.proc.kill()
        svc.proc.wait()
        again = spawn_amp("--amp", "rampamp", "--configure", json.dumps({"fs": 2000, "channels": 4}), "--start",
                          like=svc)
        assert amp.status()["local_data"] == offer
        with pytest.warns(GapWarning, match="the amp restarted"):
            deadline = time.monotonic() + 20
            while not amp.gaps:
                assert time.monotonic() < deadline, "the client did not follow the restarted amp"
                amp.get_data()
        new = collect(amp, 1000)
        assert again.proc.poll() is None
        np.testing.assert_array_equal(data, ramp(0, len(data), 4))
        np.testing.assert_array_equal(new, ramp(int(new[0, 0]) // 4, len(new), 4))  # none lost since


def test_the_local_endpoint_is_used_only_where_offered_and_wanted(spawn_amp, monkeypatch):
    tcp_only = spawn_amp(env={"MUSHU_AMP_LOCAL_IPC": "0"})
    with get_amp(tcp_only) as amp:
        assert amp.status()["local_data"] is None and amp.bus_endpoint == tcp_only.data
    svc = spawn_amp()
    monkeypatch.setenv("MUSHU_AMP_LOCAL_IPC", "0")  # a client that wants TCP
    with get_amp(svc) as amp:
        assert amp.status()["local_data"] is not None and amp.bus_endpoint == svc.data
        amp.start()
        assert len(collect(amp, 100)) >= 100


def test_a_stalled_subscriber_holds_at_most_the_queue_budget_of_large_blocks_in_the_amp(spawn_amp):
    import psutil
    # 128 KiB blocks at 12.8 MB/s: the default high-water mark of 10,000 messages would let a
    # stalled subscriber pin 1.3 GB; a 4 MiB budget is 32 of them
    fs, channels, block_ms = 50_000, 64, 10
    svc = spawn_amp("--amp", "rampamp", "--configure", json.dumps({"fs": fs, "channels": channels}),
                    "--block-ms", str(block_ms), "--history-mb", "8", "--queue-mb", "4", "--start")
    amp = psutil.Process(svc.proc.pid)
    stalled = zmq.Context.instance().socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 64 * 1024)
    stalled.connect(svc.data)
    stalled.subscribe(b"data/")
    try:
        assert stalled.poll(5000)  # connected and receiving; from here on it reads nothing
        time.sleep(1.5)  # the history (8 MiB, 0.7 s) fills
        before = amp.memory_info().rss
        t0 = time.monotonic()
        time.sleep(5.0)
        published = (time.monotonic() - t0) * fs * channels * 4
        grown = amp.memory_info().rss - before
        # the subscriber's queue is bounded by the budget, not by what was published meanwhile
        assert published > 60e6
        assert grown < 20e6, f"the amp grew by {grown / 1e6:.0f} MB while {published / 1e6:.0f} MB were published"
        # and the amp stays live for everyone else
        assert svc.ctl().call("status")["state"] == "running"
    finally:
        stalled.close(linger=0)

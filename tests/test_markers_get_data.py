"""Markers merged into get_data: the amp and markers services as real processes."""

import time
import warnings

import numpy as np
import pytest

import mushu_client
from mushu_amp.drivers.rampamp import ramp
from mushu_client import MarkerSender

FS = 1000


def open_amp(amp_svc, markers_svc, **kw):
    amp = mushu_client.get_amp("rampamp", data=amp_svc.data, control=amp_svc.control,
                               markers=markers_svc.data, markers_control=markers_svc.control, **kw)
    amp.configure(fs=FS, channels=8)
    return amp


class Reader:
    """get_data in a loop, checking the contract of every call."""

    def __init__(self, amp):
        self.amp, self.n, self.markers, self.chunks = amp, 0, [], []

    def read(self):
        data, markers = self.amp.get_data()
        duration = len(data) * 1000 / FS
        for ms, label in markers:
            sample = self.n + round(ms * FS / 1000)  # a late marker: ms < 0, into earlier data
            assert 0 <= sample < self.n + len(data), (ms, duration, label)
            self.markers.append((sample, label))
        self.chunks.append(data)
        self.n += len(data)
        return data

    def until(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; markers so far: {self.markers[-5:]}"
            self.read()

    def check_data(self, channels=8):
        data = np.concatenate(self.chunks)
        np.testing.assert_array_equal(data, ramp(0, len(data), channels))


@pytest.mark.parametrize("grace", [None, 0.02])
def test_a_marker_sent_right_after_sample_n_lands_within_a_few_samples_after_n(spawn_amp, spawn_markers, grace):
    amp_svc, mk = spawn_amp(), spawn_markers()
    sender = MarkerSender("127.0.0.1", mk.port)
    udp = MarkerSender("127.0.0.1", mk.port, protocol="udp")
    kw = {} if grace is None else {"marker_grace": grace}
    with open_amp(amp_svc, mk, **kw) as amp:
        sender.send("warm-up")  # connect before the run; stamped before start, so not returned
        amp.start()
        r = Reader(amp)
        sent = []
        for i in range(300):
            while not len(r.read()):
                pass
            n = r.n - 1  # the newest sample get_data has just returned
            (udp if i % 3 == 2 else sender).send(f"{i}:{n}")
            sent.append(n)
        r.until(lambda: len(r.markers) == len(sent))
        amp.stop()
        while len(r.read()):
            pass
        r.check_data()
    labels = [label for _, label in r.markers]
    expected = [f"{i}:{n}" for i, n in enumerate(sent)]
    assert sorted(labels) == sorted(expected)  # each exactly once
    # in order per transport (TCP and UDP markers may race each other into the service)
    tcp = [label for label in labels if int(label.split(":")[0]) % 3 != 2]
    assert tcp == [label for label in expected if int(label.split(":")[0]) % 3 != 2]
    r.markers.sort(key=lambda m: int(m[1].split(":")[0]))
    offsets = [sample - n for (sample, _), n in zip(r.markers, sent)]
    print(f"grace {grace}: marker offset after sample n: min {min(offsets)}, median {np.median(offsets)}, "
          f"max {max(offsets)}; {amp.marker_counts}")
    # get_data returns samples once they are marker_grace old, so the marker lands on the
    # sample after n + grace, give or take a process that was not scheduled in time (on a busy
    # 2-core machine the sender may wait tens of ms for a core now and then)
    held = amp.marker_grace_ns * FS // 1_000_000_000
    assert min(offsets) >= 1 and np.median(offsets) <= held + 2
    assert np.percentile(offsets, 95) <= held + 3 and max(offsets) <= held + 50
    assert amp.marker_counts["lost"] == 0
    if grace is not None:  # a grace far above this machine's marker latency: none is late
        assert amp.marker_counts["late"] == 0
    sender.close()
    udp.close()


def test_markers_before_start_are_not_returned(spawn_amp, spawn_markers):
    amp_svc, mk = spawn_amp(), spawn_markers()
    with open_amp(amp_svc, mk) as amp:
        mushu_client.send_marker("before", "127.0.0.1", mk.port)
        time.sleep(0.05)  # let it be published before start()
        amp.start()
        r = Reader(amp)
        r.until(lambda: r.n > 20)
        mushu_client.send_marker("after", "127.0.0.1", mk.port)
        r.until(lambda: r.markers)
        r.until(lambda: r.n > r.markers[-1][0] + 50)
        amp.stop()
    assert [label for _, label in r.markers] == ["after"]
    # the client's one SUB socket sent the amp's topics here too: counted, not a problem
    counts = mk.ctl().call("status")["counts"]
    assert counts["bad_subscriptions"] == 0 and counts["other_stream_subscriptions"] >= 2


def test_the_markers_service_may_start_after_the_client_and_restart(spawn_amp, spawn_markers):
    from conftest import MarkersService, free_port
    amp_svc = spawn_amp()
    port = free_port()
    eps = [f"tcp://127.0.0.1:{free_port()}" for _ in range(3)]
    planned = MarkersService(None, eps[0], eps[1], port, eps[2])
    with open_amp(amp_svc, planned) as amp:
        amp.start()  # no markers service yet
        r = Reader(amp)
        r.until(lambda: r.n > 50)
        mk = spawn_markers(like=planned)
        sender = MarkerSender("127.0.0.1", mk.port)  # one connection: markers arrive in order
        for i in range(5):
            sender.send(f"first-{i}")
        r.until(lambda: len(r.markers) == 5)
        mk.stop()
        spawn_markers(like=planned)  # a new session, sequence numbers from 0 again
        for i in range(5):
            sender.send(f"second-{i}")  # reconnects to the restarted service
        r.until(lambda: len(r.markers) == 10)
        amp.stop()
        sender.close()
        r.check_data()
    assert [label for _, label in r.markers] == [f"first-{i}" for i in range(5)] + [f"second-{i}" for i in range(5)]
    assert [s for s, _ in r.markers] == sorted(s for s, _ in r.markers)


def test_a_client_joining_after_the_marker_history_turned_over_is_told_of_no_gap(spawn_amp, spawn_markers):
    amp_svc, mk = spawn_amp(), spawn_markers("--history-markers", "50")
    sender = MarkerSender("127.0.0.1", mk.port)
    for i in range(120):  # more than the history holds, all before the client starts
        sender.send(f"old-{i}")
    ctl = mk.ctl()
    deadline = time.monotonic() + 10
    while ctl.call("status")["last_seq"] < 119:
        assert time.monotonic() < deadline
    ctl.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_amp(amp_svc, mk) as amp:
            for round_ in range(2):  # and again in a second session of the same client
                amp.start()
                r = Reader(amp)
                r.until(lambda: r.n > 20)
                for i in range(5):
                    sender.send(f"new-{round_}-{i}")
                r.until(lambda: len(r.markers) == 5)
                amp.stop()
                assert [label for _, label in r.markers] == [f"new-{round_}-{i}" for i in range(5)]
                assert amp.marker_counts["lost"] == 0
    sender.close()
    assert not [w for w in caught if issubclass(w.category, mushu_client.GapWarning)], \
        [str(w.message) for w in caught]


def test_markers_stamped_before_the_stop_come_even_when_the_markers_service_publishes_them_late(
        spawn_amp, spawn_markers, spawn_recorder):
    import os
    import signal
    import threading
    amp_svc, mk = spawn_amp(), spawn_markers()
    rec = spawn_recorder(amp_svc, mk)
    sender = MarkerSender("127.0.0.1", mk.port)
    with open_amp(amp_svc, mk, recorder=rec.control) as amp:
        amp.start("paused")
        r = Reader(amp)
        r.until(lambda: r.n > 100)
        sender.send("early")
        r.until(lambda: r.markers)
        os.kill(mk.proc.pid, signal.SIGSTOP)  # a markers service too busy to publish for a while
        resume = threading.Timer(0.5, os.kill, (mk.proc.pid, signal.SIGCONT))
        try:
            for i in range(10):  # the kernel stamps them on arrival, during the session
                sender.send(f"paused-{i}")
            n = r.n
            r.until(lambda: r.n > n + 50)
            resume.start()
            amp.stop()
            while len(r.read()):
                pass
        finally:
            resume.cancel()
            os.kill(mk.proc.pid, signal.SIGCONT)
        r.check_data()
        result = amp.recording_result
    sender.close()
    assert [label for _, label in r.markers] == ["early"] + [f"paused-{i}" for i in range(10)]
    assert all(sample < r.n for sample, _ in r.markers)
    # the recording waited for them too: the same markers on the same samples
    recording = mushu_client.load(result["base"])
    np.testing.assert_array_equal(recording.data, np.concatenate(r.chunks))
    assert [(round(ms * FS / 1000), label) for ms, label in recording.markers] == r.markers

"""The markers service as a real process, driven over real sockets.

Each test starts ``python -m mushu_markers`` on free ports, waits until it
answers ``ping``, and subscribes before sending: the service answers every
new subscription with a heartbeat, so a received heartbeat means the
subscription is live and nothing sent afterwards can be missed.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

import msgpack
import psutil
import pytest
import zmq
from conftest import Service, free_port, wait_until_answers

from mushu_client import MarkerSender, ServiceUnavailable, send_marker
from mushu_core.wire import (MAX_LABEL_LENGTH, Marker, MarkerStreamInfo, decode_marker, decode_message, encode_request,
                             info_topic, marker_topic)
from mushu_markers.service import _is_loopback

CTX = zmq.Context.instance()
HOST = "127.0.0.1"


def free_ingress_port() -> int:
    """A port free for both TCP and UDP on loopback (the ingress uses one number for both)."""
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind((HOST, port))
            except OSError:
                continue
        return port


class MarkersProcess(Service):
    """One ``mushu_markers`` process on free ports, its output in ``log_path``."""

    def __init__(self, log_path, extra=()):
        self.port = free_ingress_port()
        data, control, self.ingress = (f"tcp://{HOST}:{free_port()}" for _ in range(3))
        self.log_path = log_path
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mushu_markers", "--port", str(self.port), "--data", data,
                 "--control", control, "--ingress", self.ingress, *extra],
                stdout=log, stderr=subprocess.STDOUT)
        super().__init__(proc, data, control, "markers")
        try:
            wait_until_answers(self)
        except Exception as exc:
            raise AssertionError(f"markers service did not start ({exc}): {self.log()}") from None
        self.client = self.ctl(5.0)
        self.session = self.call("ping")["session"]

    def call(self, cmd, **args):
        return self.client.call(cmd, **args)

    def status(self) -> dict:
        return self.call("status")

    def counts(self) -> dict:
        return self.status()["counts"]

    def log(self) -> str:
        return self.log_path.read_text()

    def subscribe(self) -> Subscriber:
        return Subscriber(self.data)

    def stop(self):
        self.client.close()
        super().stop()
        assert self.proc.returncode == 0, f"markers service exited with {self.proc.returncode}: {self.log()}"


class Subscriber:
    """A SUB socket collecting the marker stream; returns once its subscription is live."""

    def __init__(self, endpoint: str, stream: str = "markers"):
        self.sock = CTX.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        # Markers first: the heartbeat answering the later info subscription
        # proves both were processed (they travel in order on one pipe).
        self.sock.setsockopt(zmq.SUBSCRIBE, marker_topic(stream))
        self.sock.setsockopt(zmq.SUBSCRIBE, info_topic(stream))
        self.markers: list[Marker] = []
        self.infos: list[MarkerStreamInfo] = []
        self.recv_ns: list[int] = []
        self.wait_for(lambda: self.infos, 5, "no heartbeat after subscribing")

    def wait_for(self, condition, timeout: float = 10, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out waiting for {what}; got {len(self.markers)} markers"
            if self.sock.poll(remaining * 1000):
                frames = self.sock.recv_multipart()
                t = time.monotonic_ns()
                msg = decode_message(frames)
                if isinstance(msg, Marker):
                    self.markers.append(msg)
                    self.recv_ns.append(t)
                else:
                    self.infos.append(msg)

    def wait_markers(self, n: int, timeout: float = 10) -> list[Marker]:
        self.wait_for(lambda: len(self.markers) >= n, timeout, f"{n} markers")
        return self.markers

    def wait_labels(self, labels, timeout: float = 10):
        wanted = set(labels)
        self.wait_for(lambda: wanted <= {m.label for m in self.markers}, timeout, f"labels {sorted(wanted)[:5]}...")

    def assert_contiguous(self):
        seqs = [m.seq for m in self.markers]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True

    def close(self):
        self.sock.close(linger=0)


@pytest.fixture
def start_markers(tmp_path):
    procs = []

    def start(*extra):
        procs.append(MarkersProcess(tmp_path / f"markers{len(procs)}.log", extra))
        return procs[-1]

    yield start
    failures = []
    for p in procs:
        try:
            p.stop()
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, failures


@pytest.fixture
def markers(start_markers):
    return start_markers()


@contextlib.contextmanager
def neighbour(svc: MarkersProcess, protocol: str = "tcp"):
    """A well-behaved sender sending ``good-N`` markers all the while the block runs.

    Yields the list of the numbers sent so far; on exit the sender stops.
    """
    sent: list[int] = []
    stop = threading.Event()
    started = threading.Event()
    errors = []

    def run():
        try:
            with MarkerSender(HOST, svc.port, protocol) as sender:
                while not stop.is_set():
                    sender.send(f"good-{len(sent)}")
                    sent.append(len(sent))
                    started.set()
                    time.sleep(0.001)
        except Exception as exc:  # reported by the test thread
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5)
    try:
        yield sent
        deadline = time.monotonic() + 5
        while len(sent) < 50 and not errors and time.monotonic() < deadline:  # some after the bad input too
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(5)
    assert not errors, errors


def assert_neighbour_intact(sub: Subscriber, sent: list[int], svc: MarkersProcess):
    assert len(sent) > 10
    sub.wait_labels([f"good-{i}" for i in sent])
    good = [m for m in sub.markers if m.label.startswith("good-")]
    assert [m.label for m in good] == [f"good-{i}" for i in sent]  # in order, none lost, none twice
    sub.assert_contiguous()
    assert svc.call("ping")["session"] == svc.session
    send_marker("still-serving", HOST, svc.port)
    sub.wait_labels(["still-serving"])


# -- basics -------------------------------------------------------------------


def test_ping_status_time(markers):
    ping = markers.call("ping")
    assert ping["service"] == "markers" and ping["stream"] == "markers" and len(ping["session"]) == 32
    assert isinstance(ping["version"], str) and ping["protocol"] == 1
    st = markers.status()
    assert st["pid"] == markers.proc.pid and st["session"] == markers.session and st["last_seq"] == -1
    assert st["endpoints"]["tcp"] == f"{HOST}:{markers.port}" == st["endpoints"]["udp"]
    assert st["endpoints"]["data"] == markers.data and st["endpoints"]["ingress"] == markers.ingress
    assert st["connections"] == 0 and st["max_connections"] == 256
    assert st["history"]["markers"] == 0 and st["history"]["limit_markers"] == 100_000
    assert set(st["counts"]) >= {"markers", "too_long", "invalid_utf8", "connections_refused"}
    before = time.monotonic_ns()
    t = markers.call("time")["t_ns"]
    assert before <= t <= time.monotonic_ns()
    assert "WARNING" not in markers.log()  # loopback: no exposure warning


def test_loopback_detection():
    assert _is_loopback("127.0.0.1") and _is_loopback("localhost") and _is_loopback("::1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::")


def test_pyff_style_udp(markers):
    sub = markers.subscribe()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        before = time.monotonic_ns()
        for label in ("S  1", "S 12", "R128"):
            s.sendto((label + "\n").encode(), ("127.0.0.1", markers.port))  # pyff's send_udp
        after = time.monotonic_ns()
        src = f"udp:127.0.0.1:{s.getsockname()[1]}"
    ms = sub.wait_markers(3)
    assert [(m.seq, m.label, m.source, m.flags) for m in ms] == [
        (0, "S  1", src, ()), (1, "S 12", src, ()), (2, "R128", src, ())]
    assert all(before <= m.t_ns <= after + 50_000_000 for m in ms)
    assert {m.session for m in ms} == {markers.session} and {m.stream for m in ms} == {"markers"}


def test_tcp_byte_by_byte_is_stamped_at_its_first_byte(markers):
    sub = markers.subscribe()
    with socket.create_connection((HOST, markers.port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sends = []
        for b in b"marker\n":
            if sends:
                time.sleep(0.05)
            t0 = time.monotonic_ns()
            s.send(bytes([b]))
            sends.append((t0, time.monotonic_ns()))
        (m,) = sub.wait_markers(1)
    assert m.label == "marker" and m.source.startswith("tcp:127.0.0.1:")
    first_start, first_end = sends[0]
    last_start = sends[-1][0]
    assert first_start <= m.t_ns <= first_end + 20_000_000
    assert m.t_ns < last_start - 200_000_000


def test_several_markers_per_packet_crlf_and_utf8(markers):
    sub = markers.subscribe()
    with socket.create_connection((HOST, markers.port)) as s:
        s.sendall("a\r\nb\nReiz ä ✓ 😀\r\n".encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.sendto("x\r\ny\nno newline ü".encode(), (HOST, markers.port))
    ms = sub.wait_markers(6)
    tcp = [m for m in ms if m.source.startswith("tcp:")]
    udp = [m for m in ms if m.source.startswith("udp:")]
    assert [m.label for m in tcp] == ["a", "b", "Reiz ä ✓ 😀"]  # the two sources may interleave
    assert [m.label for m in udp] == ["x", "y", "no newline ü"]
    assert all(m.flags == () for m in ms)
    assert len({m.t_ns for m in tcp}) == 1 and len({m.t_ns for m in udp}) == 1  # one read each


def test_tcp_sender_closing_ends_its_last_marker(markers):
    sub = markers.subscribe()
    with socket.create_connection((HOST, markers.port)) as s:
        s.sendall(b"one\ntwo")
    assert [m.label for m in sub.wait_markers(2)] == ["one", "two"]


def test_many_concurrent_senders(markers):
    sub = markers.subscribe()
    n_senders, n_each = 32, 50
    barrier = threading.Barrier(n_senders)

    def run(k):
        with MarkerSender(HOST, markers.port, "udp" if k % 8 == 0 else "tcp") as sender:
            barrier.wait()
            for i in range(n_each):
                sender.send(f"s{k}-{i}")

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sub.wait_labels([f"s{k}-{i}" for k in range(n_senders) for i in range(n_each)])
    assert len(sub.markers) == n_senders * n_each
    sub.assert_contiguous()
    for k in range(n_senders):  # each sender's markers in its own order
        assert [m.label for m in sub.markers if m.label.startswith(f"s{k}-")] == [f"s{k}-{i}" for i in range(n_each)]


PACED_SENDER = """
import sys, time
from mushu_client import MarkerSender
port, n, rate = map(int, sys.argv[1:])
with MarkerSender("127.0.0.1", port) as sender:
    t0 = time.monotonic()
    for i in range(n):
        ahead = t0 + i / rate - time.monotonic()
        if ahead > 0.002:
            time.sleep(ahead)
        sender.send("m%06d" % i)
    print(time.monotonic() - t0)
"""


def test_10k_markers_per_second_for_5_s_over_tcp(markers):
    n, rate = 50_000, 10_000
    sub = markers.subscribe()
    service = psutil.Process(markers.proc.pid)
    cpu0 = service.cpu_times()
    sender = subprocess.Popen([sys.executable, "-c", PACED_SENDER, str(markers.port), str(n), str(rate)],
                              stdout=subprocess.PIPE, text=True)
    sub.wait_markers(n, timeout=40)
    elapsed = float(sender.communicate(timeout=10)[0])
    cpu1 = service.cpu_times()
    assert sender.returncode == 0
    assert elapsed >= (n - 1) / rate - 0.01  # paced: the sender runs ahead by at most 2 ms
    assert [m.seq for m in sub.markers] == list(range(n))
    assert [m.label for m in sub.markers] == ["m%06d" % i for i in range(n)]
    assert markers.counts()["markers"] == n
    latency = sorted(r - m.t_ns for r, m in zip(sub.recv_ns, sub.markers))
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / elapsed
    print(f"\n10k/s test: {n} markers in {elapsed:.2f} s, none lost; stamp-to-subscriber latency "
          f"median {statistics.median(latency) / 1e3:.0f} us, p99 {latency[int(0.99 * n)] / 1e3:.0f} us, "
          f"max {latency[-1] / 1e3:.0f} us; service CPU {100 * cpu:.0f}%")


# -- ZeroMQ ingress and history -----------------------------------------------


def test_zmq_ingress_with_and_without_sender_time(markers):
    sub = markers.subscribe()
    push = CTX.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(markers.ingress)
    before = time.monotonic_ns()
    push.send("plain ✓".encode())
    push.send(msgpack.packb({"label": "timed", "t_ns": 12345}))
    push.send(msgpack.packb({"label": "map without time"}))
    ms = sub.wait_markers(3)
    push.close()
    after = time.monotonic_ns()
    assert [(m.label, m.source, m.flags) for m in ms] == [
        ("plain ✓", "zmq", ()), ("timed", "zmq", ("sender_time",)), ("map without time", "zmq", ())]
    assert before <= ms[0].t_ns <= after and ms[1].t_ns == 12345 and before <= ms[2].t_ns <= after
    assert markers.counts()["zmq_markers"] == 3


def test_history_for_a_late_subscriber(markers):
    with MarkerSender(HOST, markers.port) as sender:
        for i in range(50):
            sender.send(f"h{i}")
    late = markers.subscribe()
    late.wait_for(lambda: late.infos[-1].last_seq == 49, 5, "heartbeat showing 50 markers")
    info = late.infos[-1]
    assert info.session == markers.session
    result, frames = markers.client.request("history", session=info.session, from_seq=0)
    assert result == {"session": markers.session, "markers": 50, "oldest_seq": 0, "last_seq": 49}
    got = [decode_marker(f.bytes) for f in frames]
    assert [(m.seq, m.label) for m in got] == [(i, f"h{i}") for i in range(50)]
    _, frames = markers.client.request("history", session=info.session, from_seq=45)
    assert [decode_marker(f.bytes).seq for f in frames] == [45, 46, 47, 48, 49]
    with pytest.raises(ValueError) as exc:
        markers.call("history", session="f" * 32, from_seq=0)
    assert "f" * 32 in str(exc.value) and markers.session in str(exc.value)


def test_history_is_bounded(start_markers):
    svc = start_markers("--history-markers", "10")
    with MarkerSender(HOST, svc.port) as sender:
        for i in range(25):
            sender.send(f"b{i}")
    sub = svc.subscribe()
    sub.wait_for(lambda: sub.infos[-1].last_seq == 24, 5, "all 25 markers")
    result, frames = svc.client.request("history", session=svc.session, from_seq=0)
    assert result["oldest_seq"] == 15 and [decode_marker(f.bytes).label for f in frames] == [
        f"b{i}" for i in range(15, 25)]


# -- the client -----------------------------------------------------------------


def test_send_marker_and_marker_sender(start_markers):
    svc = start_markers("--idle-timeout", "0.3")
    sub = svc.subscribe()
    send_marker("tcp one", HOST, svc.port)
    send_marker("udp one", HOST, svc.port, protocol="udp")
    sender = MarkerSender(HOST, svc.port)
    sender.send("kept 1")
    # the service closes the idle connection; the sender notices and reconnects
    sub.wait_for(lambda: svc.counts()["connections_idle_closed"] == 1, 5, "idle close")
    sender.send("kept 2")
    sender.close()
    ms = sub.wait_markers(4)
    # one connection's markers are in order; separate connections' may interleave
    assert sorted(m.label for m in ms) == ["kept 1", "kept 2", "tcp one", "udp one"]
    assert [m.label for m in ms if m.label.startswith("kept")] == ["kept 1", "kept 2"]
    assert {m.label: m.source.split(":")[0] for m in ms}["udp one"] == "udp"
    for bad in ("two\nlines", "cr\r", "", "x" * (MAX_LABEL_LENGTH + 1)):
        with pytest.raises(ValueError):
            send_marker(bad, HOST, svc.port)
    with pytest.raises(ValueError):
        MarkerSender(HOST, svc.port, protocol="sctp")


def test_send_marker_to_no_service_names_the_address():
    port = free_port()
    with pytest.raises(ServiceUnavailable, match=f"127.0.0.1:{port}"):
        send_marker("nobody", HOST, port)


def test_send_marker_defaults_come_from_the_environment(markers, monkeypatch):
    sub = markers.subscribe()
    monkeypatch.setenv("MUSHU_MARKERS_HOST", HOST)
    monkeypatch.setenv("MUSHU_MARKERS_PORT", str(markers.port))
    send_marker("from env")
    assert sub.wait_markers(1)[0].label == "from env"


def test_cli_marker(markers):
    sub = markers.subscribe()
    cli = [sys.executable, "-m", "mushu_cli", "marker"]
    sent = subprocess.run([*cli, "cli ✓", "--port", str(markers.port)], check=True, timeout=30,
                          capture_output=True, text=True)
    # what was sent where, so that a newcomer knows it went out
    assert sent.stdout == f"sent marker 'cli ✓' to the markers service at 127.0.0.1:{markers.port} over TCP\n"
    subprocess.run([*cli, "cli udp", "--udp", "--port", str(markers.port)], check=True, timeout=30)
    env = {**os.environ, "MUSHU_MARKERS_PORT": str(markers.port)}
    subprocess.run([*cli, "cli env"], check=True, timeout=30, env=env)
    ms = sub.wait_markers(3)
    assert sorted((m.label, m.source.split(":")[0]) for m in ms) == [("cli env", "tcp"), ("cli udp", "udp"),
                                                                      ("cli ✓", "tcp")]
    dead = subprocess.run([*cli, "x", "--port", str(free_port())], capture_output=True, text=True, timeout=30)
    assert dead.returncode == 1 and "127.0.0.1:" in dead.stderr and "'mushu up' starts it" in dead.stderr
    bad = subprocess.run([*cli, "a" * (MAX_LABEL_LENGTH + 1), "--port", str(markers.port)],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "limit" in bad.stderr


# -- bad input, each while a well-behaved sender keeps sending ------------------


def test_invalid_utf8_is_kept_flagged(markers):
    sub = markers.subscribe()
    with neighbour(markers) as sent:
        with socket.create_connection((HOST, markers.port)) as s:
            s.sendall(b"caf\xe9\n\xff\xfe\n")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"udp \xc3\n", (HOST, markers.port))
        sub.wait_labels(["caf\ufffd", "\ufffd\ufffd", "udp \ufffd"])
    assert_neighbour_intact(sub, sent, markers)
    flagged = [m for m in sub.markers if not m.label.startswith(("good-", "still"))]
    assert all(m.flags == ("invalid_utf8",) for m in flagged)
    assert markers.counts()["invalid_utf8"] == 3
    assert "flag invalid_utf8" in markers.log()


def test_too_long_labels_are_refused_and_the_connection_kept(markers):
    sub = markers.subscribe()
    proc = psutil.Process(markers.proc.pid)
    rss0 = proc.memory_info().rss
    with neighbour(markers) as sent:
        with socket.create_connection((HOST, markers.port)) as s:
            s.sendall(b"L" * (MAX_LABEL_LENGTH + 1) + b"\nafter long\n")
            s.sendall(b"N" * (32 << 20))  # 32 MiB and no newline
            s.sendall(b"\nafter flood\n")
            sub.wait_labels(["after long", "after flood"])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"U" * 5000 + b"\nafter datagram\n", (HOST, markers.port))
        sub.wait_labels(["after datagram"])
    assert_neighbour_intact(sub, sent, markers)
    assert proc.memory_info().rss - rss0 < 16 << 20
    assert not any(m.label.startswith(("L", "N", "U")) for m in sub.markers)
    counts = markers.counts()
    assert counts["too_long"] == 3 and counts["connections_closed"] >= 1
    assert "refused" in markers.log()


def test_binary_garbage_never_hurts_neighbours(markers):
    sub = markers.subscribe()
    garbage = random.Random(1).randbytes(256 << 10)
    with neighbour(markers) as sent:
        with socket.create_connection((HOST, markers.port)) as s:
            s.sendall(b"trig\x00ger\x1b[0m\n")
            s.sendall(garbage)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            for i in range(0, 64 << 10, 1000):
                u.sendto(garbage[i:i + 1000], (HOST, markers.port))
        # a sender that resets its connection in the middle of a line
        r = socket.create_connection((HOST, markers.port))
        r.sendall(b"half a lab")
        r.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        r.close()
        sub.wait_labels(["trig\ufffdger\ufffd[0m"])
    assert_neighbour_intact(sub, sent, markers)
    trig = next(m for m in sub.markers if m.label.startswith("trig"))
    assert trig.flags == ("control_chars",)
    for m in sub.markers:
        assert not any(ord(c) < 32 and c != "\t" or 0x7F <= ord(c) <= 0x9F for c in m.label)
    counts = markers.counts()
    assert counts["control_chars"] > 1 and counts["invalid_utf8"] > 1


def test_empty_datagrams_and_empty_lines_are_counted(markers):
    sub = markers.subscribe()
    with neighbour(markers, "udp") as sent:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"", (HOST, markers.port))
            u.sendto(b"\n", (HOST, markers.port))
            u.sendto(b"\r\n\nbetween\n\n", (HOST, markers.port))
        with socket.create_connection((HOST, markers.port)) as s:
            s.sendall(b"\n\r\n\ntcp between\n")
        sub.wait_labels(["between", "tcp between"])
    assert_neighbour_intact(sub, sent, markers)
    counts = markers.counts()
    assert counts["empty_datagrams"] == 1 and counts["empty_lines"] == 7
    assert not any(m.label in ("", "\r") for m in sub.markers)


def test_silent_connections_block_nobody_and_are_closed(start_markers):
    svc = start_markers("--idle-timeout", "0.5")
    sub = svc.subscribe()
    with neighbour(svc) as sent:
        silent = socket.create_connection((HOST, svc.port))
        partial = socket.create_connection((HOST, svc.port))
        partial.sendall(b"never finished")
        for s in (silent, partial):
            s.settimeout(5)
            assert s.recv(1) == b""  # the service closed it
            s.close()
        sub.wait_labels(["good-5"])
    assert_neighbour_intact(sub, sent, svc)
    counts = svc.counts()
    assert counts["connections_idle_closed"] == 2 and counts["partial_lines_dropped"] == 1
    assert not any(m.label == "never finished" for m in sub.markers)
    assert "without data" in svc.log()


def test_connection_flood_is_refused_beyond_the_limit(start_markers):
    svc = start_markers("--max-connections", "8")
    sub = svc.subscribe()
    with neighbour(svc) as sent:  # its connection is accepted before the flood
        flood = [socket.create_connection((HOST, svc.port)) for _ in range(40)]
        closed = 0
        for s in flood[7:]:
            s.settimeout(5)
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
        assert closed == 33
        sub.wait_for(lambda: svc.status()["connections"] == 8, 5, "8 connections")
        for s in flood:
            s.close()
        sub.wait_for(lambda: svc.status()["connections"] == 1, 5, "flood connections closed")
    assert_neighbour_intact(sub, sent, svc)
    counts = svc.counts()
    assert counts["connections_refused"] == 33 and counts["connections_accepted"] >= 9
    assert "limit" in svc.log()


def test_bad_zmq_messages_and_control_requests(markers):
    sub = markers.subscribe()
    push = CTX.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(markers.ingress)
    with neighbour(markers) as sent:
        push.send_multipart([b"two", b"frames"])
        push.send(msgpack.packb({"t_ns": 5}))
        push.send(msgpack.packb({"label": "x", "t_ns": "soon"}))
        push.send(msgpack.packb({"label": "y" * (MAX_LABEL_LENGTH + 1)}))
        push.send(b"")
        push.send(b"zmq ok")
        dealer = CTX.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(markers.control)
        for body in (b"not msgpack", encode_request("nosuch"), encode_request("history", session=1, bogus=2)):
            dealer.send_multipart([b"", body])
            assert dealer.poll(5000)
            assert b"ok" in dealer.recv_multipart()[1]
        dealer.close()
        sub.wait_labels(["zmq ok"])
    push.close()
    assert_neighbour_intact(sub, sent, markers)
    counts = markers.counts()
    assert counts["bad_zmq_messages"] == 3 and counts["too_long"] == 1 and counts["empty_lines"] == 1
    assert counts["bad_requests"] == 3 and counts["zmq_markers"] == 1

"""Live fuzzing: random, truncated, oversize and mistyped input at every socket of running services.

Real amp, markers and recorder processes; a well-behaved client reads
samples with ``get_data()`` and sends markers while a seeded fuzzer throws
at the amp, markers and recorder control sockets (ROUTER), the markers'
ZeroMQ ingress (PULL), its publisher (XPUB, from an XSUB), and its TCP and
UDP port (from 127.0.0.2, so the rate limit applies). Afterwards every
service is alive and answers, the client saw every sample and every marker
it sent exactly once, no service grew by more than ``RSS_BOUND``, and the
bad input shows in the services' counters.

``MUSHU_FUZZ_INPUTS`` (rounds; each round sends one input to every target,
default 2500, about 15 s) and ``MUSHU_FUZZ_SEED`` scale and vary the run.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time

import msgpack
import numpy as np
import zmq

import mushu_client
from mushu_amp.drivers.rampamp import ramp
from mushu_client import MarkerSender
from mushu_core.control import ControlClient
from mushu_core.wire import PROTOCOL_VERSION

ROUNDS = int(os.environ.get("MUSHU_FUZZ_INPUTS", "2500"))
SEED = int(os.environ.get("MUSHU_FUZZ_SEED", "8"))
OVERSIZE = 8 << 20  # MAX_REQUEST_BYTES: over MAX_HEADER_BYTES (4 MiB) and the ZeroMQ ingress's 1 MiB limit
RSS_BOUND = 8 << 20
FS, CHANNELS = 1000, 8
ROGUE = "127.0.0.2"  # the fuzzer's TCP/UDP source address; the client sends from 127.0.0.1
PING_EVERY = 50

#: Commands of each service, and those that change state: these always get
#: an argument they do not take, so they are refused and the client's run goes on.
COMMANDS = {
    "amp": (["ping", "amps", "channels", "fs", "presets", "status", "time", "history"],
            {"use": ["amp"], "configure": ["kwargs"], "start": [], "stop": []}),
    "markers": (["ping", "status", "time", "history"], {}),
    "recorder": (["ping", "status", "time", "check"],
                 {"record": ["name", "session", "first_sample", "markers_session", "lease_s", "client"],
                  "renew": ["token"], "finish": ["end_sample", "token", "session"], "stop": ["name"]}),
}
READ_ARGS = {"history": ["session", "from_sample", "from_seq"], "check": ["name"]}


def rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def garbage(rng: random.Random, depth: int = 0):
    """A random msgpack-able value of the kinds decoders trip over."""
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return rng.choice([2**64 - 1, -(2**63), 2**63, -1, 0, 1.5, float("nan"), float("inf"), True, None])
    if kind == 1:
        return rng.randbytes(rng.randrange(40))
    if kind == 2:  # any code points (a lone surrogate cannot be packed: it becomes "?")
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(20))).encode(
            "utf-8", "replace").decode()
    if kind == 3:
        return "x" * rng.choice([0, 1, 1025, 70_000])
    if kind in (4, 5, 6):
        return rng.randrange(-(2**63), 2**64)
    if kind == 7:
        return [garbage(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 8:
        return {f"k{i}": garbage(rng, depth + 1) for i in range(rng.randrange(4))}
    return {"version": PROTOCOL_VERSION, "cmd": garbage(rng, depth + 1)}


def nested(depth: int) -> bytes:
    """A msgpack map ``{"cmd": [[[...nil...]]]}`` nested ``depth`` lists deep."""
    return b"\x81\xa3cmd" + b"\x91" * depth + b"\xc0"


class Fuzzer:
    """Sends one random input per target per round and counts what it sent."""

    def __init__(self, rng: random.Random, services: dict, markers_port: int, ingress: str, markers_data: str):
        self.rng = rng
        self.ctx = zmq.Context()
        self.big = rng.randbytes(OVERSIZE)
        self.sessions: dict[str, str] = {}
        self.dealers = {}
        for name, endpoint in services.items():
            d = self.ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.setsockopt(zmq.SNDTIMEO, 1000)
            d.connect(endpoint)
            self.dealers[name] = d
        self.push = self._socket(zmq.PUSH, ingress)
        self.xsub_endpoint = markers_data
        self.xsub = self._socket(zmq.XSUB, markers_data)
        self.port = markers_port
        self.half_open: list[socket.socket] = []
        self.sent = {f"{name} control": 0 for name in services} | {
            "markers ingress": 0, "markers xpub": 0, "markers tcp": 0, "markers udp": 0}
        self.replies = 0
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((ROGUE, 0))

    def _socket(self, kind, endpoint):
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDTIMEO, 200)
        s.connect(endpoint)
        return s

    def round(self, i: int):
        for name in self.dealers:
            self._send(self.dealers[name], self.control_input(name, i), f"{name} control")
        self._send(self.push, self.ingress_input(i), "markers ingress")
        if i % 200 == 199:  # ZeroMQ keeps a connection's subscriptions, good or bad, until it closes
            self.xsub.close()
            self.xsub = self._socket(zmq.XSUB, self.xsub_endpoint)
        self._send(self.xsub, [self.rng.choice([b"\x01", b"\x00", b"", b"\x02"]) + self.rng.randbytes(
            self.rng.randrange(30))], "markers xpub")
        self.tcp_input(i)
        self.udp.sendto(self.rng.randbytes(self.rng.choice([0, 1, 10, 100, 1400, 65000])), ("127.0.0.1", self.port))
        self.sent["markers udp"] += 1
        for d in self.dealers.values():  # keep the replies from piling up
            while d.poll(0):
                d.recv_multipart()
                self.replies += 1

    def _send(self, sock, frames, target):
        try:
            sock.send_multipart(frames)
        except zmq.Again:  # e.g. the ingress dropped this peer after an oversize message: it reconnects
            pass
        self.sent[target] += 1

    def control_input(self, service: str, i: int) -> list[bytes]:
        rng = self.rng
        kind = 0 if i % 60 == 1 else rng.randrange(1, 9)
        if kind == 0:
            return [b"", rng.choice([self.big, b"\xdf\xff\xff\xff\xff" + self.big])]
        if kind == 1:
            return [b"", *(rng.randbytes(rng.randrange(64)) for _ in range(rng.randrange(1, 3)))]
        if kind == 2:  # truncated multiparts: the delimiter alone, a missing one, or five frames
            return rng.choice([[b""], [rng.randbytes(8)], [b"", b"", b"", b"", b""],
                               [rng.randbytes(3) for _ in range(5)]])
        if kind == 3:
            return [b"", msgpack.packb(garbage(rng))]
        if kind == 4:
            return [b"", nested(rng.choice([40, 200, 5000]))]
        read, write = COMMANDS[service]
        cmd = rng.choice(read + list(write))
        args = {p: garbage(rng) for p in write.get(cmd, READ_ARGS.get(cmd, [])) if rng.random() < 0.8}
        if "session" in args and rng.random() < 0.5 and service in self.sessions:
            args["session"] = self.sessions[service]  # the real session, garbage elsewhere
        if cmd in write or rng.random() < 0.2:
            args["fuzz"] = garbage(rng)
        body = {"version": PROTOCOL_VERSION, "cmd": cmd, **args}
        if rng.random() < 0.2:
            body["id"] = garbage(rng)
        return [b"", msgpack.packb(body)]

    def ingress_input(self, i: int) -> list[bytes]:
        rng = self.rng
        kind = 0 if i % 60 == 2 else rng.randrange(1, 6)
        if kind == 0:
            return [self.big]
        if kind == 1:
            return [rng.randbytes(rng.randrange(100))]
        if kind == 2:
            return [rng.randbytes(8) for _ in range(rng.randrange(2, 6))]
        if kind == 3:
            return [msgpack.packb({"label": garbage(rng), "t_ns": garbage(rng)})]
        if kind == 4:
            return [msgpack.packb(garbage(rng))]
        return [nested(rng.choice([10, 300]))]

    def tcp_input(self, i: int):
        rng = self.rng
        kind = rng.randrange(5)
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((ROGUE, 0))
            s.settimeout(2)
            s.connect(("127.0.0.1", self.port))
            if kind == 0:  # junk with newlines now and then
                s.sendall(rng.randbytes(rng.choice([10, 1000, 20_000])))
            elif kind == 1:  # binary junk without a newline
                s.sendall(rng.randbytes(rng.choice([5000, 300_000])).replace(b"\n", b"N"))
            elif kind == 2:  # half-open: part of a line, then silence
                s.sendall(b"never ends " + rng.randbytes(rng.randrange(50)).replace(b"\n", b""))
                self.half_open.append(s)
                if len(self.half_open) > 70:  # a few more than the per-sender limit of 64
                    self.half_open.pop(0).close()
                self.sent["markers tcp"] += 1
                return
            elif kind == 3:  # half-closed: shut the write side, keep the socket
                s.sendall(b"half closed\n")
                s.shutdown(socket.SHUT_WR)
            else:  # reset in the middle of a line
                s.sendall(b"reset in the mid")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        except OSError:  # refused at accept (connection limit) or reset: that is the service's choice
            pass
        self.sent["markers tcp"] += 1

    def close(self):
        for s in self.half_open:
            s.close()
        self.udp.close()
        self.ctx.destroy(linger=0)


def test_fuzzing_every_socket_leaves_services_and_a_good_client_unharmed(spawn_amp, spawn_markers, spawn_recorder):
    # glibc's malloc raises its mmap threshold after a large buffer is freed, and then keeps later large
    # buffers (the fuzzer's oversized frames) in the heap when they are freed, where RSS counts them as
    # growth; a fixed threshold returns each to the kernel, so what RSS shows grow is what is still held.
    malloc = {"MALLOC_MMAP_THRESHOLD_": str(128 << 10)}
    amp_svc = spawn_amp("--history-mb", "0.1", env=malloc)  # history full before the warm-up: not a leak
    mk = spawn_markers("--rate", "200", "--burst", "200", "--rate-exempt", "127.0.0.1/32", "--history-mb", "0.5",
                       env=malloc)
    rec = spawn_recorder(amp_svc, mk, env=malloc)
    procs = {"amp": amp_svc.proc, "markers": mk.proc, "recorder": rec.proc}
    controls = {"amp": amp_svc.control, "markers": mk.control, "recorder": rec.control}
    amp = mushu_client.get_amp("rampamp", data=amp_svc.data, control=amp_svc.control, markers=mk.data,
                               markers_control=mk.control)
    amp.configure(fs=FS, channels=CHANNELS)
    amp.start()
    fuzzer = Fuzzer(random.Random(SEED), controls, mk.port, mk.ingress, mk.data)
    fuzzer.sessions = {"amp": amp_svc.ctl().call("status")["session"], "markers": mk.ctl().call("ping")["session"]}
    # generous on a loaded machine: the amp's "amps" probes hardware for a third of a second a request
    pingers = {name: ControlClient(ep, 10.0, name) for name, ep in controls.items()}
    rss0, errors = {}, []

    def fuzz():
        try:
            for i in range(ROUNDS):
                fuzzer.round(i)
                if i == ROUNDS // 5:
                    rss0.update({name: rss(p.pid) for name, p in procs.items()})
                if i % PING_EVERY == 0:  # no hang: every service still answers within 10 s
                    for c in pingers.values():
                        c.call("ping")
        except Exception as exc:  # reported by the test thread
            errors.append(exc)

    t0 = time.monotonic()
    thread = threading.Thread(target=fuzz, daemon=True)
    thread.start()
    chunks, got, sent = [], [], []
    with MarkerSender("127.0.0.1", mk.port) as sender:
        next_marker = time.monotonic()
        while thread.is_alive() or len(got) < len(sent):
            assert time.monotonic() - t0 < 60 + ROUNDS * 0.05, "the fuzz run did not finish"
            if thread.is_alive() and time.monotonic() >= next_marker:
                sender.send(f"good-{len(sent)}")
                sent.append(f"good-{len(sent)}")
                next_marker += 0.02
            data, markers = amp.get_data()
            chunks.append(data)
            got += [label for _ms, label in markers if label.startswith("good-")]
    duration = time.monotonic() - t0
    thread.join()
    amp.stop()
    while len(data := amp.get_data()[0]):
        chunks.append(data)
    fuzzer.close()
    assert not errors, errors

    crashes = sum(p.poll() is not None for p in procs.values())
    rss1 = {name: rss(p.pid) for name, p in procs.items()} if not crashes else {}
    print(f"\nlive fuzz, seed {SEED}, {ROUNDS} rounds in {duration:.1f} s: inputs "
          + ", ".join(f"{k} {v}" for k, v in fuzzer.sent.items())
          + f" (total {sum(fuzzer.sent.values())}); control replies {fuzzer.replies}; crashes {crashes}; "
          + "RSS growth " + ", ".join(f"{k} {(rss1[k] - rss0[k]) / 2**20:+.1f} MiB" for k in rss1))
    assert crashes == 0
    for name, c in pingers.items():
        assert c.call("ping")["service"] == name
        c.close()
    for name in procs:
        assert rss1[name] - rss0[name] < RSS_BOUND, (name, rss1[name] - rss0[name])

    data = np.concatenate(chunks)
    np.testing.assert_array_equal(data, ramp(0, len(data), CHANNELS))  # every sample, in order, no gap
    assert len(data) >= FS * duration * 0.5 and amp.gaps == [] and amp.bad_messages == 0
    assert sorted(got, key=lambda s: int(s[5:])) == sent  # every marker exactly once
    amp.close()

    st = {name: ControlClient(ep, 3.0, name).call("status") for name, ep in controls.items()}
    for name in ("amp", "recorder"):
        assert st[name]["malformed_requests"] > 0 and st[name]["refused_requests"] > 0, st[name]
    counts = st["markers"]["counts"]
    for counter in ("bad_requests", "bad_zmq_messages", "too_long", "invalid_utf8", "rate_limited",
                    "connections_refused_sender", "empty_datagrams", "bad_subscriptions"):
        assert counts[counter] > 0, (counter, counts)

"""Benchmark of the mushu amp service and its client (not a test).

Usage::

    python bench/amp_bench.py            # full, about 8 minutes
    python bench/amp_bench.py --short    # about a minute
    python bench/amp_bench.py --short --json results.json

The amp service runs as users run it: one long-lived process per block
period (``sys.executable -m mushu_amp --amp rampamp --block-ms ...`` on free
loopback TCP ports), started once per bench invocation, 1 ms blocks for the
latency and CPU runs and ``--block-ms`` (10 ms) for the throughput runs.
Every run is a client session of it: ``configure(fs=..., channels=64)``,
``start()``, ``get_data()``, ``stop()``, close; CPU figures are the
service's CPU time over the run's window (:class:`Meter`). After every run
the bench checks that the service is still the process it started (alive,
and ``status`` answers with its pid); one that exited, stopped answering or
did not end with status 0 on SIGTERM at the end is a bench failure
(:class:`ServiceFailed`, exit status 2), never restarted.

What it measures (64 channels):

1. **Latency** at 1 kHz in 1 ms blocks: for every block, the time from its
   first sample's acquisition (header ``t_ns``, the service's monotonic
   clock, which is this host's) to the moment ``Amp.get_data()`` returns
   it. ``get_data`` returns only arrays, so the bench counts samples (the
   session starts at sample 0 with ``start()``) and learns each block's
   ``first_sample -> t_ns`` from a second, raw SUB socket on the same data
   topic. That socket only stores the raw header frames during the run
   (they are decoded afterwards): one small ``recv`` per block in the
   consumer loop. Blocks of the first ``WARMUP_S`` after ``start()`` are
   reported apart (start-up maximum). Short mode: one 5 s run; full: three
   30 s runs (medians of the per-run p50/p99/max). The same again with the
   client's clock probes of the (absent) markers service turned off, to show
   what the amp service and the transport add (see ``latency_run``).
2. **Amp CPU** at 1 kHz in 1 ms blocks: user + system CPU time of the
   service process (all its threads, psutil) while one client consumes with
   ``get_data`` alone, as % of one core. For scale, the same figure for a
   bare pyzmq publisher paced the same way (``FLOOR_SCRIPT``): the floor of
   any Python thread that wakes every millisecond and sends over libzmq TCP.
3. **Highest lossless throughput** in samples/s counted as channel values
   (``n_samples * n_channels``, the LSL convention): a ladder of sampling
   rates (``LADDER_FS``, 10 ms blocks), then a bisection between the last
   pass and the first failure. A run is *lossless* when every value returned
   by ``get_data`` equals ``ramp()`` (vectorised check), no sample is lost,
   repeated or reordered (running sample count, ``amp.lost_samples == 0``,
   no ``GapWarning``, the total equals the service's ``next_sample`` after
   ``stop()``); it *kept up* when the consumer's lag behind the clock stayed
   under ``MAX_LAG_S`` for the whole window; it *passes* when both hold. The
   consumer's cost (CPU per value, and the verification's share) is
   reported too.

``run()`` returns every figure in a dict (and the printed table under
``"table"``); ``tests/test_bench_smoke.py`` calls it in a reduced form.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import psutil
import zmq

from mushu_amp.drivers.rampamp import ramp
from mushu_client import GapWarning, get_amp
from mushu_core.control import ControlClient, wait_for
from mushu_core.errors import ServiceUnavailable
from mushu_core.wire import DATA, data_topic, decode_block_header, info_topic

# tests/support.py: helpers the tests and the benches share (not installed with mushu)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from support import free_port  # noqa: E402

CHANNELS = 64
#: Sampling rates (Hz, 64 channels) of the throughput ladder; the last pass
#: and the first failure are then bisected.
LADDER_FS = (100_000, 200_000, 400_000, 800_000, 1_600_000, 3_200_000, 6_400_000)
#: A throughput run fails (consumer did not keep up) when its lag behind the
#: clock exceeds this many seconds; the run is cut short past ABORT_LAG_S.
MAX_LAG_S = 0.25
ABORT_LAG_S = 1.0


# ---------------------------------------------------------------------------
# machine and service


def machine() -> dict:
    model = "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return {
        "load_avg": os.getloadavg(),
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "numpy": np.__version__,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def end_process(proc: subprocess.Popen, timeout: float = 10.0, terminate: bool = True):
    """End ``proc``: SIGTERM (unless ``terminate`` is False: it is ending by itself), then SIGKILL after ``timeout`` s."""
    if proc.poll() is not None:
        return
    if terminate:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def exit_description(code: int) -> str:
    """A process's exit status in words: ``status 2``, or ``signal SIGSEGV`` for -11."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


class ServiceFailed(RuntimeError):
    """A long-lived amp service of the bench exited, stopped answering, or is not the process the bench started.

    The bench never starts another in its place: every run after it would
    measure a fresh process and the failure would go unseen.
    """


def fail_loudly(exc: ServiceFailed) -> int:
    """Print ``exc`` as the bench's failure, framed, on stderr; the bench's exit status for it (2)."""
    rule = "=" * 78
    print(f"\n{rule}\nBENCH FAILED: {exc}\n{rule}", file=sys.stderr, flush=True)
    return 2


#: Seconds a long-lived service has to answer ``status`` after a run.
STATUS_TIMEOUT_S = 10.0


class _EndsOnExit:
    """``with`` calls ``close()`` at the end, with its checks unless a KeyboardInterrupt ends the block
    (the terminal's SIGINT reaches the services too)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.close(check=exc_type is None or not issubclass(exc_type, KeyboardInterrupt))


class Service(_EndsOnExit):
    """One amp service process (``rampamp`` selected) on free loopback ports, for many runs.

    A lab keeps its amp service running and reconfigures it from its clients;
    so does the bench. Each run is a :meth:`client` session that configures
    the service (``configure(fs=..., channels=...)``), starts, stops and
    closes; after it :meth:`check` makes sure the service is still the process
    started here. Only the block period and ``extra`` arguments are the
    service's for life.

    Parameters
    ----------
    block_ms : float
        The service's block period (``--block-ms``).
    extra : sequence of str
        More ``mushu_amp`` arguments.
    """

    def __init__(self, block_ms: float = 1.0, extra=()):
        self.block_ms = block_ms
        self.data = f"tcp://127.0.0.1:{free_port()}"
        self.control = f"tcp://127.0.0.1:{free_port()}"
        self.log = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "mushu_amp", "--data", self.data, "--control", self.control,
               "--amp", "rampamp", "--block-ms", str(block_ms), "--log-level", "WARNING", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        self.pid = self.proc.pid
        self.ps = psutil.Process(self.pid)
        #: Client sessions (runs) begun, and what the last one was, for the failure's message.
        self.runs, self.last = 0, None
        self.failed = False
        self._ctl = ControlClient(self.control, STATUS_TIMEOUT_S, "amp")

    def ready(self, timeout: float = 15.0) -> "Service":
        """Wait until the service answers; ServiceFailed if it exits or stays silent ``timeout`` s."""
        try:
            wait_for(self.control, "amp", timeout, self.proc)
        except (RuntimeError, ServiceUnavailable) as exc:
            raise self._failed(f"did not start ({exc})") from None
        return self

    @contextlib.contextmanager
    def client(self, fs: float, channels: int = CHANNELS, **kwargs):
        """A client session for one run: an :class:`Amp` with the service configured to ``fs`` x ``channels``.

        ``kwargs`` go to ``get_amp`` (control replies within 10 s unless
        ``timeout`` says otherwise). The client is closed afterwards and the
        service checked (:meth:`check`), whether the run went well or not.
        """
        self.runs += 1
        self.last = f"run {self.runs} ({fs:,.0f} Hz x {channels})"
        amp, interrupted = None, False
        try:
            amp = get_amp("rampamp", data=self.data, control=self.control, **{"timeout": 10.0, **kwargs})
            amp.stop()  # idle already, unless a run cut short by an error left it running
            amp.configure(fs=fs, channels=channels)
            yield amp
        except KeyboardInterrupt:
            interrupted = True  # the service had the terminal's SIGINT too: its exit is no failure
            raise
        finally:
            if amp is not None:
                amp.close()
            if not interrupted:
                self.check()

    def check(self):
        """Raise :class:`ServiceFailed` unless the service is alive and answers ``status`` with its pid."""
        if self.proc.poll() is None:
            try:
                pid = self._ctl.call("status")["pid"]
            except ServiceUnavailable as exc:
                if self.proc.poll() is None:
                    raise self._failed(f"is alive but did not answer status: {exc}") from None
            else:
                if pid == self.pid:
                    return
                raise self._failed(f"is alive, but pid {pid} answered status on its control endpoint")
        raise self._failed(f"exited with {exit_description(self.proc.returncode)}")

    def _failed(self, what: str) -> ServiceFailed:
        self.failed = True
        when = f"by the end of {self.last}" if self.last else "before its first run"
        tail = self.stderr().strip()
        return ServiceFailed(f"the long-lived amp service for {self.block_ms:g} ms blocks (pid {self.pid}) {what}, "
                             f"{when}; the bench does not start another. "
                             + (f"Its stderr ends:\n{tail}" if tail else "Its stderr is empty."))

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def close(self, check: bool = True):
        """End the service (SIGTERM); with ``check``, ServiceFailed if it had exited already or did not end with 0."""
        early = self.proc.poll()
        end_process(self.proc, 5)
        self._ctl.close()
        try:
            if check and not self.failed and early is not None:
                raise self._failed(f"had exited with {exit_description(early)} before the bench ended it")
            if check and not self.failed and self.proc.returncode != 0:
                raise self._failed(f"ended with {exit_description(self.proc.returncode)} on SIGTERM "
                                   "(0 expected; it is killed if it has not ended within 5 s)")
        finally:
            self.log.close()


class Services(_EndsOnExit):
    """The bench's long-lived amp services: one per block period (a service option), each started at first use.

    Parameters
    ----------
    extra : callable, optional
        ``extra(block_ms)``: more ``mushu_amp`` arguments for that service.
    """

    def __init__(self, extra=None):
        self.extra = extra or (lambda _block_ms: ())
        self.by_block: dict[float, Service] = {}

    def __call__(self, block_ms: float) -> Service:
        """The service for ``block_ms``, started and answering."""
        if block_ms not in self.by_block:
            # kept before it is ready: close() ends it should ready() fail
            self.by_block[block_ms] = Service(block_ms, self.extra(block_ms))
            self.by_block[block_ms].ready()
        return self.by_block[block_ms]

    def summary(self) -> list[dict]:
        """Each service's block period, pid, runs served and exit status (None while it runs)."""
        return [{"block_ms": s.block_ms, "pid": s.pid, "runs": s.runs, "exit_status": s.proc.returncode}
                for s in self.by_block.values()]

    def describe(self) -> str:
        """One line for a bench's table: the services, their runs and how they ended."""
        def ended(code):
            return "running" if code is None else f"ended with {exit_description(code)}"

        each = "; ".join(f"{s.block_ms:g} ms blocks: pid {s.pid}, {s.runs} run{'s' * (s.runs != 1)}, "
                         f"{ended(s.proc.returncode)}" for s in self.by_block.values())
        return (f"amp services: one long-lived process per block period, reconfigured by each run and the same "
                f"process after every run ({each})")

    def close(self, check: bool = True):
        """End every service; ServiceFailed (after ending all) if one had exited or did not end with 0."""
        failures = []
        for svc in self.by_block.values():
            try:
                svc.close(check)
            except ServiceFailed as exc:
                failures.append(str(exc))
        if failures:
            raise ServiceFailed("\n".join(failures))


class Meter:
    """CPU time over a window: the service's, this (consumer) process's, and the
    rest of the machine's (other processes: they share the two cores)."""

    def __init__(self, svc: Service | None = None):
        self.ps = svc.ps if svc is not None else None
        self.start = self._read()

    def _read(self):
        m = psutil.cpu_times()
        busy = m.user + m.nice + m.system + getattr(m, "irq", 0) + getattr(m, "softirq", 0)
        s = self.ps.cpu_times() if self.ps is not None else None
        return (time.monotonic(), s.user + s.system if s else 0.0, time.process_time(), busy,
                getattr(m, "steal", 0.0))

    def stop(self) -> dict:
        wall, svc, own, busy, steal = (b - a for a, b in zip(self.start, self._read()))
        return {"duration_s": wall, "amp_cpu_pct": 100 * svc / wall, "consumer_cpu_pct": 100 * own / wall,
                "others_cpu_pct": 100 * max(0.0, busy - svc - own) / wall, "steal_pct": 100 * steal / wall}


def _wait_for_info(sub, timeout: float = 3.0) -> bool:
    """Receive until a stream-info message shows the subscription is live."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if sub.poll(remaining * 1000) and sub.recv_multipart()[0].startswith(b"info/"):
            return True
    return False


#: Rows verified per ramp() call: bounded temporaries stay in cache and are
#: reused by the allocator, so a large get_data return costs no more per value.
CHECK_ROWS = 4096


def exact(data: np.ndarray, k0: int, channels: int = CHANNELS) -> bool:
    """True if ``data`` is exactly samples ``k0 ..`` of the ``channels``-channel ramp."""
    if data.ndim != 2 or data.shape[1] != channels:
        return False
    return all(np.array_equal(data[i:i + CHECK_ROWS], ramp(k0 + i, len(data[i:i + CHECK_ROWS]), channels))
               for i in range(0, len(data), CHECK_ROWS))


def _check(chunks: list, k0: int = 0) -> tuple[int, bool]:
    """Verify consecutive chunks against ramp() from sample k0; (samples, all exact)."""
    k, ok = k0, True
    for d in chunks:
        ok = ok and exact(d, k)
        k += d.shape[0]
    return k - k0, ok


# ---------------------------------------------------------------------------
# 1 + 2: latency and amp CPU at 64 x 1 kHz in 1 ms blocks

#: Block period of the latency and CPU runs (their service's ``--block-ms``).
LATENCY_BLOCK_MS = 1.0

#: Blocks acquired in the first WARMUP_S after start() are reported apart
#: (``startup_max_us``): the client's first get_data calls include one-off
#: costs (clock-offset probes of the services) that are not steady state.
WARMUP_S = 0.5


def latency_run(svc: Service, duration: float, fs: float = 1000, keep: bool = False,
                markers_probe: bool = True) -> dict:
    """One latency run of WARMUP_S + ``duration`` seconds on ``svc``; latencies in
    microseconds over the blocks after the warm-up, CPU in % of one core.

    With ``keep``, the result also holds every block's latency (``"latency_us"``,
    warm-up included, in block order) and when it was returned (``"returned_s"``,
    from the first return).

    ``markers_probe=False`` is a diagnostic variant: it turns off the client's
    clock-offset probes of the markers service (``Amp.markers_clock``), which
    no bench service answers. Until commit 14b4d53 the client probed an absent
    markers service too, each probe waiting out its 0.2 s timeout inside
    ``get_data`` every 10 s, which dominated the tail latency; the variant
    keeps showing what the amp service and the transport add should such a
    stall come back.
    """
    with svc.client(fs) as amp:
        if not markers_probe and getattr(amp, "markers_clock", None) is not None:
            amp.markers_clock.update = lambda: False
        ctx = zmq.Context.instance()
        side = ctx.socket(zmq.SUB)
        side.setsockopt(zmq.LINGER, 0)
        side.setsockopt(zmq.RCVHWM, 0)
        side.connect(svc.data)
        side.setsockopt(zmq.SUBSCRIBE, data_topic(amp.stream))
        side.setsockopt(zmq.SUBSCRIBE, info_topic(amp.stream))
        try:
            if not _wait_for_info(side):
                raise RuntimeError("side subscriber saw no stream info within 3 s")
            headers, returned, chunks = [], [], []
            side_recv, again = side.recv_multipart, zmq.Again
            k = 0
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", GapWarning)
                amp.start()
                meter = Meter(svc)
                end = time.monotonic() + WARMUP_S + duration
                while True:
                    data, _markers = amp.get_data()
                    t_ret = time.monotonic_ns()
                    if len(data):
                        returned.append((k, len(data), t_ret))
                        chunks.append(data)
                        k += len(data)
                    with contextlib.suppress(again):
                        while True:  # keep only the header bytes: not tracked by the GC
                            frames = side_recv(zmq.NOBLOCK)
                            if frames[0].startswith(DATA):
                                headers.append(frames[1])
                    if time.monotonic() >= end:
                        break
                cpu = meter.stop()
                amp.stop()
                while len(data := amp.get_data()[0]):  # the rest, up to stop(): not timed
                    chunks.append(data)
                    k += len(data)
            total = amp.status()["next_sample"]
            # every header up to the end of the session
            firsts, t_ns = _block_times(headers, side, total)
        finally:
            side.close(linger=0)
    n_checked, all_exact = _check(chunks)
    lat, acquired = [], []
    for k0, n, t_ret in returned:
        lo, hi = np.searchsorted(firsts, [k0, k0 + n])
        lat.append(t_ret - t_ns[lo:hi])
        acquired.append(t_ns[lo:hi])
    lat_us = np.concatenate(lat) / 1e3 if lat else np.empty(0)
    acquired = np.concatenate(acquired) if acquired else np.empty(0, np.int64)
    steady = acquired >= (t_ns[0] if len(t_ns) else 0) + WARMUP_S * 1e9
    n_in_returned = sum(n for _k, n, _t in returned)
    mapped = int(np.searchsorted(firsts, n_in_returned))  # blocks starting in the timed part
    stat = lambda f, x: float(f(x)) if x.size else float("nan")  # noqa: E731
    return {
        **cpu,
        "blocks": int(steady.sum()),
        "startup_blocks": int((~steady).sum()),
        "blocks_unmapped": max(0, mapped - int(lat_us.size)),
        "get_data_calls_with_data": len(returned),
        "p50_us": stat(lambda x: np.percentile(x, 50), lat_us[steady]),
        "p99_us": stat(lambda x: np.percentile(x, 99), lat_us[steady]),
        "max_us": stat(np.max, lat_us[steady]),
        "startup_max_us": stat(np.max, lat_us[~steady]),
        "lossless": bool(all_exact and n_checked == total and amp.lost_samples == 0 and not caught),
        "samples": n_checked,
        **({"latency_us": lat_us, "returned_s": np.concatenate(
            [np.full(len(x), (t_ret - returned[0][2]) / 1e9) for x, (_k, _n, t_ret) in zip(lat, returned)])}
           if keep and lat else {}),
    }


def _block_times(headers: list, side, total: int, timeout: float = 3.0):
    """Sorted first_sample and t_ns of the session's blocks, from raw header frames
    and, for the last blocks, from the side SUB."""
    seen = {}
    session = None
    covered = 0

    def take(header_frame):
        nonlocal session, covered
        h = decode_block_header(header_frame)
        if session is None:
            session = h.session
        if h.session == session and h.first_sample not in seen:
            seen[h.first_sample] = h.t_ns
            covered += h.n_samples

    for frame in headers:
        take(frame)
    deadline = time.monotonic() + timeout
    while covered < total and side.poll(max(0.0, deadline - time.monotonic()) * 1000):
        frames = side.recv_multipart()
        if frames[0].startswith(DATA):
            take(frames[1])
    firsts = np.array(sorted(seen), dtype=np.int64)
    t_ns = np.array([seen[f] for f in firsts], dtype=np.int64)
    return firsts, t_ns


def cpu_run(svc: Service, duration: float, fs: float = 1000) -> dict:
    """Amp service CPU (% of one core) while one client consumes ``svc`` with get_data alone."""
    with svc.client(fs) as amp:
        amp.start()
        settle = time.monotonic() + 0.5
        while time.monotonic() < settle:
            amp.get_data()
        meter, end, n = Meter(svc), time.monotonic() + duration, 0
        while time.monotonic() < end:
            n += len(amp.get_data()[0])
        cpu = meter.stop()
        amp.stop()
    return {**cpu, "samples": n}


#: A bare pyzmq publisher paced like the amp service: the same sleep per
#: period and, in "send" mode, one pre-encoded 3-frame message of a 64 x 1
#: block's size per period. Its CPU is the floor of any Python service that
#: wakes once per 1 ms block and sends with libzmq over TCP.
FLOOR_SCRIPT = """
import sys, time, zmq
mode, endpoint, period = sys.argv[1], sys.argv[2], int(sys.argv[3])
pub = zmq.Context().socket(zmq.PUB)
pub.bind(endpoint)
topic, header, payload = b"data/eeg/", bytes(230), bytes(256)
nxt = time.monotonic_ns()
while True:
    if mode == "send":
        pub.send(topic, zmq.SNDMORE)
        pub.send(header, zmq.SNDMORE)
        pub.send(payload)
    nxt += period
    now = time.monotonic_ns()
    if nxt > now:
        time.sleep((nxt - now) / 1e9)
"""


def floor_run(duration: float, mode: str = "send", period_ns: int = 1_000_000) -> dict:
    """CPU (% of one core) of FLOOR_SCRIPT while a raw SUB here drains it."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_SCRIPT, mode, endpoint, str(period_ns)])
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        ps = psutil.Process(proc.pid)
        if mode == "send" and not sub.poll(10_000):
            raise RuntimeError("the floor publisher sent nothing within 10 s")
        time.sleep(0.5)
        cpu = lambda: sum(ps.cpu_times()[:2])  # noqa: E731
        c0, t0, n = cpu(), time.monotonic(), 0
        while (left := t0 + duration - time.monotonic()) > 0:
            if sub.poll(left * 1000):
                sub.recv_multipart()
                n += 1
        c1, t1 = cpu(), time.monotonic()
    finally:
        sub.close(linger=0)
        end_process(proc)
    return {"mode": mode, "messages": n, "cpu_pct": 100 * (c1 - c0) / (t1 - t0)}


# ---------------------------------------------------------------------------
# 3: lossless throughput


def throughput_run(svc: Service, fs: float, duration: float) -> dict:
    """Consume ``fs`` x 64 channels of ``svc`` for ``duration`` s, verifying every value."""
    with svc.client(fs) as amp:
        amp.timeout = 2.0
        k, ok, max_lag, aborted = 0, True, 0.0, False
        t_get = t_check = 0.0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GapWarning)
            amp.start()
            # The service starts sample 0 just before it answers start():
            # from here, fs samples a second are due (the error is the
            # reply's latency, well under a millisecond).
            t_start = time.monotonic()
            meter = Meter(svc)
            t0 = time.monotonic()
            end = t0 + duration
            while True:
                a = time.perf_counter()
                data, _markers = amp.get_data()
                b = time.perf_counter()
                n = len(data)
                if n:
                    ok = ok and exact(data, k)
                    k += n
                c = time.perf_counter()
                t_get += b - a
                t_check += c - b
                now = time.monotonic()
                lag = (now - t_start) - k / fs  # seconds of data due but not yet returned
                if now >= t0 + 0.5:  # past the start-up transient
                    max_lag = max(max_lag, lag)
                if lag > ABORT_LAG_S:
                    aborted = True
                    break
                if now >= end:
                    break
            cpu = meter.stop()
            timed = k
            amp.stop()
            while n := len(data := amp.get_data()[0]):  # the rest, up to stop()
                ok = ok and exact(data, k)
                k += n
        total = amp.status()["next_sample"]
        lost = amp.lost_samples
    elapsed = cpu["duration_s"]
    values = timed * CHANNELS
    lossless = bool(ok and k == total and lost == 0 and not caught)
    kept_up = not aborted and max_lag <= MAX_LAG_S
    return {
        **cpu,
        "fs": fs,
        "rate": fs * CHANNELS,
        "block_ms": svc.block_ms,
        "received_rate": values / elapsed,
        "lossless": lossless,
        "kept_up": kept_up,
        "passed": lossless and kept_up,
        "max_lag_s": max_lag,
        "aborted": aborted,
        "lost_samples": lost,
        "gap_warnings": len(caught),
        "samples": k,
        "expected_samples": total,
        # consumer cost per channel value: all CPU of this process (get_data,
        # its zmq IO thread, verification) and the verification alone
        "consumer_cpu_ns_per_value": 1e9 * cpu["consumer_cpu_pct"] / 100 * elapsed / max(1, values),
        "verify_ns_per_value": 1e9 * t_check / max(1, values),
        "get_data_wall_s": t_get,
    }


def find_max_throughput(svc: Service, duration: float, ladder=LADDER_FS, bisect_steps: int = 2,
                        repeats: int = 1, log=print) -> dict:
    """Climb ``ladder`` to the first failing rate, bisect, then confirm the best rate; every run on ``svc``.

    A failing rate is tried once more before the search treats it as failed:
    near the limit a run that falls behind early rarely recovers (larger
    get_data returns cost more per value), so single runs are bistable. The
    rate reported must pass a majority of at least ``repeats`` runs, else the
    next lower rate that passed is confirmed instead. Every run is reported,
    and the best rate with how many of its runs passed.
    """
    runs = []

    def attempt(fs):
        r = throughput_run(svc, fs, duration)
        runs.append(r)
        log(f"  throughput fs={fs:>9,.0f} Hz  {r['rate'] / 1e6:7.2f} M/s  "
            f"{'PASS' if r['passed'] else 'FAIL'}  lossless={r['lossless']} kept_up={r['kept_up']} "
            f"max_lag={r['max_lag_s'] * 1e3:.0f} ms  amp {r['amp_cpu_pct']:.0f}%  "
            f"consumer {r['consumer_cpu_pct']:.0f}%")
        return r["passed"]

    def passes(fs):
        return attempt(fs) or attempt(fs)

    best, fail = None, None
    for fs in ladder:
        if passes(fs):
            best = fs
        else:
            fail = fs
            break
    if fail is not None and best is not None:
        lo, hi = best, fail
        for _ in range(bisect_steps):
            mid = round((lo + hi) / 2, -3)
            if mid in (lo, hi):
                break
            if passes(mid):
                lo = mid
            else:
                hi = mid
        best = lo
    # The reported rate must pass most of its runs (at least `repeats`): step
    # down through the rates that passed until one does.
    confirm = []
    for fs in sorted({r["fs"] for r in runs if r["passed"] and best is not None and r["fs"] <= best},
                     reverse=True):
        while len([r for r in runs if r["fs"] == fs]) < repeats:
            attempt(fs)
        confirm = [r for r in runs if r["fs"] == fs]
        best = fs
        if 2 * sum(r["passed"] for r in confirm) > len(confirm):
            break
    else:
        best = None
    return {"runs": runs, "best_fs": best, "best_rate": best * CHANNELS if best else 0,
            "confirm_passed": sum(r["passed"] for r in confirm), "confirm_runs": len(confirm)}


# ---------------------------------------------------------------------------
# the whole benchmark


def _median(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def run(short: bool = True, duration: float | None = None, latency_runs: int | None = None,
        cpu_runs: int | None = None, floor: bool = True, tp_duration: float | None = None,
        ladder=None, bisect_steps: int | None = None, repeats: int | None = None,
        block_ms: float = 10.0, log=print) -> dict:
    """Run the benchmark and return its figures, with the printed table under ``"table"``.

    Parameters
    ----------
    short : bool
        Short mode: one 5 s latency run (of each variant), one 5 s CPU run,
        2 s throughput windows, one bisection step. Full: three 30 s latency
        runs of each variant, three 10 s CPU runs, 5 s windows, three
        bisection steps, the best rate run three times.
    duration : float, optional
        Seconds of each latency run and (at most 10) of each CPU run.
    latency_runs, cpu_runs : int, optional
    floor : bool
        Also measure the bare-pyzmq CPU floor (see ``FLOOR_SCRIPT``).
    tp_duration : float, optional
        Seconds of each throughput window.
    ladder : sequence of float, optional
        Sampling rates (Hz, 64 channels) to climb; default ``LADDER_FS``.
    bisect_steps, repeats : int, optional
    block_ms : float
        Block period of the service during throughput runs.

    Every run is a client session of one long-lived amp service per block
    period (:class:`Services`): latency and CPU runs share the one for
    ``LATENCY_BLOCK_MS``, the throughput runs use the one for ``block_ms``
    (the same service if they are equal).

    Raises
    ------
    ServiceFailed
        A service exited, stopped answering or was replaced during the bench.
    """
    duration = duration if duration is not None else (5.0 if short else 30.0)
    cpu_duration = min(duration, 10.0)
    latency_runs = latency_runs if latency_runs is not None else (1 if short else 3)
    cpu_runs = cpu_runs if cpu_runs is not None else (1 if short else 3)
    tp_duration = tp_duration if tp_duration is not None else (2.0 if short else 5.0)
    ladder = tuple(ladder) if ladder is not None else LADDER_FS
    bisect_steps = bisect_steps if bisect_steps is not None else (1 if short else 3)
    repeats = repeats if repeats is not None else (1 if short else 3)

    res = {"machine": machine(), "mode": "short" if short else "full",
           "durations": {"latency_s": duration, "cpu_s": cpu_duration, "throughput_s": tp_duration}}
    log(f"mushu amp bench ({res['mode']}) on {res['machine']['cpu']}, {res['machine']['cores']} cores")
    with Services() as amps:
        for key, probe in (("latency", True), ("latency_no_markers_probe", False)):
            lat = []
            for i in range(latency_runs):
                r = latency_run(amps(LATENCY_BLOCK_MS), duration, markers_probe=probe)
                lat.append(r)
                log(f"  {key} run {i + 1}: {r['blocks']} blocks  p50 {r['p50_us']:.0f} us  "
                    f"p99 {r['p99_us']:.0f} us  max {r['max_us']:.0f} us  startup max {r['startup_max_us']:.0f} us  "
                    f"amp CPU {r['amp_cpu_pct']:.2f}% (2 subscribers)  lossless={r['lossless']}")
            res[key] = {
                "runs": lat,
                **{k: _median([r[k] for r in lat])
                   for k in ("p50_us", "p99_us", "max_us", "startup_max_us", "others_cpu_pct")},
                "lossless": all(r["lossless"] for r in lat),
            }
        cpu = []
        for i in range(cpu_runs):
            r = cpu_run(amps(LATENCY_BLOCK_MS), cpu_duration)
            cpu.append(r)
            log(f"  cpu run {i + 1}: amp {r['amp_cpu_pct']:.2f}%  consumer {r['consumer_cpu_pct']:.2f}%")
        res["cpu"] = {"runs": cpu, **{k: _median([r[k] for r in cpu])
                                      for k in ("amp_cpu_pct", "consumer_cpu_pct", "others_cpu_pct")}}
        if floor:
            res["floor"] = {mode: floor_run(cpu_duration, mode) for mode in ("sleep", "send")}
            log(f"  floor: sleep-only loop {res['floor']['sleep']['cpu_pct']:.2f}%, "
                f"bare pyzmq send loop {res['floor']['send']['cpu_pct']:.2f}%")
        res["throughput"] = find_max_throughput(amps(block_ms), tp_duration, ladder, bisect_steps, repeats, log)
    res["services"], res["services_line"] = amps.summary(), amps.describe()
    res["load_avg_end"] = os.getloadavg()
    res["table"] = table(res)
    return res


def table(res: dict) -> str:
    m, lat, cpu, tp, d = res["machine"], res["latency"], res["cpu"], res["throughput"], res["durations"]
    nmp = res["latency_no_markers_probe"]
    rows = [
        f"machine : {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}",
        f"software: Python {m['python']}, pyzmq {m['pyzmq']} (libzmq {m['libzmq']}), numpy {m['numpy']}",
        f"date    : {m['date']}    mode: {res['mode']}    load average at start "
        f"{m['load_avg'][0]:.2f}, at end {res['load_avg_end'][0]:.2f} (other processes share the cores)",
        "",
        f"{'metric (64 channels, rampamp, tcp loopback)':<56} {'value':>12}  {'target':>8}",
        "-" * 80,
        f"{'latency p50, 1 kHz in 1 ms blocks, to get_data return (us)':<56} {lat['p50_us']:>12.0f}",
        f"{'latency p99 (us)':<56} {lat['p99_us']:>12.0f}",
        f"{'latency max (us)':<56} {lat['max_us']:>12.0f}",
        f"{'  max in the first 0.5 s after start() (us)':<56} {lat['startup_max_us']:>12.0f}",
        f"{'  p50 / p99 / max without the markers-clock probe (us)':<56} {nmp['p50_us']:>4.0f} / "
        f"{nmp['p99_us']:.0f} / {nmp['max_us']:.0f}",
        f"{'amp service CPU at 1 kHz, 1 ms blocks (% of one core)':<56} {cpu['amp_cpu_pct']:>12.2f}  {'< 3':>8}",
        f"{'consumer process CPU at 1 kHz (% of one core)':<56} {cpu['consumer_cpu_pct']:>12.2f}",
    ]
    if "floor" in res:
        rows += [
            f"{'  floor: Python thread waking every 1 ms, no I/O (%)':<56} {res['floor']['sleep']['cpu_pct']:>12.2f}",
            f"{'  floor: same + one 3-frame pyzmq PUB message/ms (%)':<56} {res['floor']['send']['cpu_pct']:>12.2f}",
        ]
    rows += [
        f"{'highest lossless throughput (M samples/s = fs x 64)':<56} {tp['best_rate'] / 1e6:>12.2f}  {'>= 20':>8}",
        f"{'  at fs (Hz); passed / runs at that fs':<56} {(tp['best_fs'] or 0):>12,.0f}  "
        f"{tp['confirm_passed']}/{tp['confirm_runs']}",
        "",
        f"latency: median over {len(lat['runs'])} run(s) of the per-run p50/p99/max over every block of "
        f"{d['latency_s']:g} s after a {WARMUP_S:g} s warm-up ({', '.join(str(r['blocks']) for r in lat['runs'])} "
        f"blocks); all lossless: {lat['lossless'] and nmp['lossless']}; "
        f"other processes used {lat['others_cpu_pct']:.0f}% of a core meanwhile",
        "  (without the probe: the client's clock-offset probes of the absent markers service turned off; "
        "see latency_run)",
        f"CPU: median over {len(cpu['runs'])} run(s) of {d['cpu_s']:g} s, one client consuming with get_data only; "
        f"other processes used {cpu['others_cpu_pct']:.0f}% of a core meanwhile",
        res["services_line"],
        "",
        f"throughput runs ({d['throughput_s']:g} s windows; lag = how far the consumer fell behind the clock; "
        "oth % = other processes; cons ns/v = consumer CPU per value, chk ns/v = of which verification):",
        f"{'fs Hz':>10} {'M/s':>7} {'recv M/s':>9} {'result':>6} {'lossless':>8} {'kept_up':>7} "
        f"{'lag ms':>7} {'amp %':>6} {'cons %':>6} {'oth %':>6} {'cons ns/v':>9} {'chk ns/v':>8}",
    ]
    for r in sorted(tp["runs"], key=lambda r: r["fs"]):
        rows.append(f"{r['fs']:>10,.0f} {r['rate'] / 1e6:>7.2f} {r['received_rate'] / 1e6:>9.2f} "
                    f"{'PASS' if r['passed'] else 'FAIL':>6} {str(r['lossless']):>8} {str(r['kept_up']):>7} "
                    f"{r['max_lag_s'] * 1e3:>7.0f} {r['amp_cpu_pct']:>6.0f} {r['consumer_cpu_pct']:>6.0f} "
                    f"{r['others_cpu_pct']:>6.0f} "
                    f"{r['consumer_cpu_ns_per_value']:>9.2f} {r['verify_ns_per_value']:>8.2f}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="short mode (about a minute)")
    p.add_argument("--duration", type=float, help="seconds of each latency run")
    p.add_argument("--latency-runs", type=int)
    p.add_argument("--cpu-runs", type=int)
    p.add_argument("--no-floor", action="store_true", help="skip the bare-pyzmq CPU floor")
    p.add_argument("--tp-duration", type=float, help="seconds of each throughput window")
    p.add_argument("--block-ms", type=float, default=10.0, help="service block period in throughput runs")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args(argv)
    try:
        res = run(short=a.short, duration=a.duration, latency_runs=a.latency_runs, cpu_runs=a.cpu_runs,
                  floor=not a.no_floor, tp_duration=a.tp_duration, block_ms=a.block_ms)
    except ServiceFailed as exc:
        return fail_loudly(exc)
    print()
    print(res["table"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

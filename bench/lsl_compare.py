"""mushu and the Lab Streaming Layer side by side, on the same machine in the same run (not a test).

Usage::

    python bench/lsl_compare.py                  # full: 3 runs of each workload, 8-10 minutes
    python bench/lsl_compare.py --short          # one run each, no scaling table: under a minute
    python bench/lsl_compare.py --runs 5 --json out.json
    python bench/lsl_compare.py --tcp            # mushu's consumers over TCP, as a remote host's would be

Every workload runs mushu and LSL alternately (run 1 mushu first, run 2 LSL
first, ...) and the table reports the median of the per-run figures. Each
side has its producer in its own process and every consumer in its own
process (this script, re-run with ``--worker``), so CPU time and peak memory
are per process and the two sides do the same work:

- mushu: the amp service (``python -m mushu_amp``, driver ``rampamp``) and
  consumers calling ``Amp.get_data()``, which on one host read the amp's
  local IPC endpoint, as the recorder does once it records (``--tcp``: all
  over loopback TCP, as LSL does). The amp service runs as users run it:
  one long-lived process per block period (``--block-ms``, a service
  option) for the whole bench invocation, which each run reconfigures
  through its controlling client (``configure(fs=..., channels=...)``,
  ``start()``, ``stop()``). After every run the bench checks that it is
  still the same process (alive, ``status`` answering with its pid); an
  exit, a silence or another pid fails the bench (exit status 2,
  ``ServiceFailed``), and no service is started in its place. Only the CPU
  and memory workload starts a fresh amp service per run (see
  ``cpu_figures``: peak memory is per process);
- LSL: a producer process that runs the very same ``RampAmp`` driver in the
  amp service's paced loop (same data generation, same cadence) and pushes
  each block with ``StreamOutlet.push_chunk(block, local_clock())`` at the
  moment it was read, which is when the amp service stamps its blocks. It is
  a new process for every run (an outlet is made for one stream and lives
  in its producer's process); its start-up, like the ready amp service's,
  is outside every measured window, which begins ``WARMUP_S`` after the
  producer started sending, and CPU figures are CPU time deltas over that
  window on both sides. The consumers pull with
  ``StreamInlet.pull_chunk(timeout, min_samples=1, dest_obj=preallocated,
  as_numpy=True)``: wait for the first sample, then
  take whatever else is there into a preallocated array, no Python lists
  (pylsl 1.18's low-latency mode: a plain timed pull waits for
  ``max_samples``, and ``timeout=0`` polling needs a sleep between polls
  that either adds latency or burns CPU). Inlets have no post-processing
  (same host, same clock) and LSL's default 360 s of buffering, capped
  at 1 GiB per stream (``lsl_buflen``); mushu's amp keeps at least 10 s of
  history, 64 MiB to 1 GiB (``history_mb``: a long-lived service is sized
  for the largest configuration it serves, ``history_args``).

Every consumer checks every value against the ramp (a lost, repeated or
reordered sample fails the check) and that it got exactly the samples the
producer made, counted by the producer.

Workloads:

1. **Latency**: the age of every sample when the consumer's call returns
   it: return time minus the sample's acquisition time (a block's last
   sample is acquired when the driver read returns, earlier ones one sample
   period apart before it, in both systems; mushu's come from the block
   headers, noted as the client takes them in, LSL's are its time stamps). At
   64 ch x 1 kHz in 1 ms blocks and 256 ch x 10 kHz in 1 ms blocks,
   p50/p99/max over the samples after a warm-up.
2. **Lossless throughput**: a ladder of sampling rates at 64 channels in
   10 ms blocks, then a bisection. A run passes when every consumer got
   every value exactly and had everything within ``DRAIN_LIMIT_S`` of the
   producer stopping (a consumer that fell behind drains a backlog). mushu
   is measured with one consumer, and with one consumer plus the recorder
   (the recording is checked bit-exact and must be finished within the same
   limit); LSL with one consumer.
3. **Markers** at 64 x 1 kHz: a separate sender process sends markers at
   random 2-10 ms intervals (mushu: ``MarkerSender`` over TCP to the markers
   service; LSL: a string outlet) and then a burst as fast as it can. A
   marker is visible in mushu when ``get_data`` returns it; in LSL when it
   has been pulled and data stamped at or after it has been pulled too
   (only then can it be placed on a sample). Latency p50/p99; throughput is
   the burst's markers over the time from its first send to its last
   marker visible, every marker seen.
4. **CPU and peak memory** of the producer and the consumer at 64 x 1 kHz
   in 1 ms blocks (user + system time over the window, % of one core; the
   kernel's VmHWM).
5. **Fan-out**: 8 consumers of 64 x 1 kHz; the first stops reading for
   ``stall`` seconds and then resumes. For the other 7: samples lost and
   p99 latency; for the stalled one: whether it got everything.
6. **Scaling** (mushu only, full mode): producer and consumer CPU and p99
   latency against channels, sampling rate, block size and consumers.

The exit status is 2 if an amp service failed (above), 1 if any run other
than a throughput rung above the best lossless rate lost or corrupted a
sample (``"all_lossless"`` in the JSON), 0 otherwise: never because of a
speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings

import numpy as np
import psutil
import zmq
from amp_bench import (CHANNELS, Service, ServiceFailed, Services, _block_times, _wait_for_info, end_process, exact,
                       fail_loudly, free_port, machine)
from markers_bench import percentiles, spawn

from mushu_core.config import setting_flag
from mushu_core.control import ControlClient, wait_for
from mushu_core.wire import data_topic

#: Seconds after go before latency samples and CPU count (start-up transient).
WARMUP_S = 0.5
#: A run keeps up when every consumer (and the recorder) has everything this
#: many seconds after the producer stopped.
DRAIN_LIMIT_S = 0.5
#: How long a consumer waits for the last samples after being told the total.
END_WAIT_S = 10.0
#: Throughput ladder, sampling rates at 64 channels (x 64 = samples/s).
LADDER_FS = (100_000, 200_000, 400_000, 800_000, 1_600_000, 3_200_000, 6_400_000)
SHORT_LADDER_FS = (50_000,)
#: Block period (ms) of the throughput runs; every other workload but the scaling table's uses 1 ms.
THROUGHPUT_BLOCK_MS = 10.0
#: (fs, channels) of the latency workloads; the markers, CPU and fan-out workloads run 64 x 1 kHz.
LATENCY_CONFIGS = ((1000, CHANNELS), (10_000, 256))
SYSTEMS = ("mushu", "lsl")


# ---------------------------------------------------------------------------
# workers: each runs in its own process, talks JSON lines over stdin/stdout


def say(message):
    print(message if isinstance(message, str) else json.dumps(message), flush=True)


class Commands:
    """What the orchestrator tells a worker on stdin: ``go``, ``stop``, ``end <total samples>``."""

    def __init__(self):
        self.go, self.stop, self.closed = threading.Event(), threading.Event(), threading.Event()
        self.target: int | None = None
        self.target_at = 0.0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in sys.stdin:
            word, *arg = line.split()
            if word == "go":
                self.go.set()
            elif word == "stop":
                self.stop.set()
            elif word == "end":
                self.target_at = time.monotonic()
                self.target = int(arg[0])
        self.closed.set()


def lsl_buflen(fs: float, channels: int) -> int:
    """Seconds of buffering for LSL's outlet and inlet: its default of 360 s, capped
    at 2**28 values (1 GiB of float32) so fast streams do not exhaust memory."""
    return int(max(1, min(360, 2**28 // (fs * channels))))


def history_mb(fs: float, channels: int) -> int:
    """The amp's history for a run: 10 s of data, at least its default 64 MiB and, like LSL's buffers, at most 1 GiB."""
    return int(max(64, min(1024, 10 * fs * channels * 4 / 2**20)))


def history_args(configs) -> tuple[str, str]:
    """``mushu_amp`` arguments for a service that serves runs of these ``(fs, channels)``.

    A service's history is fixed at its start: it gets what the most
    demanding of them needs (:func:`history_mb`), so every run has at least
    10 s of history, as a service started for that run alone would.
    """
    return ("--history-mb", str(max(history_mb(fs, channels) for fs, channels in configs)))


def lsl_producer(spec, cmd):
    import pylsl

    from mushu_amp.drivers.rampamp import RampAmp

    fs, channels = spec["fs"], spec["channels"]
    driver = RampAmp()
    driver.configure(fs=fs, channels=channels)
    per_block = max(1, round(fs * spec["block_ms"] / 1000))
    info = pylsl.StreamInfo("bench", "EEG", channels, fs, "float32", spec["source_id"])
    outlet = pylsl.StreamOutlet(info, chunk_size=per_block, max_buffered=lsl_buflen(fs, channels))
    say("ready")
    cmd.go.wait()
    # the amp service's acquisition loop (services/amp/service.py), with a push instead of a send
    push, read, clock, stop = outlet.push_chunk, driver.get_data, pylsl.local_clock, cmd.stop
    period = max(1, int(spec["block_ms"] * 1e6))
    pushed = 0
    driver.start()
    next_tick = time.monotonic_ns()
    while not stop.is_set():
        data, _markers = read()
        if len(data):
            push(data, clock())
            pushed += len(data)
        now = time.monotonic_ns()
        next_tick += period
        if next_tick < now - period:
            next_tick = now
        if next_tick > now:
            time.sleep((next_tick - now) / 1e9)
    say({"pushed": pushed, "t_stop_ns": time.monotonic_ns()})
    cmd.closed.wait()  # the outlet stays until the consumers have drained it


class Tally:
    """A consumer's bookkeeping: checks every value, notes return times and markers."""

    def __init__(self, spec, k0: int = 0):
        self.spec, self.k0, self.k = spec, k0, 0
        self.channels = spec["channels"]
        self.exact = True
        self.returns: list[tuple[int, int]] = []  # (samples, return time ns) of every non-empty call
        self.seen: dict[str, int] = {}  # marker label -> when visible
        self.benched_markers = 0  # of them the sender's m<i> and b<i> (not its warm-up)
        self.t_last = 0
        self.t_first: float | None = None
        self.stall = spec.get("stall")
        self.expect_markers = spec.get("expect_markers")  # say so once this many have been seen

    def add(self, data, t_ret: int, labels=()):
        n = len(data)
        for label in labels:
            if label not in self.seen:
                self.seen[label] = t_ret
                self.benched_markers += label[:1] in ("m", "b")
        if self.expect_markers and self.benched_markers >= self.expect_markers:
            say("markers-seen")
            self.expect_markers = None
        if not n:
            return
        self.exact = self.exact and exact(data, self.k0 + self.k, self.channels)
        if self.spec["latency"]:
            self.returns.append((n, t_ret))
        self.k += n
        self.t_last = t_ret
        if self.t_first is None:
            self.t_first = time.monotonic()

    def pause(self):
        """The stalled consumer of the fan-out stops reading once, ``stall[0]`` s after its first data."""
        if self.stall and self.t_first is not None and time.monotonic() - self.t_first >= self.stall[0]:
            time.sleep(self.stall[1])
            self.stall = None

    def finished(self, cmd) -> bool:
        if cmd.target is None:
            return False
        return self.k0 + self.k >= cmd.target or time.monotonic() > cmd.target_at + END_WAIT_S

    def result(self, cmd, acquired_ns=None, **extra) -> dict:
        res = {"k0": self.k0, "samples": self.k, "exact": bool(self.exact),
               "complete": self.k0 + self.k == cmd.target,
               "t_complete_ns": self.t_last, "seen": self.seen, **extra}
        res["lossless"] = bool(res["exact"] and res["complete"] and not extra.get("lost")
                               and not extra.get("gap_warnings"))
        if acquired_ns is not None and len(acquired_ns):
            n = [r[0] for r in self.returns]
            returned = np.repeat(np.array([r[1] for r in self.returns], np.int64), n)[:len(acquired_ns)]
            lat_us = (returned - acquired_ns[:len(returned)]) / 1e3
            steady = lat_us[acquired_ns[:len(returned)] >= acquired_ns[0] + self.spec["warmup"] * 1e9]
            if steady.size:
                res.update({"p50_us": float(np.percentile(steady, 50)), "p99_us": float(np.percentile(steady, 99)),
                            "max_us": float(steady.max()), "latency_samples": int(steady.size)})
        return res


def mushu_consumer(spec, cmd):
    from mushu_client import GapWarning, get_amp
    from mushu_core.wire import DATA, info_topic

    wait_for(spec["control"], "amp", 15.0)
    amp = get_amp("rampamp", data=spec["data"], control=spec["control"], markers=spec["markers"],
                  markers_control=spec["markers_control"], timeout=10.0)  # control replies, under load too
    amp.timeout = 0.2  # get_data's wait: the loop looks at its commands this often
    side, blocks = None, []
    timeline = getattr(amp, "_timeline", None)
    if spec["latency"] and callable(getattr(timeline, "add", None)):
        # The client notes every block's (first sample, t_ns, samples) for marker
        # placement: noting them here too costs a list append per block, where a
        # second subscriber would double the publisher's fan-out.
        add = timeline.add

        def noting(first, t_ns, n, fs):
            blocks.append((first, t_ns))
            add(first, t_ns, n, fs)
        timeline.add = noting
    elif spec["latency"]:  # a client without that hook: block headers from a side subscriber
        side = zmq.Context.instance().socket(zmq.SUB)
        side.setsockopt(zmq.RCVHWM, 0)
        side.connect(spec["data"])
        side.setsockopt(zmq.SUBSCRIBE, data_topic(amp.stream))
        side.setsockopt(zmq.SUBSCRIBE, info_topic(amp.stream))
        if not _wait_for_info(side):
            raise RuntimeError("the side subscriber saw no stream info within 3 s")
    say("ready")
    cmd.go.wait()
    amp.start()  # joins the running amp where it is
    tally = Tally(spec, amp.first_sample)  # the first sample of the session it followed
    headers = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GapWarning)
        while not tally.finished(cmd):
            tally.pause()
            data, markers = amp.get_data()
            tally.add(data, time.monotonic_ns(), [label for _ms, label in markers])
            while side is not None and side.poll(0):
                frames = side.recv_multipart()
                if frames[0].startswith(DATA):
                    headers.append(frames[1])
    acquired = None
    if spec["latency"]:
        if side is not None:
            firsts, t_ns = _block_times(headers, side, cmd.target)
            side.close(linger=0)
        else:
            firsts, t_ns = (np.array(x, np.int64) for x in zip(*blocks)) if blocks else (np.zeros(1, np.int64),) * 2
        samples = tally.k0 + np.arange(tally.k, dtype=np.int64)
        i = np.searchsorted(firsts, samples, side="right") - 1
        acquired = t_ns[i] + np.round((samples - firsts[i]) * 1e9 / amp.get_sampling_frequency()).astype(np.int64)
    say(tally.result(cmd, acquired, lost=amp.lost_samples, refetched=amp.refetched_samples,
                     gap_warnings=len(caught)))
    amp.close()


def _lsl_inlet(source_id, **kwargs):
    import pylsl
    found = pylsl.resolve_byprop("source_id", source_id, 1, 10.0)
    if not found:
        raise RuntimeError(f"no LSL stream {source_id} found within 10 s")
    inlet = pylsl.StreamInlet(found[0], processing_flags=0, **kwargs)
    inlet.open_stream(10.0)
    return inlet


def lsl_consumer(spec, cmd):
    fs, channels = spec["fs"], spec["channels"]
    inlet = _lsl_inlet(spec["source_id"], max_buflen=lsl_buflen(fs, channels))
    minlet = _lsl_inlet(spec["marker_source"]) if spec.get("marker_source") else None
    rows = max(1024, int(fs * 0.05))
    buf = np.empty((rows, channels), np.float32)
    tally = Tally(spec)
    stamps, pending, newest = [], {}, -np.inf
    say("ready")
    while not tally.finished(cmd):
        tally.pause()
        data, ts = inlet.pull_chunk(0.2, rows, dest_obj=buf, min_samples=1, as_numpy=True)
        t_ret = time.monotonic_ns()
        if len(ts):
            newest = ts[-1]
            if spec["latency"]:
                stamps.append(ts)
        visible = []
        if minlet is not None:
            labels, mts = minlet.pull_chunk(0.0, 4096)
            pending.update((label[0], mt) for label, mt in zip(labels, mts))
            visible = [label for label, mt in pending.items() if mt <= newest]
            for label in visible:
                del pending[label]
        tally.add(data, t_ret, visible)
    acquired = (np.concatenate(stamps) * 1e9).astype(np.int64) if stamps else None
    say(tally.result(cmd, acquired, lost=0, gap_warnings=0))


def marker_sender(spec, cmd):
    if spec["system"] == "mushu":
        from mushu_client import MarkerSender
        sender = MarkerSender("127.0.0.1", spec["port"], protocol="tcp")
        send = sender.send
        send("warm-up")  # opens the connection
    else:
        import pylsl
        info = pylsl.StreamInfo("bench-markers", "Markers", 1, pylsl.IRREGULAR_RATE, "string", spec["source_id"])
        outlet = pylsl.StreamOutlet(info)
        if not outlet.wait_for_consumers(10.0):
            raise RuntimeError("no LSL consumer of the markers within 10 s")
        push, clock = outlet.push_sample, pylsl.local_clock

        def send(label):
            push([label], clock())
    say("ready")
    cmd.go.wait()
    time.sleep(WARMUP_S)
    rng = random.Random(7)
    sent = {}
    for i in range(spec["n"]):
        label = f"m{i}"
        sent[label] = time.monotonic_ns()
        send(label)
        time.sleep(rng.uniform(0.002, 0.010))
    t0 = time.monotonic_ns()
    for i in range(spec["burst"]):
        send(f"b{i}")
    say({"sent": sent, "burst_t0_ns": t0, "burst_send_s": (time.monotonic_ns() - t0) / 1e9})
    cmd.closed.wait()  # an LSL outlet must outlive the pull of its last markers


WORKERS = {"lsl-producer": lsl_producer, "lsl-consumer": lsl_consumer, "mushu-consumer": mushu_consumer,
           "marker-sender": marker_sender}


# ---------------------------------------------------------------------------
# the orchestrator's side


class Worker:
    """One worker process; its stdout lines arrive on a queue."""

    def __init__(self, spec: dict):
        self.role = spec["role"]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.ps = psutil.Process(self.proc.pid)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def send(self, line: str):
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._failure("has exited") from None

    def _failure(self, what: str) -> RuntimeError:
        self.log.seek(0)
        tail = self.log.read().decode(errors="replace")[-1500:]
        return RuntimeError(f"{self.role} worker {what} (exit status {self.proc.poll()}): {tail}")

    def expect(self, timeout: float, required: bool = True) -> str | None:
        """The worker's next line; raises with its stderr if it exits or stays silent ``timeout`` s
        (unless not ``required``: then None)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.lines.get(timeout=0.2)
            except queue.Empty:
                exited = self.proc.poll() is not None and self.lines.empty()
                if not required and time.monotonic() > deadline:
                    return None
                if exited or time.monotonic() > deadline:
                    raise self._failure(f"said nothing within {timeout:g} s") from None

    def result(self, timeout: float) -> dict:
        """The worker's JSON result (a late ``markers-seen`` before it is passed over)."""
        while not (line := self.expect(timeout)).startswith("{"):
            pass
        return json.loads(line)

    def close(self):
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        end_process(self.proc, 5, terminate=False)  # a closed stdin ends it
        self.log.close()


def cpu_s(ps: psutil.Process) -> float:
    t = ps.cpu_times()
    return t.user + t.system


def peak_mb(pid: int) -> float:
    """VmHWM, the process's peak resident memory, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class MushuSide:
    """One session's client of the amp service (and, if asked, its markers service and recorder).

    The amp service is the long-lived one for the block period (``amps``),
    configured by this session's controlling client (the "boss"), or, with
    ``amps`` None, a fresh service of the session's own.
    """

    def __init__(self, stack, spec: dict, block_ms: float, markers: dict | None, recorder: bool,
                 amps: Services | None):
        fs, channels = spec["fs"], spec["channels"]
        self.stack, self.fs, self.channels, self.recorder = stack, fs, channels, recorder
        if amps is None:
            self.svc = stack.enter_context(Service(block_ms, history_args([(fs, channels)]))).ready()
        else:
            self.svc = amps(block_ms)
        self.producer = self.svc.ps
        self.mk = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]  # no markers service unless asked
        self.rec_ctl = f"tcp://127.0.0.1:{free_port()}"
        self.markers = {**markers, "port": free_port()} if markers else None
        self.consumer = {"role": "mushu-consumer", "data": self.svc.data, "control": self.svc.control,
                         "markers": self.mk[0], "markers_control": self.mk[1]}
        # Configured before the consumers connect, as a freshly started service would be; the
        # service is checked once the session's other processes have ended (the stack unwinds).
        self.boss = stack.enter_context(self.svc.client(fs, channels, markers=self.mk[0],
                                                        markers_control=self.mk[1], recorder=self.rec_ctl))
        # The boss only starts and stops: off the data topic, so that the amp publishes to the
        # measured consumers alone, as the LSL outlet does (it would double the amp's sends).
        self.boss._reader.bus.unsubscribe(data_topic(self.boss.stream))

    def prepare(self):
        """Start the other services; the consumers start meanwhile."""
        stack, mk = self.stack, self.mk
        if self.markers:
            stack.callback(end_process, spawn(["mushu_markers", "--port", str(self.markers["port"]), "--data", mk[0],
                                        "--control", mk[1], "--ingress", f"tcp://127.0.0.1:{free_port()}"], mk[1]))
        if self.recorder:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="lsl-compare-"))
            stack.callback(end_process, spawn(["mushu_recorder", "--control", self.rec_ctl, "--data-dir", workdir,
                                        "--amp-data", self.svc.data, "--amp-control", self.svc.control,
                                        "--markers-data", mk[0], "--markers-control", mk[1]], self.rec_ctl))
            self.rec_status = ControlClient(self.rec_ctl, 2.0, "recorder")
            stack.callback(self.rec_status.close)

    def start(self):
        self.boss.start(f"bench-{uuid.uuid4().hex[:8]}" if self.recorder else None)

    def stop(self) -> tuple[int, int, dict]:
        """Stop acquisition: (samples made, when it stopped, what else there is to say)."""
        extra = {}
        if self.recorder:  # its backlog when acquisition stops, as for the consumers
            amp_next = self.boss.status()["next_sample"]
            rec_next = self.rec_status.call("status")["recording"]["next_sample"]
            extra["recorder_lag_s"] = (amp_next - rec_next) / self.fs
        t_stop = time.monotonic_ns()
        self.boss.stop()
        extra["finish_s"] = (time.monotonic_ns() - t_stop) / 1e9  # stop(), with the recording's finish
        total = self.boss.status()["next_sample"]
        if self.recorder:
            extra["recording"] = _verify_recording(self.boss.recording_result, total, self.channels)
        return total, t_stop, extra


class LslSide:
    """The LSL producer process of one session."""

    def __init__(self, stack, spec: dict, block_ms: float, markers: dict | None, recorder: bool):
        if recorder:
            raise ValueError("LSL has no recorder here")
        sid = f"lsl-compare-{uuid.uuid4().hex[:12]}"
        self.prod = Worker({"role": "lsl-producer", "source_id": sid, "block_ms": block_ms, **spec})
        stack.callback(self.prod.close)
        self.producer = self.prod.ps
        self.consumer = {"role": "lsl-consumer", "source_id": sid}
        self.markers = None
        if markers:
            self.markers = {**markers, "source_id": sid + "-markers"}
            self.consumer["marker_source"] = self.markers["source_id"]

    def prepare(self):
        if self.prod.expect(30) != "ready":
            raise RuntimeError("the LSL producer did not get ready")

    def start(self):
        self.prod.send("go")

    def stop(self) -> tuple[int, int, dict]:
        self.prod.send("stop")
        pushed = self.prod.result(30)
        return pushed["pushed"], pushed["t_stop_ns"], {}


def session(system: str, fs: float, channels: int = CHANNELS, block_ms: float = 1.0, duration: float = 3.0,
            consumers: int = 1, latency: bool = False, stall=None, markers: dict | None = None,
            recorder: bool = False, amps: Services | None = None) -> dict:
    """Run one producer and its consumers for ``duration`` s (or until the marker sender is done).

    Parameters
    ----------
    amps : Services, optional
        mushu's long-lived amp services: the one for ``block_ms`` is mushu's
        producer. None: a fresh amp service for this session alone. LSL's
        producer is a new process per session either way.
    """
    spec = {"fs": fs, "channels": channels, "latency": latency, "warmup": WARMUP_S}
    with contextlib.ExitStack() as stack:
        side = (MushuSide(stack, spec, block_ms, markers, recorder, amps) if system == "mushu"
                else LslSide(stack, spec, block_ms, markers, recorder))
        workers = []
        expect = markers["n"] + markers["burst"] if markers else None
        for i in range(consumers):
            workers.append(Worker({**spec, **side.consumer, "stall": stall if i == 0 else None,
                                   "expect_markers": expect}))
            stack.callback(workers[-1].close)
        side.prepare()
        sender = None
        if markers:
            sender = Worker({"role": "marker-sender", "system": system, **side.markers})
            stack.callback(sender.close)
        for w in workers + [sender] * bool(sender):
            if w.expect(30) != "ready":
                raise RuntimeError(f"{w.role} worker did not get ready")
        side.start()
        for w in workers + [sender] * bool(sender):
            w.send("go")
        time.sleep(WARMUP_S)
        procs = [side.producer] + [w.ps for w in workers]
        c0, t0 = [cpu_s(p) for p in procs], time.monotonic()
        extra = {}
        if sender:  # until every consumer has seen every marker (or stayed short of it for END_WAIT_S)
            extra["sender"] = sender.result(120)
            for w in workers:
                w.expect(END_WAIT_S, required=False)
        else:
            time.sleep(duration)
        c1, t1 = [cpu_s(p) for p in procs], time.monotonic()
        cpu = [100 * (b - a) / (t1 - t0) for a, b in zip(c0, c1)]
        mem = [peak_mb(p.pid) for p in procs]
        total, t_stop, more = side.stop()
        for w in workers:
            w.send(f"end {total}")
        results = [w.result(END_WAIT_S + 30) for w in workers]
    for r in results:
        r["drain_s"] = (r.pop("t_complete_ns") - t_stop) / 1e9
        r["kept_up"] = r["complete"] and r["drain_s"] <= DRAIN_LIMIT_S
    return {"system": system, "fs": fs, "channels": channels, "block_ms": block_ms, "total": total,
            "window_s": t1 - t0, "producer_cpu_pct": cpu[0], "consumer_cpu_pct": cpu[1:],
            "producer_peak_mb": mem[0], "consumer_peak_mb": mem[1:], "consumers": results, **extra, **more}


def _verify_recording(result: dict, total: int, channels: int) -> dict:
    """Whether the recording holds every sample bit-exact; its files are removed."""
    from mushu_core.recordings import load
    rec = load(result["base"], mmap=True)  # a recording that fell behind can be gigabytes of NaN gaps
    ok = not rec.gaps and len(rec.data) == total == result["n_samples"] and exact(rec.data, 0, channels)
    del rec
    for ext in (".eeg", ".marker", ".meta", ".vhdr", ".vmrk"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(result["base"] + ext)
    return {"exact": bool(ok), "samples": int(result["n_samples"])}


# ---------------------------------------------------------------------------
# workloads


def _median(xs):
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else float("nan")


def alternate(runs: int, fn, log, name: str) -> dict:
    """``fn(system)`` for both systems, ``runs`` times, alternating which goes first."""
    out = {s: [] for s in SYSTEMS}
    for i in range(runs):
        for system in (SYSTEMS if i % 2 == 0 else SYSTEMS[::-1]):
            r = fn(system)
            out[system].append(r)
            log(f"  {name} run {i + 1} {system:5}: " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                if not isinstance(v, (list, dict))))
    return out


def latency_figures(system, fs, channels, duration, amps):
    s = session(system, fs, channels, 1.0, duration, latency=True, amps=amps)
    c = s["consumers"][0]
    return {"p50_us": c.get("p50_us"), "p99_us": c.get("p99_us"), "max_us": c.get("max_us"),
            "lossless": c["lossless"]}


def cpu_figures(system, duration):
    # A fresh amp service, not a long-lived one: peak memory (VmHWM) is a process's peak since it
    # started, and LSL's producer is a fresh process; a long-lived service's peak would be that of
    # every earlier run on it (their histories, up to its --history-mb).
    s = session(system, 1000, CHANNELS, 1.0, duration)
    return {"producer_cpu_pct": s["producer_cpu_pct"], "consumer_cpu_pct": s["consumer_cpu_pct"][0],
            "producer_peak_mb": s["producer_peak_mb"], "consumer_peak_mb": s["consumer_peak_mb"][0],
            "lossless": s["consumers"][0]["lossless"]}


def marker_figures(system, n, burst, amps):
    s = session(system, 1000, CHANNELS, 1.0, markers={"n": n, "burst": burst}, amps=amps)
    seen, sent = s["consumers"][0]["seen"], s["sender"]["sent"]
    vis = [(seen[k] - t) / 1e3 for k, t in sent.items() if k in seen]
    burst_seen = [seen[f"b{i}"] for i in range(burst) if f"b{i}" in seen]
    complete = len(vis) == n and len(burst_seen) == burst
    span = (max(burst_seen) - s["sender"]["burst_t0_ns"]) / 1e9 if burst_seen else float("nan")
    p = percentiles(vis) if vis else {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"p50_us": p["p50"], "p99_us": p["p99"], "max_us": p["max"], "missing": n + burst - len(vis) -
            len(burst_seen), "burst_per_s": burst / span if complete else 0.0,
            "lossless": bool(complete and s["consumers"][0]["lossless"])}


def fanout_figures(system, duration, stall_s, amps):
    s = session(system, 1000, CHANNELS, 1.0, duration, consumers=8, latency=True, stall=(1.0, stall_s), amps=amps)
    stalled, others = s["consumers"][0], s["consumers"][1:]
    return {"others_lost": sum(s["total"] - r["k0"] - r["samples"] for r in others),
            "others_lossless": all(r["lossless"] for r in others),
            "others_p99_us": _median([r.get("p99_us") for r in others]),
            "others_worst_p99_us": max((r.get("p99_us") or float("nan")) for r in others),
            "stalled_lossless": stalled["lossless"], "stalled_refetched": stalled.get("refetched", 0),
            "producer_cpu_pct": s["producer_cpu_pct"],
            "lossless": all(r["lossless"] for r in s["consumers"])}


def throughput_run(system, fs, duration, amps, recorder=False):
    s = session(system, fs, CHANNELS, THROUGHPUT_BLOCK_MS, duration, recorder=recorder, amps=amps)
    c = s["consumers"][0]
    rec_ok = s["recording"]["exact"] and s["recorder_lag_s"] <= DRAIN_LIMIT_S if recorder else True
    return {"fs": fs, "rate": fs * CHANNELS, "passed": bool(c["lossless"] and c["kept_up"] and rec_ok),
            "lossless": c["lossless"], "kept_up": c["kept_up"], "drain_s": c["drain_s"],
            "refetched": c.get("refetched", 0),
            "recording_ok": rec_ok, "recorder_lag_s": s.get("recorder_lag_s"), "stop_s": s.get("finish_s"),
            "producer_cpu_pct": s["producer_cpu_pct"], "consumer_cpu_pct": s["consumer_cpu_pct"][0]}


def ladders(variants: dict, rates, duration, bisect_steps, log, amps: Services) -> dict:
    """Climb ``rates`` with every variant in turn (alternating at each rung) until each fails, then bisect.

    A rate that was lossless but not kept up is tried once more before it
    counts as failed (near the limit single runs are bistable, see
    amp_bench.find_max_throughput); a lossy run fails its rate at once.
    mushu's runs are sessions of the long-lived service in ``amps``; one
    that fails (:class:`ServiceFailed`) ends the ladders and the bench.
    """
    runs = {v: [] for v in variants}

    def passes(v, fs):
        for _ in range(2):
            try:
                r = throughput_run(variants[v]["system"], fs, duration, amps, variants[v].get("recorder", False))
                log(f"  throughput {v:14} {r['rate'] / 1e6:8.1f} M/s  {'PASS' if r['passed'] else 'FAIL'}  "
                    f"lossless={r['lossless']} drain {r['drain_s'] * 1e3:.0f} ms  "
                    f"producer {r['producer_cpu_pct']:.0f}%  consumer {r['consumer_cpu_pct']:.0f}%")
            except ServiceFailed:
                raise
            except Exception as exc:  # overload can make a service miss its reply deadline: a failed rung
                r = {"fs": fs, "rate": fs * CHANNELS, "passed": False, "lossless": None, "error": repr(exc)[:500]}
                log(f"  throughput {v:14} {r['rate'] / 1e6:8.1f} M/s  FAIL  {r['error']}")
            runs[v].append(r)
            if r["passed"] or r["lossless"] is False:
                return r["passed"]
        return False

    best, fail = dict.fromkeys(variants), dict.fromkeys(variants)
    for fs in rates:
        for v in variants:
            if fail[v] is None:
                if passes(v, fs):
                    best[v] = fs
                else:
                    fail[v] = fs
    for v in variants:
        lo, hi = best[v], fail[v]
        for _ in range(bisect_steps if lo and hi else 0):
            mid = int(round((lo + hi) / 2, -3))
            if mid in (lo, hi):
                break
            lo, hi = (mid, hi) if passes(v, mid) else (lo, mid)
        best[v] = lo
    return {v: {"runs": runs[v], "best_fs": best[v], "best_rate": (best[v] or 0) * CHANNELS,
                "capped": fail[v] is None} for v in variants}


SCALING = (("channels", [8, 64, 256]), ("fs", [250, 1000, 10_000]), ("block_ms", [1, 5, 20]),
           ("consumers", [1, 2, 4, 8]))


def scaling_configs():
    """``(axis, value, configuration)`` of every row of the scaling table, from 64 ch x 1 kHz in 1 ms
    blocks and one consumer, one parameter changed at a time."""
    base = {"fs": 1000, "channels": CHANNELS, "block_ms": 1, "consumers": 1}
    return [(axis, value, {**base, axis: value}) for axis, values in SCALING for value in values]


def scaling(duration, log, amps: Services) -> list:
    """mushu's cost against one parameter at a time (:func:`scaling_configs`; a configuration on
    several axes is measured once and shown on each)."""
    measured, rows = {}, []
    for axis, value, cfg in scaling_configs():
        key = tuple(cfg.values())
        if key not in measured:
            s = session("mushu", duration=duration, latency=True, amps=amps, **cfg)
            measured[key] = {
                "producer_cpu_pct": s["producer_cpu_pct"],
                "consumer_cpu_pct": statistics.mean(s["consumer_cpu_pct"]),
                **{k: _median([c.get(k) for c in s["consumers"]]) for k in ("p50_us", "p99_us")},
                "lossless": all(c["lossless"] for c in s["consumers"])}
        rows.append({"axis": axis, "value": value, **measured[key]})
        log(f"  scaling {axis}={value}: producer {rows[-1]['producer_cpu_pct']:.1f}%  consumer "
            f"{rows[-1]['consumer_cpu_pct']:.1f}%  p50 {rows[-1]['p50_us']:.0f} us  "
            f"p99 {rows[-1]['p99_us']:.0f} us")
    return rows


def medians(runs: list) -> dict:
    """Per figure: the median over the runs; for a yes/no figure, whether every run said yes."""
    return {k: all(r[k] for r in runs) if isinstance(v, bool) else _median([r[k] for r in runs])
            for k, v in runs[0].items()}


def amp_services(ladder) -> Services:
    """mushu's long-lived amp services for one bench run: one per block period, each with the history
    (:func:`history_args`) of every configuration it may serve (``ladder`` for the throughput runs)."""
    served = {}
    for block_ms, fs, channels in [*((1.0, fs, ch) for fs, ch in LATENCY_CONFIGS),
                                   *((THROUGHPUT_BLOCK_MS, fs, CHANNELS) for fs in ladder),
                                   *((c["block_ms"], c["fs"], c["channels"]) for _a, _v, c in scaling_configs())]:
        served.setdefault(float(block_ms), []).append((fs, channels))
    return Services(lambda block_ms: history_args(served[float(block_ms)]))


def run(short: bool = False, runs: int | None = None, with_scaling: bool | None = None, log=print) -> dict:
    """Run every workload and return the figures, with the printed table under ``"table"``.

    mushu's producer is one long-lived amp service per block period for the
    whole run (:func:`amp_services`), but for the CPU and memory workload
    (see :func:`cpu_figures`).

    Raises
    ------
    ServiceFailed
        A long-lived amp service exited, stopped answering or was replaced.
    """
    runs = runs or (1 if short else 3)
    with_scaling = (not short) if with_scaling is None else with_scaling
    lat_s, cpu_s_, tp_s, stall_s = (1.0, 1.0, 0.5, 0.5) if short else (8.0, 5.0, 2.0, 4.0)
    n_markers, burst = (100, 1000) if short else (500, 20000)
    res = {"machine": lsl_machine(), "mode": "short" if short else "full", "runs": runs,
           "mushu_transport": "IPC" if setting_flag("MUSHU_AMP_LOCAL_IPC") else "TCP"}
    log(f"mushu vs LSL ({res['mode']}, {runs} run(s) each) on {res['machine']['cpu']}")
    ladder = SHORT_LADDER_FS if short else LADDER_FS
    (fs1, ch1), (fs2, ch2) = LATENCY_CONFIGS
    with amp_services(ladder) as amps:
        raw = res["raw"] = {
            "latency_64x1k": alternate(runs, lambda s: latency_figures(s, fs1, ch1, lat_s, amps), log,
                                       "latency 64x1k"),
            "latency_256x10k": alternate(runs, lambda s: latency_figures(s, fs2, ch2, lat_s / 2, amps), log,
                                         "latency 256x10k"),
            "cpu": alternate(runs, lambda s: cpu_figures(s, cpu_s_), log, "cpu"),
            "markers": alternate(runs, lambda s: marker_figures(s, n_markers, burst, amps), log, "markers"),
            "fanout": alternate(1 if short else 2, lambda s: fanout_figures(
                s, stall_s + (1.5 if short else 2.0), stall_s, amps), log, "fan-out"),
        }
        res["throughput"] = ladders({"mushu": {"system": "mushu"}, "lsl": {"system": "lsl"},
                                     "mushu+recorder": {"system": "mushu", "recorder": True}},
                                    ladder, tp_s, 0 if short else 2, log, amps)
        if with_scaling:
            res["scaling"] = scaling(3.0, log, amps)
    res["services"], res["services_line"] = amps.summary(), amps.describe()
    res["median"] = {w: {s: medians(rs) for s, rs in by.items()} for w, by in raw.items()}
    lossy = [f"{w} {s} run {i + 1}" for w, by in raw.items() for s, rs in by.items()
             for i, r in enumerate(rs) if not r["lossless"]]
    lossy += [f"scaling {r['axis']}={r['value']}" for r in res.get("scaling", []) if not r["lossless"]]
    # ladder rungs above the best rate may fail; every rung at or below it must have been lossless
    lossy += [f"throughput {v} at {r['fs']:.0f} Hz" for v, t in res["throughput"].items() for r in t["runs"]
              if t["best_fs"] and r["fs"] <= t["best_fs"] and r["lossless"] is False]
    res["lossy"], res["all_lossless"] = lossy, not lossy
    res["machine"]["load_avg_end"] = os.getloadavg()
    res["table"] = table(res)
    return res


def lsl_machine() -> dict:
    import pylsl
    m = machine()
    v = pylsl.library_version()
    return {**m, "pylsl": pylsl.__version__, "liblsl": f"{v // 100}.{v % 100}",
            "liblsl_build": pylsl.library_info().split("/build")[0].rsplit("/", 1)[-1]}


def table(res: dict) -> str:
    m, med, tp = res["machine"], res["median"], res["throughput"]

    def row(metric, better, mushu, lsl, fmt="{:.0f}"):
        ratio = f"{mushu / lsl:.2f}" if lsl else "–"  # nan (not measured) stays nan
        return f"| {metric} | {better} | {fmt.format(mushu)} | {fmt.format(lsl)} | {ratio} |"

    def pair(workload, key, metric, better, fmt="{:.0f}"):
        return row(metric, better, med[workload]["mushu"][key], med[workload]["lsl"][key], fmt)

    fo = med["fanout"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; load average {m['load_avg'][0]:.2f} at "
        f"start, {m['load_avg_end'][0]:.2f} at end (other processes share the cores)",
        f"software: Python {m['python']}, numpy {m['numpy']}, pyzmq {m['pyzmq']} (libzmq {m['libzmq']}), "
        f"pylsl {m['pylsl']} (liblsl {m['liblsl']}, {m['liblsl_build']})",
        f"date: {m['date']}; mode {res['mode']}: medians over {res['runs']} run(s) of each workload, "
        f"mushu and LSL alternating; mushu's consumers read over {res.get('mushu_transport', 'IPC')}",
        "",
        "| metric | better | mushu | LSL | mushu/LSL |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for wl, what in (("latency_64x1k", "64 ch x 1 kHz, 1 ms blocks"),
                     ("latency_256x10k", "256 ch x 10 kHz, 1 ms blocks")):
        for k in ("p50", "p99", "max"):
            lines.append(pair(wl, f"{k}_us", f"latency {k} (µs), {what}", "lower"))
    best = lambda v: tp[v]["best_rate"] / 1e6  # noqa: E731
    capped = lambda v: "≥ " if tp[v]["capped"] else ""  # noqa: E731
    lines += [
        f"| highest lossless rate (M samples/s), 64 ch, 1 consumer | higher | {capped('mushu')}{best('mushu'):.1f} | "
        f"{capped('lsl')}{best('lsl'):.1f} | {best('mushu') / max(best('lsl'), 1e-9):.2f} |",
        f"| same, mushu with its recorder attached (LSL without) | higher | {capped('mushu+recorder')}"
        f"{best('mushu+recorder'):.1f} | {capped('lsl')}{best('lsl'):.1f} | "
        f"{best('mushu+recorder') / max(best('lsl'), 1e-9):.2f} |",
        pair("markers", "p50_us", "marker send to visible, p50 (µs)", "lower"),
        pair("markers", "p99_us", "marker send to visible, p99 (µs)", "lower"),
        pair("markers", "burst_per_s", "marker throughput, every marker seen (markers/s)", "higher"),
        pair("cpu", "producer_cpu_pct", "producer CPU, 64 ch x 1 kHz (% of a core)", "lower", "{:.1f}"),
        pair("cpu", "consumer_cpu_pct", "consumer CPU, 64 ch x 1 kHz (% of a core)", "lower", "{:.1f}"),
        pair("cpu", "producer_peak_mb", "producer peak memory (VmHWM, MiB)", "lower"),
        pair("cpu", "consumer_peak_mb", "consumer peak memory (VmHWM, MiB)", "lower"),
        pair("fanout", "others_lost", "fan-out, 8 consumers, 1 stalled: samples lost by the 7 others", "lower"),
        pair("fanout", "others_p99_us", "fan-out: p99 latency of the 7 others (µs, median)", "lower"),
        row("fan-out: the stalled consumer got every sample (1 = yes)", "higher",
            float(fo["mushu"]["stalled_lossless"]), float(fo["lsl"]["stalled_lossless"]), "{:.0f}"),
        "",
        f"every run lossless: {res['all_lossless']}" + (f" (lossy: {', '.join(res['lossy'])})" if res["lossy"] else ""),
        f"mushu's {res['services_line']}; the CPU and memory workload starts a fresh one each run (peak memory "
        "is per process)",
        "throughput: rates (64 ch, 10 ms blocks) of the ladder "
        f"{', '.join(str(r) for r in sorted({r['fs'] for t in tp.values() for r in t['runs']}))} Hz; "
        f"pass = every value exact and the consumer (and recording) complete within {DRAIN_LIMIT_S:g} s "
        "of the producer stopping; '≥' = the ladder's top passed",
    ]
    if "scaling" in res:
        lines += ["", "mushu scaling (from 64 ch x 1 kHz, 1 ms blocks, 1 consumer; one parameter at a time):", "",
                  "| parameter | value | amp CPU % | consumer CPU % (each) | latency p50 µs | p99 µs |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['axis']} | {r['value']} | {r['producer_cpu_pct']:.1f} | {r['consumer_cpu_pct']:.1f} | "
                  f"{r['p50_us']:.0f} | {r['p99_us']:.0f} |" for r in res["scaling"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="one run of each workload, no scaling (under a minute)")
    p.add_argument("--runs", type=int, help="runs of each workload and system (default 3, short 1)")
    p.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=None,
                   help="measure mushu's scaling table (default: in full mode only)")
    p.add_argument("--json", help="also write every figure to this file")
    p.add_argument("--tcp", action="store_true", help="mushu's consumers read over TCP, not the local IPC endpoint")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        spec = json.loads(a.worker)
        WORKERS[spec["role"]](spec, Commands())
        return 0
    if a.tcp:  # inherited by the amp service and the workers
        os.environ["MUSHU_AMP_LOCAL_IPC"] = "0"
    try:
        res = run(short=a.short, runs=a.runs, with_scaling=a.scaling)
    except ServiceFailed as exc:
        return fail_loudly(exc)
    print()
    print(res["table"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump({k: v for k, v in res.items() if k != "table"}, f, indent=1, default=str)
    return 0 if res["all_lossless"] else 1


if __name__ == "__main__":
    sys.exit(main())

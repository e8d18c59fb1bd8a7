"""Soak and chaos harness for mushu under ``mushu up`` (a benchmark, not a test).

Usage::

    python bench/soak.py                 # 30 minutes
    python bench/soak.py --minutes 10
    python bench/soak.py --short         # one cycle, 60-90 s: correctness only (CI)
    python bench/soak.py --short --json soak.json --keep DIR

A lab starts ``mushu up`` on Monday and runs experiment after experiment
against the same services. This does that, with its own run directory, data
directory, ``mushu.toml`` and free loopback ports in a temporary directory
(no inherited ``MUSHU_*`` variable), so it never meets tests or other
developers' services on the same machine.

**Sessions.** Client sessions follow each other, each a process of its own
(this script with ``--worker``) that calls ``get_amp("rampamp")``,
``configure``, ``start`` (with a recording name in some) and ``get_data`` in
a loop, checking every value against the ramp. A cycle (``CYCLE``) goes
through 1 kHz x 8 up to 100 kHz x 64 and 2 kHz x 256; half of its sessions
end with ``stop()`` and ``close()``, half are SIGKILLed mid-stream. Beside
some, a read-only client joins the running amp with ``start()`` (it never
configures) and checks every value as well. ``--short`` runs one cycle;
otherwise cycles follow until ``--minutes`` are up.

**Markers.** During most sessions a flood sends ``--marker-rate`` markers/s
(2000), half over TCP and half over UDP, each with a unique label, with lines of
invalid UTF-8 (published with U+FFFD and counted ``invalid_utf8``, as the
markers service documents) and overlong lines (refused and counted
``too_long``) mixed in. A raw subscriber (the observer) notes what the
markers service published, for evidence.

**Chaos.** During some recordings (20 kHz x 64 with a flood) the recorder is
SIGKILLed twice, or the markers service once, and once per run the amp; a
killed client's recording is followed by a session without one, after
which a recording still running is finished through the recorder's control
socket and checked.

**Checks** (each failure is printed with what was expected, what happened
and the evidence):

- every value every client got equals the ramp; samples are lost only where
  the client says so (``GapWarning``), and every such warning has its gap;
- every valid marker arrives exactly once in every consumer that ran across
  its flood (each client, the recording), but for those sent from
  ``KILL_MARGIN_S`` before a markers-service kill until it answers again and
  those sent up to ``UNREAD_S`` before it that it never published (they died
  unread with it, and are counted); overlong ones never; every consumer puts every marker on the
  same sample (absolute sample of the amp session); the markers service's
  counters grow by what was sent;
- every recording is complete, holds bit-exact ramp values, NaN exactly
  where its meta lists gaps, the samples and markers the client got, only
  amp sessions of its own client, and was finished within ``FINISH_S`` of
  ``stop()``;
- no warning that is not true (a ``GapWarning`` without a gap, a
  ``ServiceWarning`` or ``RecordingWarning`` while every service answered, any
  security warning with security off) and no exception in a client;
- no consumer silent for more than ``SILENCE_S`` while data flows (a client
  for the time its get_data calls take to return data, the recorder between
  answers or between samples written, counted from a killed service's
  return); a silence that a wait for a CPU explains (a client's main
  thread's; the recorder's main thread's and the watching thread's, added
  up) is listed apart, with the services' waits and the load average (the
  machine is shared);
- no service exit but those the harness caused; RSS and open descriptors of
  every service process do not grow by more than ``GROWTH`` after warm-up
  (one whole cycle, and for the markers service a full history), measured at
  the end of each cycle (threads are reported).

The table at the end counts sessions, samples checked, markers sent and
received, kills, recordings, exits, RSS/fd/threads per service and
failures; the exit status is 1 if anything failed.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field

import numpy as np
import psutil
import zmq

import mushu_client
from mushu_amp.drivers.rampamp import RAMP_MODULUS, ramp
from mushu_cli import supervise
from mushu_client import RecordingError
from mushu_core.control import ControlClient
from mushu_core.errors import ServiceUnavailable
from mushu_core.fetch import history_markers
from mushu_core.recordings import GAP_LABEL, load
from mushu_core.wire import Marker, decode_message, marker_topic

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from amp_bench import CHECK_ROWS, free_port, machine  # noqa: E402  (bench/'s shared helpers)

#: One cycle of sessions: rate, how it ends, a read-only client beside it, a
#: marker flood, a recording, and which services are killed during it.
CYCLE = [
    dict(fs=1000, channels=8, end="stop", reader=True, flood=True, record=True),
    dict(fs=10_000, channels=64, end="kill", reader=False, flood=True, record=False),
    dict(fs=100_000, channels=64, end="stop", reader=True, flood=True, record=False),
    dict(fs=2000, channels=256, end="kill", reader=True, flood=True, record=True),
    dict(fs=50_000, channels=64, end="kill", reader=False, flood=True, record=False),
    dict(fs=20_000, channels=64, end="stop", reader=False, flood=True, record=True, chaos=("recorder", "recorder")),
    dict(fs=5000, channels=32, end="kill", reader=True, flood=False, record=False),
    dict(fs=20_000, channels=64, end="stop", reader=True, flood=True, record=True, chaos=("markers",)),
]
#: The amp is killed once per run, after the markers service, in this session of this cycle.
AMP_KILL = {"short": (0, 7), "long": (1, 7)}
#: In the long run the chaos sessions kill services in every CHAOS_EVERY-th cycle only, so that
#: every service also lives several cycles and its growth can be judged.
CHAOS_EVERY = 4
FINISH_S = 2.0
SILENCE_S = 1.0
GROWTH = 0.20
#: Markers sent this long before a markers-service kill, until it answers again, may die with it.
KILL_MARGIN_S = 0.2
#: And so may those sent up to this long before it that it never published: unread when it was killed.
UNREAD_S = 1.0
#: After a flood, time for its last markers to reach every consumer.
MARKER_SETTLE_S = 1.0
#: Every how many markers an invalid-UTF-8 line, and an overlong line, is sent.
INVALID_EVERY, OVERLONG_EVERY = 40, 97
OVERLONG_BYTES = 5000
SERVICES = ("amp", "markers", "recorder")
#: A get_data call longer than this has its stack taken (the innermost STACK_FRAMES frames).
STACK_AFTER_S, STACK_FRAMES = 0.6, 8


def now() -> float:
    return time.monotonic()


def runqueue_s(pid: int | None = None) -> float:
    """Seconds the threads of process ``pid`` have waited for a CPU while runnable, added up (Linux
    schedstat); without ``pid``, the calling thread's."""
    paths = ["/proc/thread-self/schedstat"] if pid is None else \
        [f"/proc/{pid}/task/{task}/schedstat" for task in os.listdir(f"/proc/{pid}/task")]
    total = 0
    for path in paths:
        try:
            with open(path) as f:
                total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


# ---------------------------------------------------------------------------
# the client session process (--worker)


class Lines:
    """Append-only JSON lines, one write each, so a SIGKILLed worker leaves all but the line it was writing."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, obj):
        os.write(self.fd, (json.dumps(obj, default=_plain) + "\n").encode())


def _plain(obj):
    return obj.item() if hasattr(obj, "item") else str(obj)


class RampCheck:
    """Follow one client's returned samples through the ramp: runs of (session, sample) and every error.

    Parameters
    ----------
    channels : int
    session : str
        The amp session the client starts in.
    k : int or None
        Its first sample; None: from the first value, at or after ``lower``.
    lower : int
    """

    def __init__(self, channels: int, session: str, k: int | None, lower: int = 0):
        self.channels, self.session, self.k, self.lower = channels, session, k, lower
        self.period = RAMP_MODULUS // channels
        self.pos = 0
        self.runs: list[list] = []      # [position, session, first sample, n]
        self.new_runs: list[list] = []  # runs begun since the last report
        self.pending_gaps: list[tuple[int, int]] = []
        self.errors: list[dict] = []
        self.false_gaps: list[dict] = []

    def _run(self, n: int):
        if not n:
            return
        last = self.runs[-1] if self.runs else None
        if last and last[1] == self.session and last[2] + last[3] == self.k and last[0] + last[3] == self.pos:
            last[3] += n
        else:
            run = [self.pos, self.session, self.k, n]
            self.runs.append(run)
            self.new_runs.append(run)
        self.pos += n
        self.k += n

    def restart(self, session: str):
        self.session, self.k = session, 0

    def take(self, chunk: np.ndarray):
        """Check ``chunk`` (the rows one get_data call returned)."""
        n = len(chunk)
        if not n:
            return
        if chunk.ndim != 2 or chunk.shape[1] != self.channels:
            self.errors.append({"session": self.session, "sample": self.k, "got": f"shape {chunk.shape}",
                                "expected": f"(n, {self.channels})"})
            self.pos += n
            return
        if self.k is None:  # joined: the first value says which sample, after `lower`
            base = int(chunk[0, 0]) // self.channels
            self.k = self.lower + (base - self.lower) % self.period
        i = 0
        while i < n:
            expected = ramp(self.k, min(n - i, CHECK_ROWS), self.channels)
            bad = np.flatnonzero((chunk[i:i + len(expected)] != expected).any(axis=1))
            if not len(bad):
                self._run(len(expected))
                i += len(expected)
                continue
            r = int(bad[0])
            self._run(r)
            i += r
            for g in [g for g in self.pending_gaps if g[0] < self.k]:  # declared, but the data went on
                self.false_gaps.append({"session": self.session, "sample": g[0], "lost": g[1], "data_at": self.k})
                self.pending_gaps.remove(g)
            if self.pending_gaps and self.pending_gaps[0][0] == self.k:
                self.k += self.pending_gaps.pop(0)[1]
                if np.array_equal(chunk[i], ramp(self.k, 1, self.channels)[0]):
                    continue
            got = chunk[i]
            inferred = self.k + (int(got[0]) // self.channels - self.k) % self.period
            self.errors.append({"session": self.session, "sample": self.k, "got": got[:4].tolist(),
                                "expected": expected[r, :4].tolist(),
                                "looks_like_sample": inferred if np.array_equal(
                                    got, ramp(inferred, 1, self.channels)[0]) else None})
            if self.errors[-1]["looks_like_sample"] is not None:
                self.k = inferred  # a jump (lost or repeated samples without a warning): follow the data
            else:
                self.pos += 1
                self.k += 1
                i += 1

    def settle(self):
        """Gaps declared that the data never showed."""
        for g in self.pending_gaps:
            if self.k is not None and g[0] < self.k:
                self.false_gaps.append({"session": self.session, "sample": g[0], "lost": g[1], "data_at": self.k})
        self.pending_gaps = [g for g in self.pending_gaps if self.k is None or g[0] >= self.k]


RESTART_RE = re.compile(r"the amp restarted \(session \w+ -> (\w+)\): (\d+) samples were not acquired after "
                        r"sample (\d+)")


def worker(spec: dict, out_path: str) -> int:
    """One client session: the primary (configures, starts, stops) or a read-only client beside it.

    Prints ``reading`` once data flows; ends when a line arrives on standard
    input (or is SIGKILLed). Everything it sees goes to ``out_path`` as it
    happens.
    """
    out = Lines(out_path)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    primary = spec["role"] == "primary"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        amp = mushu_client.get_amp("rampamp")
        if primary:
            amp.stop()  # an earlier client that was killed left it running
            amp.configure(fs=spec["fs"], channels=spec["channels"])
        before = amp.status()
        t0 = now()
        amp.start(spec.get("record"))
        status = amp.status()
        fs = amp.get_sampling_frequency()
        check = RampCheck(len(amp.get_channels()), status["session"], 0 if primary else None,
                          before["next_sample"] if before["session"] == status["session"] else 0)
        out.write({"start": {"t": t0, "start_s": now() - t0, "session": status["session"], "fs": fs,
                             "channels": check.channels, "recording": amp.recording}})
        n_warn = n_gaps = 0
        last_data = last_line = None
        exceptions = 0
        calls = {"n": 0, "longest": 0.0, "cpu": time.process_time(), "since": None, "stacks": [], "rq": runqueue_s(),
                 "inside": 0.0}
        main_thread = threading.get_ident()

        def watchdog():  # where a long get_data call is: evidence for a silence
            while True:
                time.sleep(0.1)
                since = calls["since"]
                if since is not None and now() - since > STACK_AFTER_S and len(calls["stacks"]) < 3:
                    frame = sys._current_frames().get(main_thread)
                    if frame is not None and calls["since"] == since:
                        calls["stacks"].append([round(now() - since, 2), "".join(
                            traceback.format_stack(frame)[-STACK_FRAMES:])])
                        calls["since"] = None if len(calls["stacks"]) >= 3 else since + 0.5
        threading.Thread(target=watchdog, daemon=True).start()

        def call():
            nonlocal n_warn, n_gaps, last_data, last_line, exceptions
            line = {}
            t_call = calls["since"] = now()
            try:
                data, markers = amp.get_data()
            except Exception as exc:  # noqa: BLE001 - every exception is a finding
                exceptions += 1
                out.write({"t": now(), "p": check.pos, "exc": f"{type(exc).__name__}: {exc}"})
                time.sleep(0.05)
                return None
            t = now()
            calls["since"] = None
            calls["n"] += 1
            calls["inside"] += t - t_call
            calls["longest"] = max(calls["longest"], t - t_call)
            new_warnings, n_warn = caught[n_warn:], len(caught)
            new_gaps, n_gaps = [tuple(g) for g in amp.gaps[n_gaps:]], len(amp.gaps)
            for w in new_warnings:
                m = RESTART_RE.search(str(w.message))
                if m:
                    gap = (int(m.group(3)), int(m.group(2)))
                    if gap in new_gaps:
                        new_gaps.remove(gap)
                    check.restart(amp.status()["session"])
            check.pending_gaps.extend(new_gaps)
            p0 = check.pos
            check.take(data)
            if new_warnings:
                line["w"] = [[w.category.__name__, str(w.message)] for w in new_warnings]
            if new_gaps:
                line["gaps"] = new_gaps
            if markers:
                line["m"] = [[label, p0 + round(ms * fs / 1000.0)] for ms, label in markers]
            if check.new_runs:
                line["runs"], check.new_runs = check.new_runs, []
            if check.errors:
                line["bad"], check.errors = check.errors[:5], []
            if check.false_gaps:
                line["false_gaps"], check.false_gaps = check.false_gaps, []
            if len(data):  # silent: the time get_data took to return data (not this script's own checking)
                if last_data is not None and calls["inside"] > SILENCE_S / 2:
                    line["silence"] = [t - calls["inside"], t, calls["n"], calls["longest"],
                                       time.process_time() - calls["cpu"], calls["stacks"], runqueue_s() - calls["rq"]]
                last_data = t
                calls.update(n=0, longest=0.0, cpu=time.process_time(), stacks=[], rq=runqueue_s(), inside=0.0)
            if line or last_line is None or t - last_line > 0.2:
                out.write({"t": t, "p": check.pos, **line})
                last_line = t
            return data

        while not stop.is_set() and exceptions < 50:
            data = call()
            if data is not None and len(data) and check.pos == len(data):
                print("reading", flush=True)
        end = {"t": now()}
        last_data = None  # stop() takes its time: not a silence of the stream
        if primary:
            t = now()
            try:
                amp.stop()
            except RecordingError as exc:
                end["stop_error"] = str(exc)
            end["stop_s"] = now() - t
            while True:  # every sample up to the stop
                data = call()
                if data is not None and not len(data):
                    break
                if exceptions >= 50:
                    break
            end["recording_result"] = amp.recording_result
        check.settle()
        end.update(marker_counts=amp.marker_counts, lost_samples=amp.lost_samples, gaps=amp.gaps,
                   false_gaps=check.false_gaps, pending_gaps=check.pending_gaps, bad_messages=amp.bad_messages)
        out.write({"t": now(), "p": check.pos, "runs": check.new_runs, "end": end})
        amp.close()
    return 0


# ---------------------------------------------------------------------------
# what the harness knows and found


@dataclass
class Failure:
    what: str
    expected: str
    got: str
    evidence: str
    key: str | None = None   # failures with the same key are one finding, printed once
    more: list = field(default_factory=list)

    def __str__(self):
        text = f"FAIL {self.what}\n  expected: {self.expected}\n  got:      {self.got}\n  evidence: {self.evidence}"
        if self.more:
            text += f"\n  and {len(self.more)} more like it: " + "\n    ".join(
                f"{got}; {evidence[:300]}" for got, evidence in self.more[:4]) + (" ..." if len(self.more) > 4 else "")
        return text


@dataclass
class Kill:
    service: str
    pid: int
    t: float
    t_back: float | None = None
    new_pid: int | None = None
    session: int | None = None


@dataclass
class Flood:
    index: int
    session: int
    t_start: float = 0.0
    t_end: float = 0.0
    sent: list = field(default_factory=list)       # (label as published, kind, transport, t)
    unsent: int = 0
    counts_before: dict | None = None
    counts_after: dict | None = None
    covered: set = field(default_factory=set)    # consumers that ran across it, judged one by one


@dataclass
class Consumer:
    """What one client process saw, read back from its output file."""

    name: str
    session: int
    role: str
    fs: float = 0.0
    channels: int = 0
    start: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)
    markers: list = field(default_factory=list)    # (label, position)
    warnings: list = field(default_factory=list)   # (t, category, message)
    exceptions: list = field(default_factory=list)
    bad: list = field(default_factory=list)
    false_gaps: list = field(default_factory=list)
    silences: list = field(default_factory=list)
    end: dict | None = None
    last_t: float = 0.0
    pos: int = 0
    t_first_data: float | None = None
    t_until: float = 0.0        # when the harness ended it
    killed: bool = False
    returncode: int | None = None
    stderr: str = ""

    @classmethod
    def read(cls, path: str, **kw) -> "Consumer":
        c = cls(**kw)
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            return c
        for raw in text.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # the line a SIGKILL cut
            if "start" in line:
                c.start = line["start"]
                c.fs, c.channels = line["start"]["fs"], line["start"]["channels"]
                continue
            c.last_t, c.pos = line["t"], line["p"]
            for run in line.get("runs", ()):
                if c.t_first_data is None:
                    c.t_first_data = line["t"]
                c.runs.append(run)
            c.markers += [tuple(m) for m in line.get("m", ())]
            c.warnings += [(line["t"], cat, msg) for cat, msg in line.get("w", ())]
            if "exc" in line:
                c.exceptions.append((line["t"], line["exc"]))
            c.bad += line.get("bad", [])
            c.false_gaps += line.get("false_gaps", [])
            if "silence" in line:
                c.silences.append(line["silence"])
            if "end" in line:
                c.end = line["end"]
                c.false_gaps += line["end"].get("false_gaps", [])
        # a run was written when it began: it lasts until the next one, the last until the last position
        for run, nxt in zip(c.runs, c.runs[1:]):
            run[3] = nxt[0] - run[0]
        if c.runs:
            c.runs[-1][3] = max(c.runs[-1][3], c.pos - c.runs[-1][0])
        return c

    def place(self, position: int) -> tuple[str, int] | None:
        """(amp session, sample) of a returned position."""
        starts = [r[0] for r in self.runs]
        i = bisect.bisect_right(starts, position) - 1
        if i < 0:
            return None
        pos, session, k0, n = self.runs[i]
        if position >= pos + n and i + 1 < len(self.runs):
            return None
        return session, k0 + position - pos

    def samples(self) -> dict[str, list[tuple[int, int]]]:
        """Intervals ``[first, end)`` of samples returned, by amp session."""
        out: dict[str, list] = {}
        for _pos, session, k0, n in self.runs:
            out.setdefault(session, []).append((k0, k0 + n))
        return out

    def placed_markers(self) -> dict[str, list]:
        """label -> [(session, sample), ...] (more than one: doubled)."""
        out: dict[str, list] = {}
        for label, position in self.markers:
            out.setdefault(label, []).append(self.place(position))
        return out


def wait_between(waits: list[tuple[float, float]], start: float, end: float) -> float:
    """Growth of a cumulative CPU wait ``[(t, seconds)]`` from the last reading at or before ``start`` to
    the first at or after ``end`` (0 if there are none; a counter that fell, a new process, counts from 0)."""
    before = [w for t, w in waits if t <= start]
    after = [w for t, w in waits if t >= end]
    if not before or not after:
        return 0.0
    return max(0.0, after[0] - before[-1])


def intervals_mask(intervals, length: int) -> np.ndarray:
    mask = np.zeros(length, bool)
    for a, b in intervals:
        mask[max(0, a):max(0, min(b, length))] = True
    return mask


def first_runs(mask: np.ndarray, most: int = 3) -> str:
    """The first ``most`` runs of True in ``mask``, as 'a-b' sample ranges."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return ""
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]]
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in list(zip(starts, ends))[:most])
    return text + (f" (+{len(starts) - most} more runs)" if len(starts) > most else "")


# ---------------------------------------------------------------------------
# the services


class Services:
    """``mushu up`` in a temporary directory of its own, and what the harness does to it."""

    def __init__(self, root: str):
        self.root = root
        self.data_dir = os.path.join(root, "data")
        os.makedirs(self.data_dir)
        ep = {name: f"tcp://127.0.0.1:{free_port()}" for name in
              ("amp_data", "amp_control", "markers_data", "markers_control", "markers_ingress",
               "recorder_control")}
        self.port = free_port()
        self.run_dir = os.path.join(root, "run")
        self.config = os.path.join(root, "mushu.toml")
        with open(self.config, "w") as f:
            f.write(f'[amp]\ndata = "{ep["amp_data"]}"\ncontrol = "{ep["amp_control"]}"\n\n'
                    f'[markers]\ndata = "{ep["markers_data"]}"\ncontrol = "{ep["markers_control"]}"\n'
                    f'ingress = "{ep["markers_ingress"]}"\nport = {self.port}\n\n'
                    f'[recorder]\ncontrol = "{ep["recorder_control"]}"\ndata_dir = "{self.data_dir}"\n\n'
                    f'[run]\ndir = "{self.run_dir}"\n')
        self.endpoints = ep
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MUSHU_")}
        self.env.update(MUSHU_CONFIG=self.config, PYTHONPATH=os.pathsep.join(
            [HERE, *filter(None, [os.environ.get("PYTHONPATH")])]))
        self.kills: list[Kill] = []
        self.lock = threading.Lock()

    def mushu(self, *args, timeout=90) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mushu_cli", *args], env=self.env, cwd=self.root,
                              capture_output=True, text=True, timeout=timeout)

    def rundir(self):
        return supervise.RunDir(self.run_dir)

    def processes(self) -> dict:
        return supervise.processes(self.rundir()) or {}

    def answers(self, name: str, timeout: float = 0.5) -> bool:
        ctl = ControlClient(self.endpoints[f"{name}_control"], timeout, name)
        try:
            ctl.call("ping")
            return True
        except ServiceUnavailable:
            return False
        finally:
            ctl.close()

    def kill(self, name: str, session: int, log) -> Kill:
        """SIGKILL service ``name``; return once supervisord has started it again and it answers."""
        info = self.processes().get(name, {})
        pid = info.get("pid")
        if not pid or info.get("statename") != "RUNNING":
            raise RuntimeError(f"cannot kill {name}: supervisord reports {info}")
        k = Kill(name, pid, now(), session=session)
        with self.lock:
            self.kills.append(k)
        os.kill(pid, signal.SIGKILL)
        deadline = now() + 30
        while now() < deadline:
            info = self.processes().get(name, {})
            if info.get("statename") == "RUNNING" and info.get("pid") not in (None, 0, pid) and self.answers(name):
                k.t_back, k.new_pid = now(), info["pid"]
                log(f"    killed {name} (pid {pid}); back as pid {k.new_pid} after {k.t_back - k.t:.1f} s")
                return k
            time.sleep(0.05)
        log(f"    killed {name} (pid {pid}); not back within 30 s")
        return k

    def windows(self, name: str, before: float = 0.0, after: float = 0.0) -> list[tuple[float, float]]:
        """Times from a kill of ``name`` until it answered again (widened by ``before``/``after``)."""
        return [(k.t - before, (k.t_back or float("inf")) + after) for k in self.kills if k.service == name]

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            with open(self.rundir().log(name), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def inside(t: float, windows) -> bool:
    return any(a <= t <= b for a, b in windows)


def overlaps(a: float, b: float, windows) -> bool:
    return any(a <= y and x <= b for x, y in windows)


class Sampler(threading.Thread):
    """Every second: supervisord's pids and each service process's RSS, descriptors and threads.

    A pid that changes without a kill by the harness is an unexpected exit.
    """

    def __init__(self, services: Services, period: float = 1.0):
        super().__init__(daemon=True)
        self.services, self.period = services, period
        self.samples: list[tuple] = []     # (t, service, pid, rss, fds, threads, runqueue s)
        self.load: list[tuple[float, float]] = []  # (t, 1-minute load average)
        self.marks: list[tuple] = []       # (cycle, t, service, pid, rss, fds, threads)
        self.started: dict[int, float] = {}  # pid -> first seen
        self.current: dict[str, int] = {}
        self.exits: list[dict] = []
        self.halt = threading.Event()

    def measure(self) -> dict:
        found = {}
        for name, info in self.services.processes().items():
            pid = info.get("pid")
            if info.get("statename") in ("FATAL", "EXITED", "BACKOFF") or not pid:
                found[name] = (None, info)
                continue
            try:
                p = psutil.Process(pid)
                with p.oneshot():
                    found[name] = (pid, info, p.memory_info().rss, p.num_fds(), p.num_threads(), runqueue_s(pid))
            except psutil.Error:
                found[name] = (None, info)
        return found

    def step(self):
        t = now()
        self.load.append((t, os.getloadavg()[0]))
        for name, got in self.measure().items():
            pid, info = got[0], got[1]
            old = self.current.get(name)
            if pid is None:
                if old is not None and not self._expected(name, old):
                    self._exit(name, old, info, t)
                    self.current[name] = None
                continue
            self.started.setdefault(pid, t)
            if old is not None and pid != old and not self._expected(name, old):
                self._exit(name, old, info, t)
            self.current[name] = pid
            self.samples.append((t, name, pid, *got[2:]))

    def _expected(self, name: str, pid: int) -> bool:
        with self.services.lock:
            return any(k.service == name and k.pid == pid for k in self.services.kills)

    def _exit(self, name, pid, info, t):
        if any(e["pid"] == pid for e in self.exits):
            return
        self.exits.append({"service": name, "pid": pid, "t": t, "state": info.get("statename"),
                           "description": info.get("description"), "exitstatus": info.get("exitstatus"),
                           "spawnerr": info.get("spawnerr"), "log": self.services.log_tail(name)})

    def around(self, a: float, b: float) -> str:
        """Each service's wait for a CPU over about [a, b] (whole sampling periods), and the load."""
        parts = []
        for name in SERVICES:
            ss = [s for s in self.samples if s[1] == name]
            before = [s for s in ss if s[0] <= a]
            after = [s for s in ss if s[0] >= b]
            if before and after and before[-1][2] == after[0][2]:
                x, y = before[-1], after[0]
                parts.append(f"{name}'s threads waited {y[6] - x[6]:.2f} s for a CPU in {y[0] - x[0]:.1f} s")
        load = [x for t, x in self.load if a - 1 <= t <= b + 1]
        return "; ".join(parts + ([f"load average {max(load):.1f}"] if load else []))

    def mark(self, cycle: int):
        """A sample at a quiet moment (between cycles), for the growth check."""
        t = now()
        for name, got in self.measure().items():
            if got[0] is not None:
                self.marks.append((cycle, t, name, got[0], *got[2:]))

    def run(self):
        while not self.halt.wait(self.period):
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - a sampling hiccup must not end the soak
                print(f"sampler: {type(exc).__name__}: {exc}", file=sys.stderr)


class Observer(threading.Thread):
    """A raw subscriber to the markers service: which marker was published as (session, seq), and when."""

    def __init__(self, services: Services):
        super().__init__(daemon=True)
        self.services = services
        self.published: dict[str, list] = {}   # label -> [(session, seq, t_ns, t_seen)]
        self.by_seq: dict[tuple[str, int], str] = {}
        self.halt = threading.Event()
        self.ready = threading.Event()

    def run(self):
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(self.services.endpoints["markers_data"])
        sub.setsockopt(zmq.SUBSCRIBE, marker_topic("markers"))
        ctl = ControlClient(self.services.endpoints["markers_control"], 1.0, "markers")
        last: dict[str, int] = {}
        self.ready.set()

        def note(m):
            if (m.session, m.seq) not in self.by_seq:
                self.by_seq[(m.session, m.seq)] = m.label
                self.published.setdefault(m.label, []).append((m.session, m.seq, m.t_ns, now()))
            last[m.session] = max(last.get(m.session, -1), m.seq)

        while not self.halt.is_set():
            if not sub.poll(100):
                continue
            try:
                m = decode_message(sub.recv_multipart())
            except Exception:  # noqa: BLE001 - not a marker: nothing to note
                continue
            if not isinstance(m, Marker):
                continue
            if m.seq > last.get(m.session, -1) + 1:  # missed some: the history has them
                for old in history_markers(ctl, "markers", m.session, last.get(m.session, -1) + 1, m.seq):
                    note(old)
            note(m)
        sub.close()
        ctl.close()


class RecorderWatch(threading.Thread):
    """Asks the recorder for its status every quarter second while a recording runs.

    Each poll also notes how long, in all, the recorder's main thread and
    this thread have waited for a CPU (schedstat), so that a silence the
    machine's load explains is told apart from one of the recorder's own.
    """

    def __init__(self, services: Services):
        super().__init__(daemon=True)
        self.services = services
        self.polls: list[tuple] = []  # (t, answered, next_sample or None, base or None, seconds, CPU waits)
        self.halt = threading.Event()

    def run(self):
        ctl = ControlClient(self.services.endpoints["recorder_control"], 1.0, "recorder")
        pid = None
        while not self.halt.wait(0.25):
            t = now()
            try:
                st = ctl.call("status")
                pid, rec = st.get("pid"), st.get("recording") or {}
                self.polls.append((t, True, rec.get("next_sample"), rec.get("base"), now() - t, self.waited(pid)))
            except ServiceUnavailable:
                self.polls.append((t, False, None, None, now() - t, self.waited(pid)))
        ctl.close()

    @staticmethod
    def waited(pid: int | None) -> float:
        """Seconds this thread and the recorder's main thread have waited for a CPU, added up."""
        total = runqueue_s()
        if pid is not None:
            try:
                with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
                    total += int(f.read().split()[1]) / 1e9
            except (OSError, ValueError, IndexError):
                pass  # it was killed: its wait is not known
        return total


# ---------------------------------------------------------------------------
# marker floods


def flood_lines(flood: Flood, transport: str, i: int) -> tuple[bytes, str, str]:
    """The i-th line of a flood over ``transport``: (bytes, label as published, kind)."""
    label = f"f{flood.index}{transport[0]}{i}"
    if i % OVERLONG_EVERY == OVERLONG_EVERY - 1:
        return (f"long-{label}-".encode() + b"x" * OVERLONG_BYTES + b"\n"), f"long-{label}-", "overlong"
    if i % INVALID_EVERY == INVALID_EVERY - 1:
        raw = f"bad-{label}-".encode() + b"\xff\xc3(-end"
        return raw + b"\n", raw.decode("utf-8", "replace"), "invalid_utf8"
    return (label + "\n").encode(), label, "valid"


class FloodSender(threading.Thread):
    """Sends ``rate`` markers/s, half over TCP and half over UDP, until stopped."""

    def __init__(self, flood: Flood, services: Services, rate: float):
        super().__init__(daemon=True)
        self.flood, self.services, self.rate = flood, services, rate
        self.halt = threading.Event()

    def _tcp(self):
        s = socket.create_connection(("127.0.0.1", self.services.port), timeout=0.5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def run(self):
        f = self.flood
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = None
        i = 0
        tick = 0.005
        per_tick = max(1, round(self.rate / 2 * tick))
        t_next = now()
        f.t_start = now()
        while not self.halt.is_set():
            for _ in range(per_tick):
                for transport in ("tcp", "udp"):
                    raw, label, kind = flood_lines(f, transport, i)
                    t = now()
                    try:
                        if transport == "udp":
                            udp.sendto(raw, ("127.0.0.1", self.services.port))
                        else:
                            if tcp is not None and select.select([tcp], [], [], 0)[0]:
                                tcp.close()  # the service closed it (it was killed)
                                tcp = None
                            if tcp is None:
                                tcp = self._tcp()
                            tcp.sendall(raw)
                        f.sent.append((label, kind, transport, t))
                    except OSError:
                        f.unsent += 1
                        if transport == "tcp" and tcp is not None:
                            tcp.close()
                            tcp = None
                i += 1
            t_next += tick
            delay = t_next - now()
            if delay > 0:
                time.sleep(delay)
        f.t_end = now()
        if tcp is not None:
            tcp.close()
        udp.close()


# ---------------------------------------------------------------------------
# the soak


class Soak:
    def __init__(self, minutes: float, short: bool, rate: float, keep: str | None, log=print):
        self.minutes, self.short, self.rate, self.keep, self.log = minutes, short, rate, keep, log
        self.root = tempfile.mkdtemp(prefix="mushu-soak-")
        self.svc = Services(self.root)
        self.workers: list[subprocess.Popen] = []  # every client process, to end those a cut-short run leaves
        self.failures: list[Failure] = []
        self.starved: list[tuple[float, str]] = []  # silences the machine's load explains
        self.sessions: list[dict] = []
        self.floods: list[Flood] = []
        self.consumers: list[Consumer] = []
        self.recordings: list[dict] = []
        self.samples_checked = 0
        self.t0 = now()
        self.cycle_starts: list[float] = []
        #: (cycle, pid) of the markers service at the end of a cycle whose history was full (it had
        #: dropped its oldest markers): until then its memory grows with the history, by design.
        self.history_full: set[tuple[int, int]] = set()

    def fail(self, what, expected, got, evidence, key: str | None = None):
        """Note a failure; one with the key of an earlier one is added to it."""
        if key is not None:
            for f in self.failures:
                if f.key == key:
                    f.more.append((str(got), str(evidence)))
                    return
        self.failures.append(Failure(what, str(expected), str(got), str(evidence), key))

    # -- the run ---------------------------------------------------------------

    def run(self) -> dict:
        up = self.svc.mushu("up")
        if up.returncode != 0:
            raise RuntimeError(f"mushu up failed ({up.returncode}): {up.stdout}{up.stderr}")
        self.log(f"mushu up in {self.root} (markers port {self.svc.port})")
        self.sampler = Sampler(self.svc)
        self.sampler.step()
        self.sampler.start()
        self.observer = Observer(self.svc)
        self.observer.start()
        self.observer.ready.wait(5)
        try:
            deadline = self.t0 + self.minutes * 60
            cycle = 0
            while True:
                self.cycle_starts.append(now())
                for j, spec in enumerate(CYCLE):
                    self.session(cycle, j, spec)
                time.sleep(1.0)
                self.sampler.mark(cycle)
                st = self.markers_status()
                if st is not None and st["history"]["oldest_seq"] > 0:
                    self.history_full.add((cycle, st["pid"]))
                cycle += 1
                if self.short or now() + 60 > deadline:
                    break
            self.cycles = cycle
        finally:
            self.sampler.halt.set()
            self.sampler.join(5)
            self.sampler.step()
            self.observer.halt.set()
            self.observer.join(5)
            down = self.svc.mushu("down")
            if down.returncode != 0:
                self.fail("mushu down", "exit 0", f"exit {down.returncode}", down.stdout + down.stderr)
        self.analyse()
        return self.result()

    def spawn(self, spec: dict, name: str) -> tuple[subprocess.Popen, str]:
        out = os.path.join(self.root, f"{name}.jsonl")
        with open(out + ".err", "w") as err:  # the child keeps its own descriptor of it
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec), out],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                    env=self.svc.env, cwd=self.root, text=True)
        # only the live ones: a finished worker's pipes close once nothing refers to it
        self.workers = [p for p in self.workers if p.poll() is None] + [proc]
        return proc, out

    def wait_reading(self, proc, what: str, timeout: float = 30.0) -> bool:
        deadline = now() + timeout
        while now() < deadline:
            if select.select([proc.stdout], [], [], 0.1)[0]:
                line = proc.stdout.readline()
                if line.strip() == "reading":
                    return True
                if not line:
                    break
        return False  # check_consumer says what became of it

    def finish_worker(self, proc, kill: bool, timeout: float = 100.0):
        if proc.poll() is None:
            if kill:
                proc.send_signal(signal.SIGKILL)
            else:
                try:
                    proc.stdin.write("stop\n")
                    proc.stdin.flush()
                except OSError:
                    pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return "hung"
        return proc.returncode

    def session(self, cycle: int, j: int, spec: dict):
        i = len(self.sessions)
        chaos = list(spec.get("chaos", ()))
        if not self.short and cycle % CHAOS_EVERY:
            chaos = []
        if AMP_KILL["short" if self.short else "long"] == (cycle, j):
            chaos.append("amp")
        kill = spec["end"] == "kill"
        name = f"s{i:03d}"
        record = f"soak-{i:03d}" if spec["record"] else None
        info = {"index": i, "cycle": cycle, "spec": spec, "chaos": chaos, "record": record,
                "what": f"session {i} ({spec['fs'] / 1000:g} kHz x {spec['channels']}, "
                        f"{'SIGKILLed' if kill else 'stopped'}{', recording' if record else ''}"
                        f"{', reader beside' if spec['reader'] else ''}{', flood' if spec['flood'] else ''}"
                        f"{', killing ' + '+'.join(chaos) if chaos else ''})",
                "t_start": now()}
        self.sessions.append(info)
        self.log(f"[{now() - self.t0:6.1f} s] {info['what']}")
        watch = None
        if record:
            watch = RecorderWatch(self.svc)
            watch.start()
        primary, p_out = self.spawn({"role": "primary", "fs": spec["fs"], "channels": spec["channels"],
                                     "record": record}, name + "-primary")
        workers = [("primary", primary, p_out)]
        ok = self.wait_reading(primary, f"{info['what']}: the primary client")
        if ok and spec["reader"]:
            reader, r_out = self.spawn({"role": "reader"}, name + "-reader")
            workers.append(("reader", reader, r_out))
            ok = self.wait_reading(reader, f"{info['what']}: the read-only client")
        read_s = 2.0 if self.short else 4.0
        t_reading = now()
        flood = None
        if ok:
            time.sleep(0.3)
            if spec["flood"]:
                flood = Flood(len(self.floods), i)
                self.floods.append(flood)
                flood.counts_before = self.markers_counts()
                sender = FloodSender(flood, self.svc, self.rate)
                sender.start()
            time.sleep(0.5)
            for target in chaos:
                try:
                    self.svc.kill(target, i, self.log)
                except RuntimeError as exc:
                    self.fail("service not running", f"{target} RUNNING under supervisord", str(exc), info["what"])
                time.sleep(1.0)
            if flood is not None:  # on through the kills and the restarts
                time.sleep(max(0.0, (1.5 if self.short else 3.0) - (now() - flood.t_start)))
                sender.halt.set()
                sender.join()
                time.sleep(MARKER_SETTLE_S)
                flood.counts_after = self.markers_counts(settle=True)
            time.sleep(max(0.0, read_s - (now() - t_reading)))
        # the reader leaves first (it covered everything the primary did), then the primary
        ends = {}
        for role, proc, _out in reversed(workers):
            ends[role] = now()
            killed = kill and (role == "primary" or i % 4 == 3)
            proc.result = self.finish_worker(proc, killed)
        for role, proc, out in workers:
            c = Consumer.read(out, name=f"{name}-{role}", session=i, role=role)
            c.t_until = ends[role]
            c.killed = kill and (role == "primary" or i % 4 == 3)
            c.returncode = proc.result
            c.stderr = open(out + ".err").read()[-3000:]
            self.consumers.append(c)
            self.samples_checked += sum(r[3] for r in c.runs)
        info["t_end"] = now()
        if watch is not None:
            if kill:
                time.sleep(1.0)  # a killed client: what becomes of its recording?
            watch.halt.set()
            watch.join()
            self.recordings.append({"session": i, "name": record, "watch": watch.polls, "killed_client": kill,
                                    "base": os.path.join(self.svc.data_dir, record)})
        pending = [r for r in self.recordings if r.get("dangling") is None and r["killed_client"]
                   and r["session"] < i]
        for r in pending:  # a killed client's recording, one session later
            r["dangling"] = self.finish_dangling(r)
        self.log(f"[{now() - self.t0:6.1f} s]   done: " + ", ".join(
            f"{c.role} {sum(r[3] for r in c.runs)} samples, {len(c.markers)} markers"
            for c in self.consumers if c.session == i) + (f"; flood {len(flood.sent)} sent" if flood else ""))

    def markers_status(self) -> dict | None:
        ctl = ControlClient(self.svc.endpoints["markers_control"], 1.0, "markers")
        try:
            return ctl.call("status")
        except ServiceUnavailable:
            return None
        finally:
            ctl.close()

    def markers_counts(self, settle: bool = False) -> dict | None:
        """The markers service's session and counters (``settle``: once they stop changing)."""
        last = None
        for _ in range(20):
            st = self.markers_status()
            if st is None:
                return None
            got = {"session": st["session"], **st["counts"]}
            if not settle or got == last:
                return got
            last = got
            time.sleep(0.25)
        return last

    def finish_dangling(self, r: dict) -> dict:
        """A recording whose client was SIGKILLed: still running one session later? Finish it then."""
        ctl = ControlClient(self.svc.endpoints["recorder_control"], 5.0, "recorder")
        try:
            st = ctl.call("status")
            rec = st.get("recording") or {}
            if rec.get("base") != r["base"]:
                return {"running": False}
            self.log(f"    recording {r['name']} of the killed client still runs one session later "
                     f"(next_sample {rec.get('next_sample')}, session {rec.get('session')}): finishing it")
            try:
                res = ctl.request("finish", timeout=60.0, end_sample=rec["next_sample"])[0]
            except (ServiceUnavailable, RuntimeError) as exc:
                res = {"error": str(exc)}
            return {"running": True, "status": rec, "finish": res}
        finally:
            ctl.close()

    # -- analysis ----------------------------------------------------------------

    def analyse(self):
        """Every check, then every failure printed (a grouped one once, with its count)."""
        self.checks()
        for f in self.failures:
            self.log(str(f))

    def checks(self):
        self.check_exits()
        for c in self.consumers:
            self.check_consumer(c)
        for r in self.recordings:
            r["markers"] = self.recording_markers(r)
            self.check_recording(r)
        self.check_markers()
        self.check_growth()
        self.check_logs()

    def what(self, i: int) -> str:
        return self.sessions[i]["what"]

    def check_exits(self):
        for e in self.sampler.exits:
            self.fail("unexpected service exit", f"{e['service']} (pid {e['pid']}) runs until mushu down",
                      f"it exited: supervisord state {e['state']}, {e['description']}, exit status "
                      f"{e['exitstatus']}", f"at {e['t'] - self.t0:.1f} s; end of its log:\n{e['log']}")
        for k in self.svc.kills:
            if k.t_back is None:
                self.fail("service not restarted", f"supervisord restarts {k.service} after SIGKILL",
                          "it did not answer within 30 s", f"{self.what(k.session)}, pid {k.pid}")

    def check_consumer(self, c: Consumer):
        what = f"{self.what(c.session)}, {c.role} client"
        if not c.start:
            self.fail("client session did not start", f"{what} starts", f"exit {c.returncode}", c.stderr)
            return
        if c.t_first_data is None:
            self.fail("client got no data", f"{what} reads data", "no sample", c.stderr)
        if c.returncode == "hung":
            self.fail("client hung", f"{what} ends within 100 s of being told to stop", "it did not: SIGKILLed",
                      f"its last line at {c.last_t - self.t0:.1f} s; {c.stderr[-800:]}")
        elif not c.killed and (c.end is None or c.returncode != 0):
            self.fail("client session", f"{what} ends cleanly", f"exit {c.returncode}", c.stderr)
        for b in c.bad[:5]:
            self.fail("data error", f"ramp value of sample {b['sample']}", f"{b['got']}",
                      f"{what}: amp session {b['session']}, sample {b['sample']}: expected {b['expected']}"
                      + (f"; the values are those of sample {b['looks_like_sample']}"
                         if b.get("looks_like_sample") is not None else ""))
        if len(c.bad) > 5:
            self.fail("data error", "ramp values", f"{len(c.bad) - 5} more wrong values", what)
        for g in c.false_gaps:
            self.fail("false GapWarning", f"a gap of {g['lost']} samples at sample {g['sample']}",
                      f"the data went on without one (it continued at sample {g['data_at']})",
                      f"{what}: amp session {g['session']}")
        amp_down = self.svc.windows("amp", after=SILENCE_S)
        rec_down = self.svc.windows("recorder", after=2.0)
        restarts = [k for k in self.svc.kills if k.service == "amp" and c.t_first_data is not None
                    and c.t_first_data < k.t < c.t_until]
        n_restart_warnings = 0
        for t, cat, msg in c.warnings:
            ok = False
            if cat == "GapWarning" and "the amp restarted" in msg:
                ok = bool(restarts)
                n_restart_warnings += 1
            elif cat == "GapWarning" and "samples lost" in msg:
                ok = True  # checked against the data (false_gaps); a true loss is a failure of its own
                self.fail("samples lost", f"{what} gets every sample", msg, f"{what}, at {t - self.t0:.1f} s; "
                          + self.sampler.around(t - 5, t) + "".join(
                              f"; the client waited {x[6]:.1f} s for a CPU in a {x[1] - x[0]:.1f} s silence before"
                              for x in c.silences if t - 10 < x[1] <= t + 0.5))
            elif cat == "GapWarning" and "markers lost" in msg:
                ok = self.markers_really_lost(c, msg)
            elif cat == "ServiceWarning":
                ok = overlaps(t - 2 * SILENCE_S, t, self.svc.windows("amp"))
            elif cat == "RecordingWarning" and not inside(t, rec_down):
                ok = True  # the recorder did not answer in time: true, and a failure of the recorder
                self.fail("recorder did not answer the client", "the recorder answers while it runs",
                          f"{cat}: {msg}", f"{what}, at {t - self.t0:.1f} s" + self.kills_near(t, 15), key="rec warn")
            elif cat == "RecordingWarning":
                ok = True
            if not ok:
                self.fail("warning that is not true", "no warning (nothing of the kind happened)", f"{cat}: {msg}",
                          f"{what}, at {t - self.t0:.1f} s" + self.kills_near(t),
                          key="false " + re.sub(r"[0-9a-f]{32}|\d+", "N", f"{cat}: {msg}"))
        if restarts and n_restart_warnings < len(restarts):
            self.fail("amp restart not reported", f"a GapWarning for each of {len(restarts)} amp restart(s)",
                      f"{n_restart_warnings}", what)
        hits = [line for line in c.stderr.splitlines() if re.search(r"CURVE|SecurityError|Traceback", line)]
        if hits and c.start:
            self.fail("client log", "no security message (security is off) and no traceback on the client's stderr",
                      f"{len(hits)} lines", f"{what}:\n    " + "\n    ".join(hits[:6]))
        for t, exc in c.exceptions:
            self.fail("exception in get_data", "get_data returns", exc, f"{what}, at {t - self.t0:.1f} s"
                      + self.kills_near(t))
        for a, b, calls, longest, cpu, stacks, waited in c.silences:
            if b - a <= SILENCE_S or overlaps(a, b, amp_down):
                continue
            evidence = (f"{what}, for {b - a:.1f} s of get_data calls until {b - self.t0:.1f} s: {calls} calls, "
                        f"the longest {longest:.2f} s; "
                        f"the client used {cpu:.2f} s of CPU, its main thread waited {waited:.2f} s for one; "
                        + self.sampler.around(a, b) + self.kills_near(a))
            if b - a - waited <= SILENCE_S:  # it would have had data in time, had it got a CPU
                self.starved.append((b - a, evidence))
                continue
            self.fail("consumer silent", f"data at least every {SILENCE_S:g} s while the amp runs",
                      f"no data for {b - a:.1f} s", key="silent", evidence=evidence + "".join(
                          f"\n    {at:.2f} s into the call:\n" + stack.rstrip() for at, stack in stacks[:2]))
        if c.end:
            if c.end.get("stop_error"):
                self.fail("stop() failed", "stop() returns", c.end["stop_error"], what)
            if c.end.get("pending_gaps"):
                self.fail("false GapWarning", "every declared gap shows in the data",
                          f"gaps never seen: {c.end['pending_gaps']}", what)
            if c.end.get("bad_messages"):
                self.fail("bad messages", "every bus message decodes", f"{c.end['bad_messages']} did not", what)

    def kills_near(self, t: float, within: float = 5.0) -> str:
        near = [f"{k.service} killed at {k.t - self.t0:.1f} s" for k in self.svc.kills if abs(k.t - t) < within]
        return f" ({'; '.join(near)})" if near else " (no service was killed within 5 s)"

    def markers_really_lost(self, c: Consumer, msg: str) -> bool:
        """True if a 'N markers lost from seq S of markers session X' warning is borne out."""
        m = re.search(r"(\d+) markers lost from seq (\d+) of markers session (\w+)", msg)
        if not m:
            return False
        n, first, session = int(m.group(1)), int(m.group(2)), m.group(3)
        have = {label for label, _p in c.markers}
        start = c.t_first_data or c.start.get("t", 0.0)
        for seq in range(first, first + n):
            label = self.observer.by_seq.get((session, seq))
            if label is None:
                return True  # the observer did not see it either: it may well be lost
            seen = self.observer.published[label][0][3]
            if seen >= start and label not in have:
                return True
        return False

    # markers: exactly once, in every consumer that covered the flood, on the same sample

    def marker_consumers(self, i: int) -> list[tuple[str, Consumer | None, dict]]:
        """(name, client, label -> [(session, sample)]) of every consumer of session i, recording included."""
        out = []
        for c in self.consumers:
            if c.session == i:
                out.append((c.role, c, c.placed_markers()))
        for r in self.recordings:
            if r["session"] == i and r.get("markers") is not None:
                out.append(("recording", None, r["markers"]))
        return out

    def check_markers(self):
        sent_by_label = {}
        for f in self.floods:
            for label, kind, transport, t in f.sent:
                sent_by_label[label] = (f, kind, transport, t)
        uncertain_windows = self.svc.windows("markers", before=KILL_MARGIN_S, after=KILL_MARGIN_S)
        unread_windows = self.svc.windows("markers", before=UNREAD_S)

        def died(label, t):
            """Sent just before the markers service was killed, and never published: it died unread."""
            return inside(t, unread_windows) and label not in self.observer.published
        for f in self.floods:
            i = f.session
            consumers = self.marker_consumers(i)
            primary = next((c for _n, c, _m in consumers if c is not None and c.role == "primary"), None)
            for name, c, placed in consumers:
                span = (c or primary)
                if span is None or span.t_first_data is None:
                    continue
                covered = span.t_first_data <= f.t_start - 0.1 and span.t_until >= f.t_end + MARKER_SETTLE_S / 2
                if not covered:
                    continue
                f.covered.add(name)
                lost, doubled, overlong, lost_uncertain = [], [], [], 0
                for label, kind, transport, t in f.sent:
                    n = len(placed.get(label, ()))
                    if kind == "overlong":
                        if any(k.startswith(label) for k in placed):
                            overlong.append(label)
                        continue
                    if n > 1:
                        doubled.append(label)
                    if n == 0:
                        if inside(t, uncertain_windows) or died(label, t):
                            lost_uncertain += 1
                        else:
                            lost.append((label, transport, t))
                f_what = f"{self.what(i)}, {name}: flood {f.index}"
                if lost:
                    pub = [label for label, _tr, _t in lost if label in self.observer.published]
                    self.fail("lost markers", f"every marker of flood {f.index} once in the {name}",
                              f"{len(lost)} of {len(f.sent)} missing (TCP {sum(x[1] == 'tcp' for x in lost)}, "
                              f"UDP {sum(x[1] == 'udp' for x in lost)})",
                              f"{f_what}: labels {', '.join(x[0] for x in lost[:6])}"
                              f"{' ...' if len(lost) > 6 else ''}, the last {lost[-1][0]}, sent "
                              f"{lost[0][2] - f.t_start:.2f}-{lost[-1][2] - f.t_start:.2f} s into the flood; "
                              f"the markers service published {len(pub)} of them (observer)"
                              + self.seq_range(pub) + self.kills_near(lost[0][2]))
                if doubled:
                    self.fail("doubled markers", "each marker once", f"{len(doubled)} markers more than once",
                              f"{f_what}: {', '.join(doubled[:6])} at " +
                              "; ".join(str(placed[d]) for d in doubled[:3]))
                if overlong:
                    self.fail("overlong marker published", "overlong lines refused (too_long)",
                              f"{len(overlong)} published", f"{f_what}: {overlong[:3]}")
                f.__dict__.setdefault("lost_uncertain", {})[name] = lost_uncertain
            self.check_counts(f, uncertain_windows)
        self.check_same_sample(sent_by_label, uncertain_windows)

    def seq_range(self, labels) -> str:
        seqs = sorted((s, q) for label in labels for s, q, _t, _seen in self.observer.published[label])
        if not seqs:
            return ""
        return f", seq {seqs[0][1]}-{seqs[-1][1]} of markers session {seqs[0][0][:8]}"

    def check_counts(self, f: Flood, uncertain_windows):
        b, a = f.counts_before, f.counts_after
        if b is None or a is None or b["session"] != a["session"] or overlaps(f.t_start, f.t_end, uncertain_windows):
            return  # the markers service restarted during it: its counters began again
        kinds = {k: sum(1 for s in f.sent if s[1] == k) for k in ("valid", "invalid_utf8", "overlong")}
        want = {"markers": kinds["valid"] + kinds["invalid_utf8"], "invalid_utf8": kinds["invalid_utf8"],
                "too_long": kinds["overlong"]}
        got = {k: a[k] - b[k] for k in want}
        if got != want:
            self.fail("markers service counters", f"flood {f.index} counted as {want}", str(got),
                      f"{self.what(f.session)}: status counts before and after the flood")

    def check_same_sample(self, sent_by_label, uncertain_windows):
        for i in range(len(self.sessions)):
            consumers = self.marker_consumers(i)
            if len(consumers) < 2:
                continue
            ref_name, ref_c, ref = consumers[0]
            for name, c, placed in consumers[1:]:
                diffs, only_ref, only_other, moved = [], [], [], 0
                lo_hi = self.common_span(ref_c, c, i)
                for label in set(ref) | set(placed):
                    if label not in sent_by_label:
                        continue
                    a, b = ref.get(label), placed.get(label)
                    if a and b:
                        if a[0] and b[0] and a[0] != b[0]:
                            if lo_hi is not None and not (lo_hi(a[0]) and lo_hi(b[0])):
                                moved += 1  # on a sample one of them lost: the loss is the failure
                            else:
                                diffs.append((label, a[0], b[0]))
                    elif lo_hi is not None:
                        flood, _kind, _tr, t = sent_by_label[label]
                        if {ref_name, name} <= flood.covered and not inside(t, uncertain_windows):
                            continue  # judged as lost for the one without it
                        where = (a or b)[0]
                        if where is not None and lo_hi(where):
                            (only_ref if a else only_other).append((label, where))
                if diffs:
                    d = [b[1] - a[1] if a[0] == b[0] else None for _l, a, b in diffs]
                    num = [x for x in d if x is not None]
                    self.fail("markers on different samples", f"the {ref_name} and the {name} put each marker on "
                              "the same sample", f"{self.what(i)}: {len(diffs)} markers differ"
                              + (f" by {min(num):+d} to {max(num):+d} samples ({name} minus {ref_name})" if num else ""),
                              f"{self.what(i)}: " + "; ".join(
                                  f"{lab}: {ref_name} {a[1]}, {name} {b[1]} (amp session {a[0][:8]})"
                                  for lab, a, b in diffs[:4])
                              + (f"; {moved} more on samples one of them lost (not counted)" if moved else ""),
                              key=f"markers differ {ref_name} {name}")
                for missing_in, have, items in ((name, ref_name, only_ref), (ref_name, name, only_other)):
                    if items:
                        self.fail("marker in one consumer, not the other",
                                  f"the {missing_in} has every marker the {have} has on samples both returned",
                                  f"{len(items)} missing in the {missing_in}",
                                  f"{self.what(i)}: " + "; ".join(f"{lab} at sample {w[1]}" for lab, w in items[:4]))

    def common_span(self, a: Consumer | None, b: Consumer | None, i: int):
        """A test: is (session, sample) among the samples both consumers returned (None: cannot tell)."""
        spans = []
        for c in (a, b):
            if c is None:
                rec = next((r for r in self.recordings if r["session"] == i), None)
                if rec is None or rec.get("samples") is None:
                    return None
                spans.append(rec["samples"])
            else:
                spans.append(c.samples())

        def test(where):
            session, sample = where
            return all(any(x <= sample < y for x, y in s.get(session, ())) for s in spans)
        return test

    # recordings

    def recording_markers(self, r: dict):
        """label -> [(session, sample)] of a recording's markers (gap markers left out); None if unreadable."""
        try:
            rec = load(r["base"])
        except (OSError, ValueError) as exc:
            r["error"] = f"{type(exc).__name__}: {exc}"
            return None
        segs = rec.meta.get("mushu", {}).get("segments", [])
        starts = [s["file_sample"] for s in segs]
        out: dict[str, list] = {}
        for row, label in rec.marker_samples():
            if label.startswith(GAP_LABEL):
                continue
            k = bisect.bisect_right(starts, row) - 1
            where = (segs[k]["session"], segs[k]["first_sample"] + row - segs[k]["file_sample"]) if k >= 0 else None
            out.setdefault(label, []).append(where)
        return out

    def check_recording(self, r: dict):
        i = r["session"]
        what = f"{self.what(i)}: recording {r['name']}"
        client = next(c for c in self.consumers if c.session == i and c.role == "primary")
        if r.get("error"):
            self.fail("damaged recording", "a recording mushu_client.load() reads", r["error"], what)
            return
        rec = load(r["base"], mmap=True)
        mushu = rec.meta.get("mushu", {})
        gaps, segs = mushu.get("gaps", []), mushu.get("segments", [])
        if mushu.get("state") != "complete":
            self.fail("recording not finished", "meta state 'complete'", f"state {mushu.get('state')!r}"
                      f" ({mushu.get('error')})", what)
        size = os.path.getsize(r["base"] + ".eeg")
        if mushu.get("n_samples") not in (None, len(rec.data)) or size % (4 * len(rec.channels)):
            self.fail("damaged recording", f"{mushu.get('n_samples')} samples of {len(rec.channels)} channels (meta)",
                      f"{size:,} bytes in .eeg ({size / 4 / len(rec.channels):,.2f} rows of {len(rec.channels)})",
                      f"{what}: segments {segs}", key="eeg size")
        if client.end and client.end.get("stop_s", 0) > FINISH_S:
            self.fail("recording finished late", f"stop() returns within {FINISH_S:g} s with the files complete",
                      f"stop() took {client.end['stop_s']:.1f} s", what)
        n = len(rec.data)
        gap_mask = intervals_mask([(g["sample"], g["sample"] + g["count"]) for g in gaps], n)
        nan = np.zeros(n, bool)
        wrong = np.zeros(n, bool)
        samples: dict[str, list] = {}
        for k, seg in enumerate(segs):
            a = seg["file_sample"]
            b = segs[k + 1]["file_sample"] if k + 1 < len(segs) else n
            for lo in range(a, b, 65536):
                hi = min(b, lo + 65536)
                block = np.asarray(rec.data[lo:hi])
                nan[lo:hi] = np.isnan(block).any(axis=1)
                wrong[lo:hi] = (block != ramp(seg["first_sample"] + lo - a, hi - lo, block.shape[1])).any(axis=1)
            good = ~gap_mask[a:b]
            idx = np.flatnonzero(good)
            if len(idx):
                breaks = np.flatnonzero(np.diff(idx) > 1)
                for x, y in zip(np.r_[idx[0], idx[breaks + 1]], np.r_[idx[breaks], idx[-1]]):
                    samples.setdefault(seg["session"], []).append(
                        (seg["first_sample"] + int(x), seg["first_sample"] + int(y) + 1))
        r["samples"] = samples
        if (nan & ~gap_mask).any():
            self.fail("NaN rows outside the listed gaps", "NaN only where the meta lists gaps",
                      f"{int((nan & ~gap_mask).sum())} NaN rows not listed", f"{what}: file rows "
                      f"{first_runs(nan & ~gap_mask)}; gaps listed {gaps}")
        if (gap_mask & ~nan).any():
            self.fail("gap rows that are not NaN", "NaN in every row of a listed gap",
                      f"{int((gap_mask & ~nan).sum())} rows with values", f"{what}: rows {first_runs(gap_mask & ~nan)}")
        bad = wrong & ~nan & ~gap_mask
        if bad.any():
            self.fail("recording does not match its meta", "each row the ramp value of its amp sample (meta segments)",
                      f"{int(bad.sum())} rows differ", f"{what}: file rows {first_runs(bad)}; segments {segs}")
        # only this client's amp sessions
        own = {run[1] for run in client.runs} | {client.start.get("session")}
        amp_restarts = [k for k in self.svc.kills if k.service == "amp" and k.session == i]
        foreign = [s for s in segs if s["session"] not in own]
        if foreign and not (amp_restarts and not client.killed):
            self.fail("recording holds another session", "only the amp sessions of its own client",
                      f"{len(foreign)} more segment(s)", key="foreign session", evidence= f"{what}: segments {segs}; gaps {gaps}; the client's "
                      f"sessions {sorted(own)}; " + (f"the recorder still ran it one session later: "
                                                     f"{r.get('dangling')}" if r.get("dangling") else ""))
        # the same samples as the client
        tail = {k.session: int(0.005 * client.fs) + 1 for k in amp_restarts}
        for session in set(samples) | set(client.samples()):
            if session not in own:
                continue
            theirs = client.samples().get(session, [])
            mine = samples.get(session, [])
            length = max([y for _x, y in theirs + mine] + [0])
            c_mask, r_mask = intervals_mask(theirs, length), intervals_mask(mine, length)
            if client.killed and theirs:
                r_mask[max(y for _x, y in theirs):] = False  # the client died: no more to compare
            slack = tail.get(i, 0) if client.runs and session != client.runs[-1][1] else 0
            for mask, missing_in in ((c_mask & ~r_mask, "recording"), (r_mask & ~c_mask, "client")):
                if slack:  # the amp's last block before its restart may reach one side only
                    end = max([y for _x, y in theirs + mine])
                    mask[max(0, end - slack):] = False
                if mask.any():
                    self.fail("recording and client differ", "the recording holds exactly the samples the client got",
                              f"{int(mask.sum())} samples missing in the {missing_in}",
                              f"{what}: amp session {session[:8]}, samples {first_runs(mask)}")
        lost = []
        for g in gaps:
            if g.get("reason") == "amp restarted":
                if not amp_restarts:
                    self.fail("invented gap", "a gap only where the amp restarted or the history lost samples",
                              f"gap {g}", f"{what}; no amp kill in this session", key="invented gap")
                    continue
                cg = (client.end or {}).get("gaps", [])
                theirs = [x[0] + x[1] for x in cg]
                if theirs and all(abs(g["sample"] + g["count"] - t) > 1 for t in theirs):
                    self.fail("restart gap differs", "the recording's new session begins where the client's does",
                              f"file sample {g['sample'] + g['count']}", f"{what}: recording gap {g}; client gaps {cg}")
            elif not (r.get("dangling") or {}).get("running"):
                lost.append(g)
        if lost:
            self.fail("samples lost in the recording", "no gap (the amp's history holds the samples)",
                      f"{len(lost)} gaps, {sum(g['count'] for g in lost):,} samples "
                      f"({sum(g['count'] for g in lost) / client.fs:.1f} s)",
                      f"{what}: the first {lost[:3]}" + self.kills_near(client.t_first_data or 0, 60))
        self.check_recorder_watch(r, client)

    def check_recorder_watch(self, r: dict, client: Consumer):
        """The recorder answers and the recording grows while the client reads (its kills aside)."""
        what = f"{self.what(r['session'])}: recording {r['name']}"
        if client.t_first_data is None:
            return
        lo, hi = client.t_first_data, client.t_until
        answers = [(t + dt, next_sample, base) for t, ok, next_sample, base, dt, _w in r["watch"]
                   if ok and lo <= t <= hi]
        asked = [t + dt for t, _ok, _n, _b, dt, _w in r["watch"] if lo <= t <= hi]
        waits = [(t + dt, w) for t, _ok, _n, _b, dt, w in r["watch"]]
        if not answers:
            return
        grew = [answers[0][0]] + [b[0] for a, b in zip(answers, answers[1:]) if b[2] == r["base"] and b[1] != a[1]]
        for name, times, down, expected in (
                ("recorder silent", [x[0] for x in answers] + asked[-1:], self.svc.windows("recorder"),
                 f"the recorder answers status within {SILENCE_S:g} s"),
                ("recording silent", grew + [answers[-1][0]],
                 self.svc.windows("recorder") + self.svc.windows("amp", after=SILENCE_S),
                 f"the recording grows at least every {SILENCE_S:g} s while the amp runs")):
            unexplained = None
            for a, b in zip(times, times[1:]):
                start = max([a] + [y for x, y in down if x <= b and y >= a])  # from its return, if it was down
                if b - start <= SILENCE_S + 0.3:  # the polls come every 0.25 s
                    continue
                waited = wait_between(waits, start, b)
                evidence = (f"{what}, from {start - self.t0:.1f} s; the recorder's main thread and the watching "
                            f"thread waited {waited:.2f} s for a CPU; " + self.sampler.around(start, b)
                            + self.kills_near(start, 30))
                if b - start - waited <= SILENCE_S + 0.3:  # it would have answered in time, had it got a CPU
                    self.starved.append((b - start, f"{name}: {evidence}"))
                elif unexplained is None or b - start > unexplained[0]:
                    unexplained = (b - start, evidence)
            if unexplained is not None:
                self.fail(name, expected, f"nothing for {unexplained[0]:.1f} s", unexplained[1], key=name)

    # growth, logs

    def check_growth(self):
        self.growth = {}
        marks = self.sampler.marks
        for name in SERVICES:
            by_pid: dict[int, list] = {}
            for cycle, t, svc, pid, rss, fds, thr, *_ in marks:
                if svc == name:
                    by_pid.setdefault(pid, []).append((cycle, t, rss, fds, thr))
            for pid, ms in by_pid.items():
                born = self.sampler.started.get(pid, 0.0)
                # warm-up: the first cycle the process lived through from its beginning (for the markers
                # service: and with its history full)
                warm = [m for m in ms if self.cycle_starts[m[0]] >= born
                        and (name != "markers" or (m[0], pid) in self.history_full)]
                if len(warm) < 3:
                    continue
                w, e = warm[0], warm[-1]
                self.growth[(name, pid)] = (w, e, len(warm) - 1)
                for k, label in ((2, "RSS"), (3, "open descriptors")):
                    if e[k] > w[k] * (1 + GROWTH):
                        self.fail(f"{label} growth", f"{name} {label} within +{GROWTH:.0%} of its value after "
                                  f"warm-up", f"{w[k]:,} -> {e[k]:,} (+{e[k] / w[k] - 1:.0%})",
                                  f"{name} pid {pid}: end of cycle {w[0]} -> end of cycle {e[0]}")

    def check_logs(self):
        pattern = re.compile(r"Traceback|Segmentation|Fatal Python|CURVE|core dumped")
        for name in SERVICES:
            path = self.svc.rundir().log(name)
            try:
                lines = open(path, errors="replace").read().splitlines()
            except OSError:
                continue
            hits = [line for line in lines if pattern.search(line)]
            if hits:
                self.fail("service log", f"no traceback, crash or CURVE message in {name}.log (security is off)",
                          f"{len(hits)} lines", "\n    ".join(hits[:8]))

    # -- the result ----------------------------------------------------------------

    def service_rows(self) -> list[str]:
        rows = []
        for name in SERVICES:
            ss = [s for s in self.sampler.samples if s[1] == name]
            kills = sum(1 for k in self.svc.kills if k.service == name)
            exits = sum(1 for e in self.sampler.exits if e["service"] == name)
            if not ss:
                rows.append(f"| {name} | {kills} | {exits} | - | - | - | - |")
                continue
            pids = list(dict.fromkeys(s[2] for s in ss))
            last = [s for s in ss if s[2] == pids[-1]]
            judged = [g for (svc, _pid), g in self.growth.items() if svc == name]

            def fmt(k, scale=1):
                return f"{last[0][k] / scale:.0f} → {last[-1][k] / scale:.0f}"
            growth = "; ".join(f"RSS {w[2] / 2**20:.0f} → {e[2] / 2**20:.0f} MiB, fds {w[3]} → {e[3]} over "
                               f"{n} cycles" for w, e, n in judged) or "not judged (no process lived 3 cycles after warm-up)"
            rows.append(f"| {name} | {kills} | {exits} | {len(pids)} | {fmt(3, 2**20)} | {fmt(4)} | {fmt(5)} | {growth} |")
        return rows

    def result(self) -> dict:
        primaries = [c for c in self.consumers if c.role == "primary"]
        readers = [c for c in self.consumers if c.role == "reader"]
        sent = [s for f in self.floods for s in f.sent]
        kinds = {k: sum(1 for s in sent if s[1] == k) for k in ("valid", "invalid_utf8", "overlong")}
        recv = {role: sum(len(c.markers) for c in self.consumers if c.role == role) for role in ("primary", "reader")}
        recv["recording"] = sum(sum(len(v) for v in (r.get("markers") or {}).values()) for r in self.recordings)
        m = machine()
        lines = [
            f"mushu soak, {m['date']}: {'--short' if self.short else f'--minutes {self.minutes:g}'}, "
            f"{now() - self.t0:.0f} s, {getattr(self, 'cycles', 0)} cycle(s)",
            f"machine: {m['cpu']}, {m['cores']} cores (nproc), Linux {m['kernel']}; Python {m['python']}, "
            f"pyzmq {m['pyzmq']} (libzmq {m['libzmq']}), numpy {m['numpy']}; load average at end "
            f"{os.getloadavg()[0]:.2f}",
            "",
            "| what | count |",
            "| --- | ---: |",
            f"| client sessions (stopped / SIGKILLed) | {len(primaries)} "
            f"({sum(not c.killed for c in primaries)} / {sum(c.killed for c in primaries)}) |",
            f"| read-only clients beside them (SIGKILLed) | {len(readers)} ({sum(c.killed for c in readers)}) |",
            f"| samples checked against the ramp (all clients) | {self.samples_checked:,} |",
            f"| marker floods | {len(self.floods)} |",
            f"| markers sent (valid / invalid UTF-8 / overlong) | {len(sent):,} ({kinds['valid']:,} / "
            f"{kinds['invalid_utf8']:,} / {kinds['overlong']:,}) |",
            f"| markers not sent (the service was down) | {sum(f.unsent for f in self.floods):,} |",
            f"| markers received: primary clients / read-only clients / recordings | {recv['primary']:,} / "
            f"{recv['reader']:,} / {recv['recording']:,} |",
            f"| markers the observer saw published | {len(self.observer.by_seq):,} |",
            f"| markers sent around a markers-service kill that no consumer got (died with it; not failures) | "
            f"{sum(max(f.__dict__.get('lost_uncertain', {}).values(), default=0) for f in self.floods):,} |",
            f"| kills (amp / markers / recorder) | {sum(k.service == 'amp' for k in self.svc.kills)} / "
            f"{sum(k.service == 'markers' for k in self.svc.kills)} / "
            f"{sum(k.service == 'recorder' for k in self.svc.kills)} |",
            f"| recordings (of SIGKILLed clients) | {len(self.recordings)} "
            f"({sum(r['killed_client'] for r in self.recordings)}) |",
            f"| unexpected service exits | {len(self.sampler.exits)} |",
            f"| silences > {SILENCE_S:g} s a wait for a CPU explains (clients, recorder; not failures) | "
            f"{len(self.starved)} |",
            f"| failures (findings; occurrences) | {len(self.failures)}; {sum(1 + len(f.more) for f in self.failures)} |",
            "",
            "| service | kills | unexpected exits | processes | RSS MiB first → last (last process) | "
            "fds | threads | growth after warm-up (end of cycle) |",
            "| --- | ---: | ---: | ---: | --- | --- | --- | --- |",
            *self.service_rows(),
        ]
        kinds_failed = {}
        for f in self.failures:
            kinds_failed[f.what] = kinds_failed.get(f.what, 0) + 1 + len(f.more)
        if kinds_failed:
            lines += ["", "failures by kind (occurrences): " + ", ".join(f"{k} {v}" for k, v in kinds_failed.items())]
        if self.starved:
            lines += ["", f"silences over {SILENCE_S:g} s that a wait for a CPU explains "
                          "(the machine is shared; not counted as failures):"]
            lines += [f"- {d:.1f} s: {ev}" for d, ev in self.starved[:5]]
            if len(self.starved) > 5:
                lines.append(f"- and {len(self.starved) - 5} more")
        return {"table": "\n".join(lines), "failures": [f.__dict__ for f in self.failures],
                "machine": m, "sessions": [{k: v for k, v in s.items() if k != "spec"} | {"spec": s["spec"]}
                                           for s in self.sessions],
                "kills": [k.__dict__ for k in self.svc.kills], "exits": self.sampler.exits}

    def close(self):
        for proc in self.workers:  # a run cut short leaves none behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.keep:
            shutil.copytree(self.root, self.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="how long (default %(default)g)")
    p.add_argument("--short", action="store_true", help="one cycle, 60-90 s: correctness only")
    p.add_argument("--marker-rate", type=float, default=2000.0,
                   help="markers/s of a flood, half over TCP, half over UDP (default %(default)g)")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    p.add_argument("--keep", metavar="DIR", help="copy the run directory, recordings and client logs here")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(json.loads(a.worker[0]), a.worker[1])
    # SIGTERM (timeout, a CI runner) as Ctrl-C: the services go down with the harness, never left running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soak = Soak(a.minutes, a.short, a.marker_rate, a.keep)
    try:
        res = soak.run()
    finally:
        soak.close()
    print()
    print(res["table"])
    if res["failures"]:
        n = sum(1 + len(f["more"]) for f in res["failures"])
        print(f"\n{len(res['failures'])} finding(s), {n} occurrence(s); each is printed above with its evidence")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

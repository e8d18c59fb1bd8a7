"""The amp service's core: one driver, its state, its blocks and its history.

No sockets here. ``AmpCore.acquire()`` turns what the driver returns into
stamped, numbered blocks; ``AmpCore.handle(cmd, args)`` answers a control
request or raises the exception the caller should see. The service
(``service.py``) does the I/O around it.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import math
import operator
import os
import threading
import uuid

import numpy as np

from mushu_core import __version__, memory
from mushu_core.clock import host_clock_id, now_ns, offset_ns
from mushu_core.wire import PROTOCOL_VERSION, BlockHeader, ReplyFrames, StreamInfo, dispatch, encode_block_header

from . import drivers
from .drivers.base import EndOfData, check_arguments
from .timing import ClockModel, ExactClock, StampedClock, host_wake_ns

log = logging.getLogger("mushu.amp")

#: Commands that change what the state file holds.
STATE_COMMANDS = frozenset({"use", "configure", "start", "stop"})
#: Commands any listed client may send; the others need the controller role (docs/security.md).
READ_ONLY = frozenset({"ping", "amps", "channels", "fs", "presets", "status", "time", "history"})
#: Largest payload of one published block; a driver's larger return is split.
#: With the PUB's byte budget (256 MiB) it sets the high-water mark: 2048
#: blocks, two seconds of 1 ms blocks for a subscriber whose connection stalls
#: (bus.queue_hwm). Blocks of 64 KiB and more go out without a copy.
MAX_BLOCK_BYTES = 128 << 10
#: Default history size: 64 ch x 1 kHz in 1 ms blocks takes 0.86 MB/s in the
#: history (block_cost), so 64 MiB keeps 78 s of it (the requirement is at least 60 s).
DEFAULT_HISTORY_BYTES = 64 << 20
#: How long the list of available amplifiers is reused before they are probed again.
AMPS_CACHE_NS = 2_000_000_000
#: Largest reply to one history request; the consumer asks again for more.
MAX_HISTORY_REPLY_BYTES = 16 << 20


class History:
    """The most recent blocks of the current session, bounded in bytes (:func:`block_cost` each).

    Blocks are contiguous (each starts where the previous ended), so a
    sample index or a sequence number locates a block by bisection.

    A block is kept as ``(values, header_frame, data)``, ``values`` being
    its header's fields as a plain tuple: a tuple of numbers, strings, bytes
    and arrays is not tracked by Python's cyclic garbage collector, whereas
    a :class:`BlockHeader` is. Kept as headers, a minute of 1 ms blocks made
    each full collection walk ~140,000 objects and stall the acquisition
    thread for ~20 ms, growing with the history; kept as values, the
    history adds nothing to those passes.
    """

    def __init__(self, limit_bytes: int = DEFAULT_HISTORY_BYTES):
        self.limit_bytes = limit_bytes
        self.clear()

    def clear(self):
        self._first: list[int] = []     # first_sample of each block
        self._blocks: list[tuple] = []  # (header values, header_frame, data)
        self._head = 0                  # index of the oldest kept block
        self.nbytes = 0

    def __len__(self):
        return len(self._blocks) - self._head

    def append(self, header: BlockHeader, header_frame: bytes, data: np.ndarray):
        self._first.append(header.first_sample)
        self._blocks.append((_header_values(header), header_frame, data))
        self.nbytes += block_cost(header_frame, data)
        while self.nbytes > self.limit_bytes and len(self) > 1:
            self.nbytes -= block_cost(*self._blocks[self._head][1:])
            self._blocks[self._head] = None
            self._head += 1
        if self._head > 4096 and self._head * 2 > len(self._blocks):
            del self._first[: self._head], self._blocks[: self._head]
            self._head = 0

    @property
    def oldest_sample(self) -> int | None:
        return self._first[self._head] if len(self) else None

    def since_sample(self, sample: int, max_bytes: int = MAX_HISTORY_REPLY_BYTES,
                     headers: bool = True) -> list[tuple]:
        """Blocks ``(header, header_frame, data)`` from the one containing ``sample`` on,
        up to ``max_bytes`` of payload; with ``headers=False`` the header is left out (None)."""
        i = max(self._head, bisect.bisect_right(self._first, sample, lo=self._head) - 1)
        return self._from(i, max_bytes, headers)

    def since_seq(self, seq: int, max_bytes: int = MAX_HISTORY_REPLY_BYTES,
                  headers: bool = True) -> list[tuple]:
        """Blocks with sequence number ``seq`` and later, up to ``max_bytes``; as :meth:`since_sample`."""
        if not len(self):
            return []
        oldest_seq = self._blocks[self._head][0][_SEQ]
        return self._from(self._head + max(0, seq - oldest_seq), max_bytes, headers)

    def _from(self, i: int, max_bytes: int, headers: bool) -> list[tuple]:
        out, size = [], 0
        for values, header_frame, data in self._blocks[i:]:
            if out and size + data.nbytes > max_bytes:
                break
            out.append((BlockHeader(*values) if headers else None, header_frame, data))
            size += data.nbytes
        return out


#: Memory a kept block takes besides its payload and header frame (its tuple,
#: integers, array object and list slots; measured with tracemalloc).
BLOCK_OVERHEAD_BYTES = 448


def block_cost(header_frame: bytes, data: np.ndarray) -> int:
    """Memory a block takes in the history: at 64 ch x 1 kHz in 1 ms blocks, 3.4 times its payload."""
    return data.nbytes + len(header_frame) + BLOCK_OVERHEAD_BYTES


#: A BlockHeader's fields as a tuple, in the order BlockHeader(*values) takes them.
_header_values = operator.attrgetter(*(f.name for f in dataclasses.fields(BlockHeader)))
_SEQ = [f.name for f in dataclasses.fields(BlockHeader)].index("seq")


class AmpCore:
    """State of the amp service and the rules of its control commands.

    Parameters
    ----------
    stream : str
        Name of the published stream.
    history_bytes : int
        Size of the block history kept for late or restarted consumers.
    """

    def __init__(self, stream: str = "eeg", history_bytes: int = DEFAULT_HISTORY_BYTES,
                 state_file: str | None = None):
        self.stream = stream
        self.state_file = state_file
        self.history = History(history_bytes)
        self.amp_name: str | None = None
        self.driver = None
        self.config: dict = {}
        self.state = "idle"
        self.error: str | None = None
        self.session: str | None = None
        #: How the current session began: "command" (a client's start), "restored"
        #: (the service came up again and restored its running state: it restarted),
        #: "startup" (--start on the command line).
        self.session_origin: str | None = None
        self.seq = 0
        self.next_sample = 0
        self.dtype = "<f4"
        self._np_dtype = np.dtype(self.dtype)
        self.channels: list[str] = []
        self.fs = 1.0
        self.blocks_published = 0
        self.samples_published = 0
        self.driver_errors = 0
        self.late_driver_markers = 0
        self.clock: ClockModel | ExactClock | StampedClock | None = None  # of the session
        self._calibrate_wake = False
        self._markers: list[tuple[int, str]] = []  # driver markers waiting for their sample
        self.started_ns = now_ns()
        self._amps: tuple[int, list] | None = None  # (when, what cmd_amps found)
        #: The local endpoint offered to clients on this host (set by the service), or None.
        self.local_data: dict | None = None
        self.commands = {
            "ping": self.cmd_ping, "amps": self.cmd_amps, "use": self.cmd_use,
            "configure": self.cmd_configure, "start": self.cmd_start, "stop": self.cmd_stop,
            "channels": self.cmd_channels, "fs": self.cmd_fs, "presets": self.cmd_presets,
            "status": self.cmd_status, "time": self.cmd_time, "history": self.cmd_history,
        }

    @property
    def running(self) -> bool:
        return self.state == "running"

    # -- acquisition ------------------------------------------------------

    def acquire(self) -> list[tuple[BlockHeader, bytes, np.ndarray]]:
        """Read the driver once; return the new blocks ``(header, header_frame, data)``.

        A driver exception stops acquisition and puts the service in the
        ``error`` state, with the driver's message for status and clients.
        """
        driver = self.driver
        try:
            driver.read_ns = None
            data, markers = driver.get_data()
            t_read = now_ns()
            if driver.read_ns is not None:  # the device's read returned then, before the driver decoded it
                t_read = min(t_read, int(driver.read_ns) + offset_ns())
            data = self._as_block_array(data)
            if markers:
                self._queue_markers(markers)
        except EndOfData:
            self._ended()
            return []
        except Exception as exc:
            self._driver_failed(exc)
            return []
        n = data.shape[0]
        if n == 0:
            return []
        clock = self.clock  # when each sample was acquired (mushu_amp.timing)
        clock.observe(self.next_sample + n, t_read)
        if self._calibrate_wake and clock.fitted:
            self._calibrate_wake = False
            threading.Thread(target=_calibrate_wake, args=(clock,), name="wake-calibration", daemon=True).start()
        step = max(1, MAX_BLOCK_BYTES // max(1, data.strides[0]))
        out = []
        for i in range(0, n, step):
            chunk = data[i:i + step] if n > step else data  # usually one block: no view
            header = BlockHeader(self.stream, self.session, self.seq, self.next_sample,
                                 chunk.shape[0], chunk.shape[1], self.fs, self.dtype,
                                 clock.time_of(self.next_sample),
                                 self._take_markers(chunk.shape[0]) if self._markers else (), t_read)
            frame = encode_block_header(header)
            self.history.append(header, frame, chunk)
            out.append((header, frame, chunk))
            self.seq += 1
            self.next_sample += chunk.shape[0]
            self.blocks_published += 1
            self.samples_published += chunk.shape[0]
        return out

    def _queue_markers(self, markers):
        """Markers the driver returned, ``(ms from its data's first sample, label)``, on their samples.

        A marker lands on the first sample at or after its time; one before
        the data (negative ms) on its first sample (counted as late).
        """
        fs = self.fs
        for ms, label in markers:
            # ceil, tolerating the rounding of a time given in ms (j * 1000 / fs is sample j)
            offset = math.ceil(float(ms) * fs / 1000.0 - 1e-6)
            if offset < 0:
                self.late_driver_markers += 1
                offset = 0
            self._markers.append((self.next_sample + int(offset), str(label)))
        self._markers.sort(key=lambda m: m[0])

    def _take_markers(self, n: int) -> tuple:
        """The queued markers on samples ``next_sample .. next_sample + n - 1``, as block offsets."""
        end = self.next_sample + n
        k = 0
        while k < len(self._markers) and self._markers[k][0] < end:
            k += 1
        taken, self._markers = self._markers[:k], self._markers[k:]
        return tuple((sample - self.next_sample, label) for sample, label in taken)

    def _ended(self):
        """The driver has no more data (a replay reached its end)."""
        log.info("%s has no more data after %d samples", self.amp_name, self.next_sample)
        try:
            self.driver.stop()
        except Exception as exc:
            log.error("driver.stop() at the end of the data failed: %s", exc)
        self.state = "ended"
        if self._markers:
            log.warning("%d driver markers after the last sample dropped", len(self._markers))
            self._markers = []

    def _as_block_array(self, data) -> np.ndarray:
        if (type(data) is np.ndarray and data.dtype is self._np_dtype and data.ndim == 2
                and data.shape[1] == len(self.channels) and data.flags.c_contiguous):
            return data  # already a block: the common case, checked without allocating
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] != len(self.channels):
            raise ValueError(f"driver returned data of shape {data.shape}, "
                             f"expected (n, {len(self.channels)})")
        if data.dtype.str != self.dtype:
            data = data.astype(np.dtype(self.dtype))
        return np.ascontiguousarray(data)

    def _driver_failed(self, exc: BaseException):
        self.driver_errors += 1
        self.error = f"{self.amp_name}: {type(exc).__name__}: {exc}"
        self.state = "error"
        log.error("driver failed, acquisition stopped: %s", self.error)
        try:
            self.driver.stop()
        except Exception as stop_exc:
            log.error("driver.stop() after the failure failed too: %s", stop_exc)

    def info(self) -> StreamInfo:
        """The stream-info message describing the stream now."""
        return StreamInfo(
            stream=self.stream, session=self.session, amp=self.amp_name or "",
            state=self.state, fs=float(self.fs), dtype=self.dtype,
            channels=list(self.channels), units=[self.unit] * len(self.channels),
            last_seq=self.seq - 1, next_sample=self.next_sample,
            t_ns=now_ns(), error=self.error,
            **({} if self.clock is None or not self.clock.reads else
               {"fs_measured": self.clock.rate, "drift_ppm": round(self.clock.drift_ppm, 3)}))

    @property
    def unit(self) -> str:
        return getattr(self.driver, "unit", "uV")

    # -- control commands -------------------------------------------------

    def handle(self, cmd: str, args: dict):
        """Run control command ``cmd``; return its result or raise."""
        result = dispatch(self.commands, cmd, args)
        if cmd in STATE_COMMANDS:
            self.save_state()
        return result

    # -- the state kept on disk ---------------------------------------------

    def save_state(self):
        """Write the driver, its configuration and whether it runs to the state file.

        A restarted service (under a supervisor) reads it with
        :meth:`restore_state` and goes on where it was.
        """
        if not self.state_file:
            return
        state = {"amp": self.amp_name, "config": self.config, "running": self.running}
        tmp = self.state_file + ".tmp"
        # Replaced atomically, not fsynced: it is for a restarted process, which the kernel's page
        # cache serves, and an fsync on a busy disk (a recording) would hold the reply for seconds.
        try:
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, self.state_file)
        except (OSError, TypeError, ValueError) as exc:  # e.g. a configuration JSON cannot hold
            log.error("cannot save the amp state to %s: %s", self.state_file, exc)

    def restore_state(self) -> bool:
        """Select, configure and start the driver as the state file says; True if there was one."""
        if not self.state_file or not os.path.exists(self.state_file):
            return False
        with open(self.state_file) as f:
            state = json.load(f)
        if not state.get("amp"):
            return False
        self.cmd_use(state["amp"])
        self.cmd_configure(state.get("config") or {})
        if state.get("running"):
            self.start("restored")
        log.warning("restored the last state: %s %s, %s", state["amp"], state.get("config"),
                    "running" if state.get("running") else "stopped")
        return True

    def _need_driver(self):
        if self.driver is None:
            raise RuntimeError("no amp selected; send 'use' with an amp name first")

    def cmd_ping(self):
        return {"service": "amp", "version": __version__, "protocol": PROTOCOL_VERSION,
                "stream": self.stream}

    def cmd_amps(self):
        # Probing USB backends takes a third of a second: a flood of requests probes once per period.
        now = now_ns()
        if self._amps is None or now - self._amps[0] > AMPS_CACHE_NS:
            self._amps = (now, drivers.describe_amps())
        return self._amps[1]

    def cmd_use(self, amp: str):
        """Select driver ``amp``; a no-op if it is already selected."""
        if not isinstance(amp, str):
            raise TypeError(f"amp must be a string, not {type(amp).__name__}")
        if amp == self.amp_name:
            return self._describe()
        if self.running:
            raise RuntimeError(f"amp {self.amp_name!r} is running; stop it before selecting {amp!r}")
        try:
            cls = drivers.load_driver(amp)
        except ImportError as exc:  # its message names what to install
            raise RuntimeError(f"{exc} (on the amp service's host)") from None
        if not cls.is_available():
            raise RuntimeError(f"amp {amp!r} is not available on the amp service's host: is the device plugged "
                               "in and allowed (docs/drivers.md, Hardware)? 'mushu amps' says what each needs")
        driver = cls()
        self.driver, self.amp_name, self.config, self.error = driver, amp, {}, None
        self.state = "idle"
        self._read_driver_shape()
        log.info("selected amp %s", amp)
        return self._describe()

    def cmd_configure(self, kwargs: dict | None = None):
        self._need_driver()
        if self.running:
            raise RuntimeError("cannot configure while running; stop the amp first")
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise TypeError("configure arguments must be a map of names to values")
        check_arguments(self.amp_name, self.driver, kwargs)
        self.driver.configure(**kwargs)
        self._read_driver_shape()
        self.config = dict(kwargs)
        if self.state in ("error", "ended"):
            self.state, self.error = "idle", None
        log.info("configured %s with %s", self.amp_name, kwargs)
        return self._describe()

    def _read_driver_shape(self):
        fs = self.driver.get_sampling_frequency()
        channels = [str(c) for c in self.driver.get_channels()]
        if isinstance(fs, bool) or not isinstance(fs, (int, float, np.number)) or not fs > 0:
            raise ValueError(f"driver reports an invalid sampling frequency {fs!r}")
        self.fs, self.channels = float(fs), channels

    def cmd_start(self):
        return self.start("command")

    def start(self, origin: str):
        """Start a new session (or join the running one); ``origin`` says how it began (:attr:`session_origin`)."""
        self._need_driver()
        if self.running:
            return {**self._describe(), "first_sample": self.next_sample, "joined": True}
        self._read_driver_shape()
        self.driver.start()
        self.clock = self._clock()
        self.session = uuid.uuid4().hex
        self.session_origin = origin
        self.seq = 0
        self.next_sample = 0
        self._markers = []
        self.history.clear()
        memory.release_freed_memory()  # the last session's blocks: a few ms, once a session
        self.state, self.error = "running", None
        log.info("started %s: session %s, %g Hz, %d channels",
                 self.amp_name, self.session, self.fs, len(self.channels))
        return {**self._describe(), "first_sample": 0, "joined": False}

    def _clock(self):
        """The session's sample clock: the driver's, if it knows its sample times; else fitted to its reads."""
        known = self.driver.clock() if hasattr(self.driver, "clock") else None
        self._calibrate_wake = known is None
        if isinstance(known, StampedClock):
            return known
        if known is not None:
            t0_ns, fs = known
            return ExactClock(t0_ns + offset_ns(), fs)
        # A read returns at least the device's latency and this host's wake-up after the acquisition;
        # the wake-up is measured again with waits as long as the reads' once they are known.
        model = ClockModel(self.fs, int(getattr(self.driver, "latency_ns", 0) or 0))
        model.wake_ns = host_wake_ns()
        return model

    def cmd_stop(self):
        self._need_driver()
        if self.running:
            self.driver.stop()
            self.state = "idle"
            log.info("stopped %s after %d samples", self.amp_name, self.next_sample)
        return self._describe()

    def cmd_channels(self):
        self._need_driver()
        return list(self.channels)

    def cmd_fs(self):
        self._need_driver()
        return self.fs

    def cmd_presets(self):
        self._need_driver()
        return [[str(label), dict(kw)] for label, kw in self.driver.presets]

    def cmd_time(self):
        return {"t_ns": now_ns(), "clock": host_clock_id()}

    def cmd_status(self):
        return {
            **self._describe(),
            "pid": os.getpid(),
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "uptime_s": (now_ns() - self.started_ns) / 1e9,
            "local_data": self.local_data,
            "config": {k: _summary(v) for k, v in self.config.items()},
            "blocks_published": self.blocks_published,
            "samples_published": self.samples_published,
            "driver_errors": self.driver_errors,
            "late_driver_markers": self.late_driver_markers,
            "clock": None if self.clock is None else self.clock.status(),
            "history": {"blocks": len(self.history), "bytes": self.history.nbytes,
                        "limit_bytes": self.history.limit_bytes,
                        "oldest_sample": self.history.oldest_sample},
        }

    def cmd_history(self, session: str, from_sample: int | None = None, from_seq: int | None = None):
        """Blocks of ``session`` from a sample index or a sequence number on.

        Returns the result map and the blocks; the service sends each block
        as two extra reply frames (header, payload).
        """
        if session != self.session:
            raise ValueError(f"session {session!r} is not in the history (current session {self.session!r})")
        if (from_sample is None) == (from_seq is None):
            raise TypeError("history needs exactly one of from_sample and from_seq")
        for name, v in (("from_sample", from_sample), ("from_seq", from_seq)):
            if v is not None and (type(v) is not int or v < 0):
                raise TypeError(f"{name} must be a non-negative integer, not {v!r}")
        blocks = (self.history.since_sample(from_sample, headers=False) if from_seq is None
                  else self.history.since_seq(from_seq, headers=False))
        result = {"session": self.session, "blocks": len(blocks),
                  "oldest_sample": self.history.oldest_sample, "next_sample": self.next_sample}
        return ReplyFrames(result, [frame for _h, header_frame, data in blocks for frame in (header_frame, data)])

    def _describe(self):
        return {"amp": self.amp_name, "stream": self.stream, "state": self.state, "unit": self.unit,
                "error": self.error, "session": self.session, "session_origin": self.session_origin, "fs": self.fs,
                "channels": list(self.channels), "last_seq": self.seq - 1,
                "next_sample": self.next_sample}


def _summary(value):
    """A configuration value as status shows it: large values (replay data) only described."""
    size = len(json.dumps(value, default=str))
    return value if size <= 1024 else f"<{type(value).__name__} of {size} bytes>"


def _calibrate_wake(model: ClockModel):
    """Measure this host's wake-up after waits as long as the device's reads wait, for ``model``.

    It sleeps for about ten read intervals, so it runs in a thread of its own beside the acquisition;
    setting ``model.wake_ns`` (one attribute, from here only) is atomic for the thread that reads it.
    """
    interval = model.read_interval_ns()
    if interval:
        model.wake_ns = host_wake_ns(probes=10, sleep_s=min(interval, 20_000_000) / 1e9)

"""An emulated amplifier with a device's timing, for the tests and bench/timing_bench.py.

A plugin driver (``MUSHU_DRIVERS=drifting=drifting_device:DriftingAmp``,
with ``tests/`` on ``PYTHONPATH``): it acquires on a clock ``ppm`` fast or
slow against the host's, hands its samples over in chunks of ``chunk``, each
``latency_ms`` (uniform in a range) after its last sample was acquired, and
blocks in ``get_data()`` until a chunk is there, as a USB amplifier's read
does. Its values are the ramp (:func:`mushu_amp.drivers.rampamp.ramp`), so a
consumer knows each sample's index; when each was truly acquired is written
to ``truth`` (JSON ``{"t0_ns", "period_ns"}`` of ``time.monotonic_ns()``) at
``start()``.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from mushu_amp.drivers.base import SimulatedAmplifier
from mushu_amp.drivers.rampamp import ramp


class DriftingAmp(SimulatedAmplifier):
    """Chunked delivery with random latency, clock drift and optional stalls; see the module docstring.

    Its channels, rate and availability are a simulated amplifier's; its sample times are its own
    secret, as a hardware device's are (:meth:`clock` is None).
    """

    def __init__(self):
        self.fs, self.channels, self.chunk = 1000.0, 8, 8
        self.ppm, self.latency_ms, self.truth, self.seed = 0.0, (0.0, 0.0), None, 0
        self.stalls: list = []
        self.reads_log, self._reads = None, []

    def configure(self, fs=1000.0, channels=8, chunk=8, ppm=0.0, latency_ms=(0.0, 0.0), declared_latency_ms=0.0,
                  stalls=(), truth=None, seed=0, reads_log=None):
        """``stalls``: ``[[at_s, for_s], ...]`` pauses of acquisition; ``declared_latency_ms``: what the
        driver tells the amp service it always takes (:attr:`latency_ns`); ``reads_log``: a file that
        ``stop()`` fills with ``(end sample, return time)`` of every read (``numpy.save``)."""
        lo, hi = (float(v) for v in latency_ms)
        if not 0 <= lo <= hi:
            raise ValueError(f"latency_ms must be [low, high] with 0 <= low <= high, not {latency_ms!r}")
        self.fs, self.channels, self.chunk, self.ppm = float(fs), int(channels), int(chunk), float(ppm)
        self.latency_ms, self.truth, self.seed = (lo, hi), truth, int(seed)
        self.stalls = [(float(a), float(b)) for a, b in stalls]
        self.latency_ns = int(float(declared_latency_ms) * 1e6)
        self.reads_log, self._reads = reads_log, []

    def clock(self):
        return None  # the amp service fits its clock to the reads, as for hardware

    def start(self):
        self._rng = np.random.default_rng(self.seed)
        self._period = 1e9 / self.fs / (1 + self.ppm * 1e-6)
        self._t0 = time.monotonic_ns()
        self._next = 0  # the next sample to hand over
        self._due: list[tuple[int, int]] = []  # (end sample, delivery time) of chunks on their way
        self._chunks = 0
        self._reads = []
        if self.truth:
            tmp = f"{self.truth}.tmp"
            with open(tmp, "w") as f:
                json.dump({"t0_ns": self._t0, "period_ns": self._period, "stalls": self.stalls}, f)
            os.replace(tmp, self.truth)

    def acquired_ns(self, sample: int) -> float:
        """When ``sample`` was truly acquired."""
        t = self._t0 + sample * self._period
        for at_s, for_s in self.stalls:
            if sample >= at_s * self.fs:
                t += for_s * 1e9
        return t

    def _schedule(self):
        while len(self._due) < 4:
            end = (self._chunks + 1) * self.chunk
            lo, hi = self.latency_ms
            delivery = self.acquired_ns(end - 1) + self._rng.uniform(lo, hi) * 1e6
            if self._due:
                delivery = max(delivery, self._due[-1][1])  # USB delivers in order
            self._due.append((end, int(delivery)))
            self._chunks += 1

    def get_data(self):
        self._schedule()
        end, delivery = self._due[0]
        wait = delivery - time.monotonic_ns()
        if wait > 0:
            time.sleep(min(wait, 50_000_000) / 1e9)  # at most 50 ms: stop() is not kept waiting
        now = self.read_ns = time.monotonic_ns()  # the read's return, before the samples are made
        last = self._next
        while self._due and self._due[0][1] <= now:
            last = self._due.pop(0)[0]
        if last == self._next:
            return np.empty((0, self.channels), np.float32), []
        data = ramp(self._next, last - self._next, self.channels)
        self._next = last
        if self.reads_log:
            self._reads.append((last, time.monotonic_ns()))
        return data, []

    def stop(self):
        if self.reads_log:
            np.save(self.reads_log, np.array(self._reads, np.int64).reshape(-1, 2))

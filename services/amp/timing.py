"""When each sample was acquired: a clock model per session, fitted from the driver's reads (no I/O).

A driver read returns the samples acquired since the last one some time
after the last of them was acquired: the device's transfer latency (USB
chunks), the host's wake-up of the reading thread, the read itself. So a
read's return time is never earlier than its last sample's acquisition, and
is later by a latency that varies from read to read. Stamping each block
with its read time (as if that latency were zero) makes every sample late
by it, and every marker land early.

:class:`ClockModel` fits ``t(sample) = t_ref + (sample - s_ref) * period``
to the lower envelope of the reads: the reads are grouped in bins of
``bin_s``; the earliest read of each bin (relative to the nominal rate) is
the one with the least latency; a least-squares line through those
earliest reads of the last ``window_s`` gives the device's true period
(its drift against the nominal rate), and the line is then lowered onto
the earliest of them, so that no read is earlier than the line. What
remains is the device's least latency, which a driver that knows it
declares (``latency_ns``) and which is subtracted.

The model re-anchors (starts again from the reads that follow) when the
reads stop fitting: a stall after which the samples are persistently later
than the line by more than ``max_latency_ns`` (the device stopped
acquiring, so the sample count no longer follows the clock), or reads
earlier than the line by as much (a device whose counter jumped). A new
session starts a new model.

A driver that knows its samples' times hands them over instead: on a fixed
grid (simulated drivers, replay: :class:`ExactClock`), or sample by sample
as it reads them (an LSL inlet's timestamps: :class:`StampedClock`).
"""

from __future__ import annotations

import collections
import math
import time

import numpy as np

from mushu_core.clock import offset_ns

#: Seconds of reads per bin; the earliest read of each bin is a point of the envelope.
BIN_S = 0.25
#: Seconds of bins the line is fitted over: long enough that the latency's spread averages out of the
#: period, short enough to follow a drift that changes with the device's temperature.
WINDOW_S = 60.0
#: A read this much later than the line for REANCHOR_S, or this much earlier once, re-anchors the model.
MAX_LATENCY_NS = 50_000_000
REANCHOR_S = 1.0
#: Bins needed before the period is fitted rather than taken as nominal.
MIN_BINS = 8


def host_wake_ns(probes: int = 20, sleep_s: float = 0.0002) -> int:
    """The least time this host takes to wake a sleeping thread after it is due, in ns.

    A driver's read returns when its thread wakes after the data came: at
    least this late, on top of the device's own latency. Measured as the
    shortest overshoot of ``probes`` short sleeps (a few ms in all).
    """
    best = None
    for _ in range(probes):
        due = time.monotonic_ns() + int(sleep_s * 1e9)
        time.sleep(sleep_s)
        late = time.monotonic_ns() - due
        best = late if best is None else min(best, late)
    return max(0, best or 0)


class ClockModel:
    """Acquisition time of every sample of one session, on the host's monotonic clock, from its reads.

    Parameters
    ----------
    fs : float
        The nominal sampling rate.
    latency_ns : int
        The least latency from acquisition to the read's return that is
        known (the device's declared latency, the host's wake-up time),
        subtracted.

    Attributes
    ----------
    reads : int
        Reads observed.
    anchors : int
        Times the model started again from the reads (1 after the first read).
    """

    def __init__(self, fs: float, latency_ns: int = 0, bin_s: float = BIN_S, window_s: float = WINDOW_S,
                 max_latency_ns: int = MAX_LATENCY_NS, reanchor_s: float = REANCHOR_S):
        self.fs = float(fs)
        self.nominal_ns = 1e9 / self.fs
        self.latency_ns = int(latency_ns)
        self.bin_samples = max(1, round(bin_s * self.fs))
        self.window_bins = max(MIN_BINS, round(window_s / bin_s))
        self.max_latency_ns = max_latency_ns
        self.reanchor_samples = max(1, round(reanchor_s * self.fs))
        #: The host's wake-up time after a wait as long as the device's reads wait, subtracted too
        #: (:func:`host_wake_ns`); set from outside once the reads' interval is known.
        self.wake_ns = 0
        self.reads = 0
        self.anchors = 0
        self._intervals: collections.deque = collections.deque(maxlen=64)  # between recent reads
        self._last_read: int | None = None
        self._bins: collections.deque = collections.deque()  # [bin, sample, t] of each bin's earliest read
        self._s_ref = 0  # the line: t(sample) = t_ref + (sample - s_ref) * period
        self._t_ref = 0.0
        self._period = self.nominal_ns
        self._late_since: int | None = None  # first sample of a run of reads all far later than the line

    # -- what the driver's reads say -------------------------------------------

    def observe(self, end_sample: int, t_read_ns: int):
        """A read returned samples up to ``end_sample`` (exclusive) at ``t_read_ns``."""
        self.reads += 1
        if self._last_read is not None:
            self._intervals.append(t_read_ns - self._last_read)
        self._last_read = t_read_ns
        last = end_sample - 1
        t = float(t_read_ns)  # the line is fitted to the reads; the latency is taken off in time_of
        if self.anchors == 0:
            self._anchor(last, t)
            return
        residual = t - self._line(last)
        if residual < -self.max_latency_ns:  # far earlier than possible: the counter or the clock jumped
            self._anchor(last, t)
            return
        if residual > self.max_latency_ns:
            if self._late_since is None:
                self._late_since = last
            elif last - self._late_since >= self.reanchor_samples:  # late for good: the device stalled
                self._anchor(last, t)
                return
        else:
            self._late_since = None
        self._add(last, t)

    def time_of(self, sample: int) -> int:
        """Acquisition time of ``sample`` (an index of this session), in ns of the monotonic clock."""
        return round(self._line(sample)) - self.latency_ns - self.wake_ns

    @property
    def fitted(self) -> bool:
        """True once the period is fitted rather than the nominal one."""
        return len(self._bins) >= MIN_BINS

    def read_interval_ns(self) -> int | None:
        """The median time between the recent reads (how long a read waits), or None before two."""
        if not self._intervals:
            return None
        return int(np.median(self._intervals))

    @property
    def period_ns(self) -> float:
        """The device's sample period as fitted (the nominal one until enough reads came)."""
        return self._period

    @property
    def rate(self) -> float:
        """The device's effective sampling rate in Hz, on the host's clock."""
        return 1e9 / self._period

    @property
    def drift_ppm(self) -> float:
        """How much faster than nominal the device samples, in parts per million."""
        return (self.nominal_ns / self._period - 1.0) * 1e6

    def status(self) -> dict:
        return {"model": "fitted", "fs_nominal": self.fs, "fs_measured": self.rate,
                "drift_ppm": round(self.drift_ppm, 3), "latency_ns": self.latency_ns, "wake_ns": self.wake_ns,
                "reads": self.reads, "anchors": self.anchors, "fitted": self.fitted}

    # -- inside -----------------------------------------------------------------

    def _line(self, sample: int) -> float:
        return self._t_ref + (sample - self._s_ref) * self._period

    def _anchor(self, last: int, t: float):
        """Start again from this read: the nominal period, through this point."""
        self.anchors += 1
        self._bins.clear()
        self._late_since = None
        self._period = self.nominal_ns
        self._s_ref, self._t_ref = last, t
        self._add(last, t)

    def _add(self, last: int, t: float):
        b = last // self.bin_samples
        bins = self._bins
        rel = t - last * self.nominal_ns  # earliest relative to the nominal rate: the least latency
        if bins and bins[-1][0] == b:
            if rel < bins[-1][2] - bins[-1][1] * self.nominal_ns:
                bins[-1][1], bins[-1][2] = last, t
            else:
                self._lower(last, t)
                return
        else:
            bins.append([b, last, t])
            while len(bins) > self.window_bins:
                bins.popleft()
            if len(bins) >= MIN_BINS:
                self._fit()
                return
        self._lower(last, t)

    def _lower(self, last: int, t: float):
        """Keep the line at or below this read."""
        if t < self._line(last):
            self._s_ref, self._t_ref = last, t

    def _fit(self):
        """The period from the bins' earliest reads, the line lowered onto the earliest of them.

        A bin whose every read was held up (the host was busy for its quarter
        second) lies above the envelope: bins more than a few deviations
        above the first fit are left out of the second.
        """
        bins = self._bins
        s0, t0 = bins[0][1], bins[0][2]
        x = np.fromiter((b[1] - s0 for b in bins), float, len(bins))
        y = np.fromiter((b[2] - t0 for b in bins), float, len(bins))
        keep = np.ones(len(bins), bool)
        for _ in range(2):
            if keep.sum() < MIN_BINS // 2 or np.ptp(x[keep]) <= 0:
                break
            slope, intercept = np.polyfit(x[keep], y[keep], 1)
            residual = y - (intercept + slope * x)
            spread = np.median(np.abs(residual[keep] - np.median(residual[keep]))) + 1.0
            keep = residual < np.median(residual[keep]) + 4 * spread
        else:
            if math.isfinite(slope) and abs(slope / self.nominal_ns - 1.0) < 0.01:  # within 1 %: a clock
                self._period = float(slope)
        # the line through the earliest point below all of them
        k = int(np.argmin(y - x * self._period))
        self._s_ref, self._t_ref = bins[k][1], bins[k][2]


class ExactClock:
    """Sample times a driver knows: sample ``k`` acquired at ``t0_ns + k * 1e9 / fs``."""

    def __init__(self, t0_ns: int, fs: float):
        self.t0_ns, self.fs = t0_ns, float(fs)
        self.reads = 0

    def observe(self, end_sample: int, t_read_ns: int):
        self.reads += 1

    def time_of(self, sample: int) -> int:
        return self.t0_ns + round(sample * 1e9 / self.fs)

    @property
    def rate(self) -> float:
        return self.fs

    @property
    def drift_ppm(self) -> float:
        return 0.0

    def status(self) -> dict:
        return {"model": "exact", "fs_nominal": self.fs, "fs_measured": self.fs, "drift_ppm": 0.0,
                "latency_ns": 0, "reads": self.reads, "anchors": 1, "fitted": True}


class StampedClock:
    """Sample times a driver reads along with its samples (an LSL inlet's timestamps).

    The driver calls :meth:`stamp` in each ``get_data()`` with the times of
    the samples it returns, in order, as ns of this host's monotonic clock.
    A sample outside the latest read (which the amp service does not ask
    for) is extrapolated from it at the measured rate.

    Parameters
    ----------
    fs : float
        The nominal sampling rate.
    """

    def __init__(self, fs: float):
        self.fs = float(fs)
        self.reads = 0
        self._n = 0  # samples stamped since start()
        self._first = 0  # of the latest read
        self._times = np.zeros(0, np.int64)
        self._start: tuple[int, int] | None = None  # (sample, time) of the first stamp
        self._last: tuple[int, int] | None = None

    def stamp(self, times_ns):
        """The samples the driver returns now were acquired at ``times_ns`` (ns, one per sample)."""
        times = np.asarray(times_ns, np.int64) + offset_ns()  # time.monotonic_ns() to this process's clock
        if not len(times):
            return
        self._first, self._times = self._n, times
        self._n += len(times)
        if self._start is None:
            self._start = (0, int(times[0]))
        self._last = (self._n - 1, int(times[-1]))

    def observe(self, end_sample: int, t_read_ns: int):
        self.reads += 1

    def time_of(self, sample: int) -> int:
        i = sample - self._first
        if 0 <= i < len(self._times):
            return int(self._times[i])
        if self._last is None:
            raise RuntimeError("StampedClock.time_of before the driver stamped any sample")
        return self._last[1] + round((sample - self._last[0]) * self.period_ns)

    @property
    def period_ns(self) -> float:
        """The mean period of the samples stamped so far (the nominal one before two)."""
        if self._start is None or self._last[0] == 0:
            return 1e9 / self.fs
        return (self._last[1] - self._start[1]) / self._last[0]

    @property
    def rate(self) -> float:
        return 1e9 / self.period_ns

    @property
    def drift_ppm(self) -> float:
        return (self.rate / self.fs - 1.0) * 1e6

    def status(self) -> dict:
        return {"model": "stamped", "fs_nominal": self.fs, "fs_measured": self.rate,
                "drift_ppm": round(self.drift_ppm, 3), "latency_ns": 0, "reads": self.reads, "anchors": 1,
                "fitted": True}

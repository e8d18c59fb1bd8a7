"""LSLAmp: reads a Lab Streaming Layer stream, and a marker stream, through pylsl."""

from __future__ import annotations

import logging
import math
import time
import xml.etree.ElementTree as ET

import numpy as np
import pylsl

from mushu_core.wire import MAX_LABEL_LENGTH

from ..timing import StampedClock
from .base import Amplifier

log = logging.getLogger("mushu.amp.lsl")

#: numpy dtype of each numeric LSL channel format.
DTYPES = {pylsl.cf_float32: np.float32, pylsl.cf_double64: np.float64, pylsl.cf_int8: np.int8,
          pylsl.cf_int16: np.int16, pylsl.cf_int32: np.int32, pylsl.cf_int64: np.int64}
#: Seconds of data the inlet buffers between two reads (the service reads every millisecond).
INLET_BUFFER_S = 30
#: A marker up to this fraction of a sample period after a sample's timestamp
#: lands on it: absorbs the noise of LSL's clock correction between two inlets.
MARKER_TOLERANCE = 0.1
#: Markers kept waiting for data at most; older ones are dropped.
MAX_PENDING_MARKERS = 10000
#: Seconds after ``start()`` the data waits for LSL's first clock-offset
#: estimates (they take about 0.65 s); after that an unknown offset counts as 0.
CLOCK_WAIT_S = 5.0
#: Seconds between two readings of the inlets' clock offsets.
CLOCK_READ_S = 0.5


class LSLAmp(Amplifier):
    """An LSL stream as a mushu amplifier, with the markers of an LSL marker stream.

    ``configure`` resolves the first stream that has every given property,
    within ``timeout`` seconds, and reads its description: channel labels
    (``desc/channels/channel/label``, else ``Ch_0``, ``Ch_1``, ...), the
    nominal sampling rate and the unit of the channels. A marker stream
    (``marker_type`` ``'Markers'`` by default, optionally ``marker_name``)
    is looked for within ``marker_timeout``; without one the data flows
    with no markers. Nothing waits longer than its timeout: the client's
    control requests wait 2 s by default (``get_amp(..., timeout=)``), so
    keep ``timeout + marker_timeout`` below it.

    Markers are placed by LSL timestamps: each outlet's timestamps are
    brought onto this host's ``local_clock`` with its inlet's
    ``time_correction`` (read without blocking; the data wait for the
    first estimates, about 0.65 s after ``start()``), the data's are
    dejittered, and a marker lands on the first sample whose timestamp is at
    or after its own (within ``MARKER_TOLERANCE`` of a period). While a
    marker stream is connected, samples are held ``marker_grace`` seconds
    after they arrive, so that a marker sent with them is there when they
    are returned; a marker that comes later still lands on the next returned
    sample. A marker from before the first sample since ``start()`` is
    dropped. Without a marker stream the timestamps are not needed and the
    data flow at once.

    Every sample is stamped with its LSL timestamp (dejittered, through
    ``time_correction``), on this host's monotonic clock: the time the
    outlet gave it, whatever the network's delay (:meth:`clock`). The data
    wait for the first clock-offset estimate, about 0.65 s after
    ``start()`` (nothing is lost: the samples wait in the inlet).

    ``is_available()`` is True whenever pylsl (which ships liblsl) imports;
    whether a stream exists is only known when ``configure`` looks for it.
    """

    presets: list = []

    def __init__(self):
        self.fs = 1.0
        self.channels: list[str] = []
        self.units: list[str] = []
        self.unit = "uV"
        self.stream_info: dict = {}
        self.marker_grace = 0.02
        self._inlet = None
        self._marker_inlet = None
        self._timeout = 1.0
        self._marker_timeout = 0.5
        self._buf = None
        self._clock = StampedClock(1.0)
        self._lsl_to_monotonic_ns = 0
        self._reset()

    def _reset(self):
        self._held: list[tuple[float, np.ndarray, np.ndarray]] = []  # (arrival, data, timestamps)
        self._pending: list[tuple[float, str]] = []  # markers (LSL time, label) waiting for their sample
        self._first_ts: float | None = None
        self._offsets: list = [None, None]  # time_correction of the data and the marker inlet
        self._next_offsets = 0.0
        self._offsets_deadline = time.monotonic() + CLOCK_WAIT_S
        self.late_markers = 0
        self.dropped_markers = 0

    def configure(self, name=None, type="EEG", source_id=None, timeout=1.0, marker_name=None,
                  marker_type="Markers", marker_source_id=None, marker_timeout=0.5, marker_grace=0.02):
        """Find the LSL streams to read.

        Parameters
        ----------
        name, type, source_id : str, optional
            Properties the data stream must have (those given; at least one).
        timeout : float
            Seconds to look for the data stream and to read its description.
        marker_name, marker_type, marker_source_id : str, optional
            Properties of the marker stream; all None: no markers.
        marker_timeout : float
            Seconds to look for the marker stream.
        marker_grace : float
            Seconds samples are held for markers while a marker stream is read.

        Raises
        ------
        RuntimeError
            No stream with these properties answered within ``timeout``.
        ValueError
            The stream is not a regular-rate numeric stream, or an argument
            is out of range.
        TypeError
            A property is not a string.
        """
        timeout, marker_timeout = _seconds("timeout", timeout), _seconds("marker_timeout", marker_timeout)
        marker_grace = _seconds("marker_grace", marker_grace, zero=True)
        props = _props(name=name, type=type, source_id=source_id)
        if not props:
            raise ValueError("give at least one of name, type and source_id of the LSL stream")
        marker_props = _props(name=marker_name, type=marker_type, source_id=marker_source_id)
        self._close()
        info = _resolve(props, timeout)
        if info is None:
            raise RuntimeError(f"no LSL stream with {_describe(props)} found within {timeout:g} s")
        fmt = info.channel_format()
        if fmt not in DTYPES:
            raise ValueError(f"LSL stream {info.name()!r} carries strings; lslamp reads numeric streams "
                             "(a marker stream goes in marker_name/marker_type)")
        if not info.nominal_srate() > 0:
            raise ValueError(f"LSL stream {info.name()!r} has an irregular rate; lslamp needs a nominal rate")
        inlet = pylsl.StreamInlet(info, max_buflen=INLET_BUFFER_S, recover=True,
                                  processing_flags=pylsl.proc_dejitter)
        try:
            full = inlet.info(timeout)
        except RuntimeError as exc:  # pylsl's TimeoutError and LostError
            raise RuntimeError(f"LSL stream {info.name()!r} did not send its description within {timeout:g} s "
                               f"({exc.__class__.__name__})") from None
        n = full.channel_count()
        labels, units = _channel_desc(full.as_xml(), n)
        self._inlet, self._timeout = inlet, timeout
        self.fs, self.channels, self.units = float(full.nominal_srate()), labels, units
        given = [u for u in units if u]
        self.unit = given[0] if given else "uV"
        if len(set(given)) > 1:
            log.warning("LSL stream %r has channels in %s; the amp reports one unit for all: %s",
                        full.name(), sorted(set(given)), self.unit)
        self._buf = np.empty((max(1024, int(self.fs)), n), DTYPES[fmt])
        self.stream_info = {"name": full.name(), "type": full.type(), "source_id": full.source_id(),
                            "hostname": full.hostname(), "markers": None}
        self.marker_grace, self._marker_timeout = marker_grace, marker_timeout
        if marker_props:
            minfo = _resolve(marker_props, marker_timeout)
            if minfo is None:
                log.info("no LSL marker stream with %s within %g s: reading without markers",
                         _describe(marker_props), marker_timeout)
            else:
                self._marker_inlet = pylsl.StreamInlet(minfo, recover=True)
                self.stream_info["markers"] = {"name": minfo.name(), "type": minfo.type(),
                                               "source_id": minfo.source_id()}
        log.info("LSL stream %s: %g Hz, channels %s", self.stream_info, self.fs, self.channels)

    def start(self):
        if self._inlet is None:
            raise RuntimeError("lslamp is not configured")
        self._reset()
        try:
            self._inlet.open_stream(self._timeout)
        except RuntimeError as exc:  # pylsl's TimeoutError and LostError
            raise RuntimeError(f"LSL stream {self.stream_info['name']!r} did not open within "
                               f"{self._timeout:g} s ({type(exc).__name__})") from None
        if self._marker_inlet is not None:
            try:
                self._marker_inlet.open_stream(self._marker_timeout)
            except RuntimeError:
                log.warning("LSL marker stream did not open within %g s: no markers", self._marker_timeout)
                self._marker_inlet = None
        self._clock = StampedClock(self.fs)
        self._lsl_to_monotonic_ns = _lsl_to_monotonic_ns()

    def clock(self):
        """The samples' LSL timestamps, on this host's monotonic clock."""
        return self._clock

    def stop(self):
        for inlet in (self._inlet, self._marker_inlet):
            if inlet is not None:
                inlet.close_stream()

    def _close(self):
        self.stop()
        self._inlet = self._marker_inlet = None

    def get_data(self):
        now = time.monotonic()
        self._pull_data(now)
        grace = 0.0
        if self._marker_inlet is not None:
            self._pull_markers()  # after the data: what was sent with it has arrived
            grace = self.marker_grace
        if not self._read_offsets(now):
            return np.empty((0, len(self.channels)), self._buf.dtype), []
        k = 0
        while k < len(self._held) and self._held[k][0] <= now - grace:
            k += 1
        if not k:
            return np.empty((0, len(self.channels)), self._buf.dtype), []
        taken, self._held = self._held[:k], self._held[k:]
        data = np.concatenate([d for _a, d, _t in taken]) if k > 1 else taken[0][1]
        ts = np.concatenate([t for _a, _d, t in taken]) if k > 1 else taken[0][2]
        if self._first_ts is None:
            self._first_ts = float(ts[0])
        self._clock.stamp(np.rint((ts + self._offsets[0]) * 1e9).astype(np.int64) + self._lsl_to_monotonic_ns)
        return data, self._place_markers(ts)

    def _read_offsets(self, now: float) -> bool:
        """Refresh both inlets' clock offsets when due; False while one is not known yet."""
        if now >= self._next_offsets or None in self._offsets:
            self._next_offsets = now + CLOCK_READ_S
            for i, inlet in enumerate((self._inlet, self._marker_inlet)):
                if inlet is None:  # no marker stream
                    self._offsets[i] = 0.0
                    continue
                try:
                    self._offsets[i] = inlet.time_correction(0.0)  # the latest estimate; never waits
                except RuntimeError:  # pylsl's TimeoutError: no estimate yet
                    pass
        if None not in self._offsets:
            return True
        if now < self._offsets_deadline:
            return False
        log.warning("no LSL clock offset for the %s stream after %g s: taken as 0",
                    "data" if self._offsets[0] is None else "marker", CLOCK_WAIT_S)
        self._offsets = [o or 0.0 for o in self._offsets]
        return True

    def _pull_data(self, now: float):
        buf = self._buf
        while True:
            _values, ts = self._inlet.pull_chunk(timeout=0.0, max_samples=len(buf), dest_obj=buf)
            if not len(ts):
                return
            self._held.append((now, buf[:len(ts)].copy(), np.asarray(ts, np.float64)))
            if len(ts) < len(buf):
                return

    def _pull_markers(self):
        values, ts = self._marker_inlet.pull_chunk(timeout=0.0, max_samples=1024)
        for v, t in zip(values, ts):
            self._pending.append((float(t), _label(v[0])))
        if len(self._pending) > MAX_PENDING_MARKERS:
            drop = len(self._pending) - MAX_PENDING_MARKERS
            log.warning("%d LSL markers waited too long for data and are dropped", drop)
            self.dropped_markers += drop
            del self._pending[:drop]

    def _place_markers(self, ts: np.ndarray) -> list:
        """The pending markers whose sample is among ``ts``, as ``(ms, label)``."""
        if not self._pending:
            return []
        ts = ts + self._offsets[0]  # both onto this host's clock
        first = self._first_ts + self._offsets[0]
        period = 1.0 / self.fs
        tol = MARKER_TOLERANCE * period
        out, keep = [], []
        for raw, label in sorted(self._pending, key=lambda m: m[0]):
            t = raw + self._offsets[1]
            if t > ts[-1] + tol:
                keep.append((raw, label))
            elif t < first - period:
                self.dropped_markers += 1  # before start(): belongs to no data read
            else:
                row = int(np.searchsorted(ts, t - tol, side="left"))
                if row == 0 and t < ts[0] - tol and ts[0] > first:
                    self.late_markers += 1  # its sample was returned before
                # half a period before the row: lands on it whatever the rounding on the way
                out.append((max(0.0, (row - 0.5) * 1000.0 * period), label))
        self._pending = keep
        return out

    def get_channels(self):
        return list(self.channels)

    def get_sampling_frequency(self):
        return self.fs

    @staticmethod
    def is_available():
        return True


def _lsl_to_monotonic_ns(tries: int = 9) -> int:
    """What to add to ``pylsl.local_clock()`` in ns to get ``time.monotonic_ns()``.

    The same clock on Linux (both ``CLOCK_MONOTONIC``), so about 0 there;
    measured, not assumed, for systems where they differ: the reading
    taken between the two closest monotonic readings.
    """
    best = None
    for _ in range(tries):
        before = time.monotonic_ns()
        lsl = pylsl.local_clock()
        after = time.monotonic_ns()
        if best is None or after - before < best[0]:
            best = (after - before, (before + after) // 2 - round(lsl * 1e9))
    return best[1]


def _seconds(what: str, value, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not zero) or value > 3600:
        raise ValueError(f"{what} must be a {'non-negative' if zero else 'positive'} number of seconds, not {value!r}")
    return float(value)


def _props(**props) -> dict:
    for key, value in props.items():
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{key} must be a string, not {value!r}")
    return {k: v for k, v in props.items() if v is not None}


def _describe(props: dict) -> str:
    return " and ".join(f"{k}={v!r}" for k, v in props.items())


def _xpath_literal(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"an LSL property cannot hold both kinds of quotes: {value!r}")


def _resolve(props: dict, timeout: float):
    """The first LSL stream with every property in ``props``, or None after ``timeout`` seconds."""
    predicate = " and ".join(f"{k}={_xpath_literal(v)}" for k, v in props.items())
    found = pylsl.resolve_bypred(predicate, 1, timeout)
    if len(found) > 1:
        log.info("%d LSL streams match %s; using the first (source_id %r)",
                 len(found), predicate, found[0].source_id())
    return found[0] if found else None


def _channel_desc(xml: str, n: int) -> tuple[list, list]:
    """Channel labels and units from a stream's XML description (``Ch_i`` where none is given)."""
    labels, units = [f"Ch_{i}" for i in range(n)], [""] * n
    try:
        channels = ET.fromstring(xml).findall("./desc/channels/channel")
    except ET.ParseError as exc:
        log.warning("unreadable LSL stream description: %s", exc)
        channels = []
    for i, ch in enumerate(channels[:n]):
        labels[i] = (ch.findtext("label") or "").strip() or labels[i]
        units[i] = (ch.findtext("unit") or "").strip()
    return labels, units


def _label(value) -> str:
    """A marker label from an LSL marker sample's first value (strings or numbers)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    label = value if isinstance(value, str) else str(value)
    if len(label) > MAX_LABEL_LENGTH:
        log.warning("LSL marker of %d characters cut to %d", len(label), MAX_LABEL_LENGTH)
        label = label[:MAX_LABEL_LENGTH]
    return label

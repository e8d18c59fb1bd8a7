"""Publishing a mushu stream and its markers as LSL outlets, with LSL timestamps.

The bridge is a passive consumer: it never selects, configures or starts
the amp. It subscribes to the amp's blocks and stream info and to the
markers service, follows the amp's sessions (joining a running session
where it is, a new one from its first sample), fetches from the histories
what the bus dropped, and pushes:

- every sample to the data outlet (type ``'EEG'``, channel labels and
  units in ``desc/channels``, nominal rate ``fs``, ``source_id``
  ``mushu:<host>:<stream>``, the same for every run of the bridge so LSL
  consumers reconnect), stamped with its acquisition time;
- every marker to the marker outlet (type ``'Markers'``, one string
  channel, irregular rate) at the time of the sample mushu puts it on: a
  markers-service marker placed as the client and the recorder place it
  (:class:`mushu_core.follow.placement.MarkerPlacer`: the first sample
  acquired at or after its stamp, a late marker of a session the amp has
  since restarted on that session's sample), a marker the amplifier put on
  a sample (block header) on that sample. So an LSL consumer finds each
  marker on the same sample as a mushu recording, whether it aligns markers
  to the nearest sample or to the next. A marker is pushed once the data
  holding its sample has been pushed; one from before the first data
  pushed, or whose sample has not come within ``MARKER_HOLD_S`` (the amp
  is stopped or away), goes out at its own stamp.

Timestamps: mushu stamps a block with the acquisition time of its first
sample on the amp host's monotonic clock (``t_ns``); sample ``i`` of the
block was acquired ``i / fs`` later. The bridge brings such a time onto
its own host's clock with the estimated offset to the amp (0 exactly on one
host) and then onto LSL's ``local_clock`` with the offset between
``time.monotonic_ns`` and ``pylsl.local_clock`` measured at startup (on
Linux both read CLOCK_MONOTONIC: the offset is ~0; remeasured every minute).
Markers-service stamps go the same way with the markers service's offset.
mushu stamps a block when the amp read it, so after a late read the next
block's first samples can be stamped before the previous block's last;
such samples are pushed 1 µs after their predecessor instead (what LSL's
``proc_monotonize`` does), which keeps the stamps increasing without
shifting any later sample.
"""

from __future__ import annotations

import bisect
import collections
import logging
import math
import socket
import threading

import numpy as np
import pylsl
import zmq

from mushu_core import security
from mushu_core.bus import RCVHWM, BusReader, subscribe
from mushu_core.clock import ClockOffset, now_ns
from mushu_core.control import ControlClient
from mushu_core.errors import ServiceUnavailable
from mushu_core.fetch import history_blocks, history_markers, join_markers
from mushu_core.follow.markers import MarkerFollower
from mushu_core.follow.placement import MarkerPlacer
from mushu_core.follow.stream import BlockFollower
from mushu_core.wire import (MAX_MARKER_BYTES, Block, Marker, MarkerStreamInfo, StreamInfo, data_topic, info_topic,
                             marker_topic)

log = logging.getLogger("mushu.lslbridge")

LSL_OFFSET_PERIOD_NS = 60_000_000_000
#: Largest number of messages handled from one socket before looking at the other.
BATCH = 1000
#: Seconds a marker waits for the data holding its sample before it goes out at its own stamp.
MARKER_HOLD_S = 2.0
#: Seconds of block times kept for placing markers.
TIMELINE_S = 10.0
#: Spacing of samples whose mushu stamps went back in time, in seconds.
MONOTONIC_STEP_S = 1e-6


def lsl_clock_offset(probes: int = 16) -> float:
    """``pylsl.local_clock() - now_ns() / 1e9`` in seconds, from the probe with the shortest read."""
    best = None
    for _ in range(probes):
        t0 = now_ns()
        lsl = pylsl.local_clock()
        t1 = now_ns()
        if best is None or t1 - t0 < best[0]:
            best = (t1 - t0, lsl - (t0 + t1) / 2e9)
    return best[1]


class LSLBridge:
    """Subscribe to a mushu stream and its markers; push them to LSL outlets.

    Parameters
    ----------
    amp_data, amp_control : str
        Endpoints of the amp service.
    markers_data, markers_control : str or None
        Endpoints of the markers service; None: no markers service.
    stream, marker_stream : str
        mushu stream names.
    name : str, optional
        LSL name of the data outlet (default ``mushu-<stream>``); the
        marker outlet is ``<name>-markers``.
    lsl_type : str
        LSL type of the data outlet.
    """

    def __init__(self, amp_data: str, amp_control: str, markers_data: str | None, markers_control: str | None,
                 stream: str = "eeg", marker_stream: str = "markers", name: str | None = None,
                 lsl_type: str = "EEG"):
        self.stream, self.marker_stream = stream, marker_stream
        self.name = name or f"mushu-{stream}"
        self.lsl_type = lsl_type
        self.source_id = f"mushu:{socket.gethostname()}:{stream}"
        keys = security.configured()  # the bridge is a client like any other: a viewer's keys will do
        self.bus = subscribe(amp_data, [data_topic(stream), info_topic(stream)], keys, RCVHWM)
        self.ctl = ControlClient(amp_control, 2.0, "amp", keys)
        self.amp_clock = ClockOffset(lambda: self.ctl.call("time"))
        self.mctl = self.mbus = None
        if markers_data and markers_control:
            self.mbus = subscribe(markers_data, [marker_topic(marker_stream), info_topic(marker_stream)], keys, RCVHWM,
                                  message_bytes=MAX_MARKER_BYTES)
            self.mctl = ControlClient(markers_control, 0.5, "markers", keys)
        self.markers_clock = ClockOffset(lambda: self.mctl.request("time", timeout=0.2)[0])
        self.lsl_offset = lsl_clock_offset()
        self._next_lsl_offset = now_ns() + LSL_OFFSET_PERIOD_NS
        self.outlet = None
        self._outlet_key = None
        self.marker_outlet = self._make_marker_outlet()
        #: The amp stream (this bridge is its sink), and the marker stream.
        self.follower = BlockFollower(self, self._amp_history, TIMELINE_S)
        self.markers = MarkerFollower(self, self._markers_history)
        self.markers.join()  # every marker from the bridge's start on
        self.placer = MarkerPlacer()  # its start: the first sample pushed
        self._arrivals: dict[tuple[str, int], int] = {}  # when each marker waiting in the placer came
        self._stamps: collections.deque = collections.deque()  # (first sample, LSL stamps) per pushed block
        self._previous_stamps: collections.deque = collections.deque()  # the same of the session before
        self._last_stamp = -math.inf
        #: Counters: samples and markers pushed, samples lost (not in the amp's history any more).
        self.samples_pushed = self.markers_pushed = self.lost_samples = self.lost_markers = 0
        self._stop = threading.Event()

    # -- startup ---------------------------------------------------------------

    def sync(self) -> bool:
        """Ask the services where they are; True once the amp answered.

        A session running now is joined where it is (its past is not
        pushed); later sessions are pushed from their first sample.
        """
        try:
            status = self.ctl.call("status")
            self.amp_clock.measure()
        except ServiceUnavailable as exc:
            log.warning("%s", exc)
            return False
        self.follower.begin(status["session"], None)  # where it is; a later session from its first sample
        if status["channels"]:
            self._ensure_outlet(status["channels"], status["fs"], [status["unit"]] * len(status["channels"]),
                                status["amp"] or "")
        if self.mctl is not None:
            join_markers(self.mctl, self.markers_clock, self.markers)
        return True

    # -- outlets -----------------------------------------------------------------

    def _ensure_outlet(self, channels: list, fs: float, units: list, amp: str, dtype: str = "<f4"):
        """(Re)create the data outlet if the stream's shape differs from the outlet's."""
        key = (tuple(channels), float(fs), tuple(units), dtype)
        if key == self._outlet_key:
            return
        fmt = "float32" if dtype == "<f4" else "double64"
        info = pylsl.StreamInfo(self.name, self.lsl_type, len(channels), float(fs), fmt, self.source_id)
        desc = info.desc()
        desc.append_child_value("manufacturer", "mushu")
        acq = desc.append_child("acquisition")
        acq.append_child_value("amp", amp)
        acq.append_child_value("stream", self.stream)
        chans = desc.append_child("channels")
        for label, unit in zip(channels, units):
            ch = chans.append_child("channel")
            ch.append_child_value("label", label)
            ch.append_child_value("unit", unit)
            ch.append_child_value("type", self.lsl_type)
        self.outlet = None  # the old outlet goes before the new one appears
        self.outlet = pylsl.StreamOutlet(info)
        self._outlet_key = key
        log.info("LSL outlet %r (source_id %r): %d channels at %g Hz", self.name, self.source_id, len(channels), fs)

    def _make_marker_outlet(self):
        info = pylsl.StreamInfo(f"{self.name}-markers", "Markers", 1, pylsl.IRREGULAR_RATE, "string",
                                f"{self.source_id}:markers")
        info.desc().append_child_value("manufacturer", "mushu")
        return pylsl.StreamOutlet(info)

    def _outlet_for(self, block: Block):
        h = block.header
        key = self._outlet_key
        if key is None or len(key[0]) != h.n_channels or key[1] != h.fs or key[3] != h.dtype:
            try:
                status = self.ctl.call("status")
                channels, amp, unit = status["channels"], status["amp"] or "", status["unit"]
            except ServiceUnavailable:
                channels, amp, unit = [], "", "uV"
            if len(channels) != h.n_channels:
                channels = [f"Ch_{i}" for i in range(h.n_channels)]
            self._ensure_outlet(channels, h.fs, [unit] * h.n_channels, amp, h.dtype)

    # -- clocks --------------------------------------------------------------------

    def lsl_time(self, t_ns: int, offset_ns: int | None) -> float:
        """LSL time of ``t_ns`` on a service's clock that is ``offset_ns`` ahead of this host's."""
        return (t_ns - (offset_ns or 0)) / 1e9 + self.lsl_offset

    def tick(self):
        """Periodic work: clock probes when due."""
        self.amp_clock.update()
        if self.mctl is not None:
            self.markers_clock.update()
        if self.placer.pending:
            self._push_waiting_markers()
        if now_ns() >= self._next_lsl_offset:
            self.lsl_offset = lsl_clock_offset()
            self._next_lsl_offset = now_ns() + LSL_OFFSET_PERIOD_NS

    # -- the loop --------------------------------------------------------------------

    def run(self):
        """Bridge until :meth:`shutdown`; then close the sockets and outlets."""
        stop = self._stop
        try:
            while not stop.is_set() and not self.sync():
                stop.wait(1.0)
            buses = [bus for bus in (self.bus, self.mbus) if bus is not None]
            pollin = zmq.POLLIN
            while not stop.is_set():
                # A bus reader may replace its socket (bus.BusReader): poll the ones it has now.
                ready = {sock for sock, _ in zmq.zmq_poll([(s, pollin) for bus in buses for s in bus.sockets], 100)}
                for bus in buses:
                    if ready.intersection(bus.sockets):
                        self._drain(bus)
                self.tick()
        finally:
            log.info("pushed %d samples and %d markers; lost %d samples and %d markers",
                     self.samples_pushed, self.markers_pushed, self.lost_samples, self.lost_markers)
            self.close()

    def shutdown(self):
        """Make :meth:`run` return (from a signal handler or another thread)."""
        self._stop.set()

    def _drain(self, bus: BusReader):
        for _ in range(BATCH):
            msg = bus.receive()
            if msg is None:
                return
            self.handle(msg)

    def handle(self, msg):
        """Act on one decoded bus message."""
        if isinstance(msg, Block):
            self.follower.on_block(msg)
        elif isinstance(msg, StreamInfo):
            if msg.channels and msg.session == self.follower.session:
                self._ensure_outlet(msg.channels, msg.fs, msg.units, msg.amp, msg.dtype)
            self.follower.on_info(msg)
        elif isinstance(msg, (Marker, MarkerStreamInfo)):
            self.markers.on_message(msg)

    # -- data: what the follower hands on -----------------------------------------------

    def _amp_history(self, session: str, from_sample: int, until: int):
        return history_blocks(self.ctl, self.stream, session, from_sample, until)

    def new_session(self, old: str | None, block: Block, not_acquired: int) -> bool:
        """A new amp session: pushed from its first sample, its stamps after a gap."""
        log.info("amp session %s: pushing it from its first sample (%d samples not acquired after session %s)",
                 block.header.session, not_acquired, old)
        self._previous_stamps, self._stamps = self._stamps, collections.deque()
        return True

    def lost(self, first_sample: int, count: int, reason: str):
        log.warning("%d samples of session %s lost from sample %d (%s)", count, self.follower.session,
                    first_sample, reason)
        self.lost_samples += count

    def samples(self, block: Block, skip: int, stop: int):
        """Push rows ``skip:stop`` of ``block`` (the stream's next samples) with their LSL stamps."""
        h = block.header
        self._outlet_for(block)
        data = block.data[skip:stop]
        period = 1.0 / h.fs
        t_first_ns = h.time_of(skip)
        stamps = self.lsl_time(t_first_ns, self.amp_clock.offset_ns) + np.arange(len(data)) * period
        # mushu stamps a block when it was read: after a late read the next block's first samples
        # can precede it; they are pushed just after it instead (LSL's "monotonize"), without bias.
        stamps = np.maximum(stamps, self._last_stamp + MONOTONIC_STEP_S * np.arange(1, len(data) + 1))
        self._last_stamp = stamps[-1]
        self.outlet.push_chunk(np.ascontiguousarray(data), stamps.tolist())
        for offset, label in h.markers:
            if skip <= offset < stop:
                self.marker_outlet.push_sample([label], stamps[offset - skip])
                self.markers_pushed += 1
        self.samples_pushed += len(data)
        self._stamps.append((h.first_sample + skip, stamps))
        if self.placer.start_ns is None:
            self.placer.start_ns = t_first_ns
        if self.placer.pending:
            self._push_waiting_markers()
        keep = h.first_sample + stop - int(TIMELINE_S * h.fs)
        while len(self._stamps) > 1 and self._stamps[1][0] <= keep:
            self._stamps.popleft()

    def _stamp_of(self, sample: int, previous: bool = False) -> float | None:
        """The LSL timestamp a pushed ``sample`` (of the session before, if ``previous``) went out with."""
        pushed = self._previous_stamps if previous else self._stamps
        if not pushed:
            return None
        i = max(0, bisect.bisect_right(pushed, sample, key=lambda b: b[0]) - 1)
        first, stamps = pushed[i]
        return float(stamps[min(len(stamps) - 1, max(0, sample - first))])

    # -- markers ------------------------------------------------------------------------

    def _markers_history(self, session: str, from_seq: int, until: int):
        if self.mctl is None:
            return ()
        return history_markers(self.mctl, self.marker_stream, session, from_seq, until)

    def marker(self, m: Marker):
        """The marker stream's next marker: pushed on its sample once that is pushed."""
        self.placer.add(m)
        self._arrivals[m.session, m.seq] = now_ns()
        self._push_waiting_markers()

    def markers_lost(self, session: str, first_seq: int, count: int):
        log.warning("markers %d..%d of session %s lost (not in the markers history)", first_seq,
                    first_seq + count - 1, session)
        self.lost_markers += count

    def _push_waiting_markers(self):
        """Push the waiting markers whose sample has been pushed, and those whose sample is not coming."""
        if self.placer.start_ns is not None:
            offset_ns = (self.amp_clock.offset_ns or 0) - (self.markers_clock.offset_ns or 0)  # onto the amp's clock
            early = []
            placed = self.placer.place_samples(self.follower.timeline, self.follower.next_sample, offset_ns, early)
            for m in early:  # before the first sample pushed
                self._push_marker(m, None)
            for sample, m, previous in placed:
                self._push_marker(m, self._stamp_of(sample, previous))
        give_up = now_ns() - int(MARKER_HOLD_S * 1e9)
        for m in self.placer.expire(lambda m: self._arrivals[m.session, m.seq] <= give_up):
            self._push_marker(m, None)

    def _push_marker(self, m: Marker, stamp: float | None):
        """Push ``m`` at ``stamp``; None: at its own time."""
        del self._arrivals[m.session, m.seq]
        if stamp is None:
            stamp = self.lsl_time(m.t_ns, self.markers_clock.offset_ns)
        self.marker_outlet.push_sample([m.label], stamp)
        self.markers_pushed += 1

    def close(self):
        for bus in (self.bus, self.mbus):
            if bus is not None:
                bus.close()
        self.ctl.close()
        if self.mctl is not None:
            self.mctl.close()
        self.outlet = self.marker_outlet = None

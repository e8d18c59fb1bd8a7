"""The client's data path: the bus, the stream followed, the samples and markers waiting to be returned.

:class:`StreamReader` is what :meth:`mushu_client.Amp.get_data` runs on. It
reads the one SUB socket (the amp's blocks and stream info, the marker
stream), hands the amp's messages to a
:class:`~mushu_core.follow.stream.BlockFollower` (every sample once, in
order; gaps filled from the history or reported) and the markers to the
:class:`~mushu_client.markerfeed.MarkerFeed`, keeps what is to be returned
(:class:`PendingSamples`), and waits: for data, for markers still on their
way, for a service that went away. Warnings are collected in
:attr:`StreamReader.warnings`; the ``Amp`` raises them from its public
methods.
"""

from __future__ import annotations

import time

import numpy as np

from mushu_core.bus import subscribe
from mushu_core.clock import ClockOffset, now_ns
from mushu_core.errors import AmpError, EndOfData, GapWarning, ServiceUnavailable, ServiceWarning
from mushu_core.fetch import history_blocks
from mushu_core.follow.placement import rows_of
from mushu_core.follow.stream import BlockFollower
from mushu_core.wire import MAX_MARKER_BYTES, Block, StreamInfo, data_topic, info_topic

from .markerfeed import MarkerFeed

#: Without any message (blocks, or the stream info sent every 0.25 s) for this
#: long, the client checks that the amp service is still there.
SILENCE_S = 0.7
#: After stop(), how long the bus must be quiet before missing samples are fetched from the history
#: (normally the stream info that follows the last block fetches them at once).
END_QUIET_S = 0.2
#: A poll this recent still tells what is waiting (a caller that calls get_data in a loop
#: comes back within microseconds; then the poll that ended the last call is not repeated).
FRESH_POLL_NS = 200_000
#: How long samples wait for a silent markers service (a restart) before it counts as gone.
MARKERS_WAIT_S = 3.0
#: The markers service's heartbeat period (0.25 s) and some slack.
MARKERS_HEARTBEAT_NS = 300_000_000
#: After this long without a message the client looks for a refused CURVE handshake.
HANDSHAKE_CHECK_S = 0.05
#: How far back sample times are kept, to place markers that arrive that late.
TIMELINE_S = 10.0


class PendingSamples:
    """The samples followed and not yet returned, and the runs of sample indexes they form.

    Attributes
    ----------
    pending : int
        Samples waiting.
    """

    def __init__(self):
        self.clear()

    def clear(self):
        self._chunks: list[np.ndarray] = []
        self._segments: list[list[int]] = []  # [first_sample, n] of each contiguous run
        self.pending = 0

    def append(self, first_sample: int, data: np.ndarray):
        """Samples ``first_sample ..`` follow (after a gap if they do not continue the last run)."""
        self._chunks.append(data)
        self.pending += len(data)
        if self._segments and sum(self._segments[-1]) == first_sample:
            self._segments[-1][1] += len(data)
        else:
            self._segments.append([first_sample, len(data)])

    @property
    def first(self) -> int | None:
        """Index of the oldest sample waiting."""
        return self._segments[0][0] if self._segments else None

    def take(self, n_channels: int, until: int | None = None) -> tuple[np.ndarray, list]:
        """Return the samples before ``until`` (all if None), as one new array, and their segments.

        Returns
        -------
        data : ndarray
            One new (time, channels) array in native byte order.
        segments : list of [first_sample, n]
            The contiguous runs of sample indexes that make up ``data``'s
            rows, in order (more than one only where samples were lost).
        """
        chunks, self._chunks = self._chunks, []
        segments, self._segments = self._segments, []
        self.pending = 0
        if not chunks:
            return np.empty((0, n_channels), np.float32), segments
        out = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        end = segments[-1][0] + segments[-1][1]
        if until is not None and until < end:
            rows, taken = 0, []
            for first, n in segments:
                k = min(n, max(0, until - first))
                if k:
                    taken.append([first, k])
                if k < n:
                    self._segments.append([first + k, n - k])
                rows += k
            self._chunks = [out[rows:]]
            self.pending = len(out) - rows
            out, segments = out[:rows], taken
        if out.base is not None or not out.flags.writeable:  # a view of a buffer the caller must not share
            out = out.copy()
        return (out if out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))), segments


class StreamReader:
    """One client's reading of an amp stream and its markers.

    Parameters
    ----------
    ctl : ControlClient
        The amp service's control socket (history, time, ping).
    stream : str
        The amp's stream.
    bus_endpoint : str
        Where to read the amp's blocks.
    markers, markers_control, marker_stream : str
        The markers service.
    keys : Keys or None
        This client's CURVE keys.
    hwm : int
        Messages queued per publisher, at most.
    marker_grace_ns : int
        Samples younger than this wait for markers still on their way (while
        a markers service is heard from).
    dead_after : float
        Seconds the amp service may be away before :meth:`read` raises.

    Attributes
    ----------
    warnings : list of Warning
        What to tell the user, in order, since the owner last took them.
    gaps : list of (int, int)
        ``(first_sample, count)`` of every gap: samples lost or not acquired.
    """

    def __init__(self, ctl, stream: str, bus_endpoint: str, markers: str, markers_control: str,
                 marker_stream: str, keys, hwm: int, marker_grace_ns: int, dead_after: float):
        self.ctl, self.stream = ctl, stream
        self.markers = MarkerFeed(markers, markers_control, marker_stream, keys)
        self.placer = self.markers.placer
        # One SUB socket for the data and the markers: one poll per wait, messages in arrival order.
        self.bus = subscribe([bus_endpoint, self.markers.endpoint],
                             [data_topic(stream), info_topic(stream), *self.markers.topics],
                             keys, hwm, watch=True, message_bytes=MAX_MARKER_BYTES)
        self.follower = BlockFollower(self, self._history, TIMELINE_S)
        self.pending = PendingSamples()
        #: Offsets of the amp's and the markers service's clocks from this host's.
        self.amp_clock = ClockOffset(lambda: ctl.call("time"))
        self.markers_clock = self.markers.clock
        self.marker_grace_ns = marker_grace_ns
        self.dead_after = dead_after
        self.channels: list = []
        self.fs = 1.0
        self.warnings: list[Warning] = []
        self.gaps: list[tuple[int, int]] = []
        #: Samples lost or not acquired since this reader was made.
        self.lost_samples = 0
        #: True once the amp's data ended (a replay reached its end).
        self.ended = False
        #: False while the amp service does not answer.
        self.connected = True
        self._deferred: Block | None = None  # a new session's block, after the old one's samples
        self._amp_markers: list[tuple[int, str]] = []  # markers the amplifier put on its samples
        self._end_sample: int | None = None  # stop() or the end of the data: no samples after it
        self._markers_settled_at: int | None = None  # the end up to which every marker is in
        self._error: str | None = None
        #: ``[first_sample, n]`` runs of the samples the last :meth:`read` returned.
        self.returned: list[list[int]] = []
        self._away_since: float | None = None
        self._last_message = time.monotonic()

    # -- a session ---------------------------------------------------------------------

    def before_start(self):
        """Drop what the bus brought of the amp before a start (the markers go to their feed); join the markers."""
        self.bus.forget()  # not what an earlier poll found: what is there now
        self._take_waiting(amp_messages=False)
        self.markers.join()
        self.amp_clock.measure()

    def begin(self, session: str, first_sample: int):
        """Follow ``session`` from ``first_sample`` (the amp's start reply) on."""
        self.follower.begin(session, first_sample, start_ns=self._amp_now())
        self.pending.clear()
        self.placer.start_ns = None
        self._deferred = None
        self._amp_markers = []
        self.ended = False
        self._end_sample = None
        self._error = None

    def stopped(self, session: str, next_sample: int):
        """The amp stopped at ``next_sample`` of ``session``: return everything up to it, then nothing."""
        if session == self.follower.session:
            self._end_sample = next_sample

    @property
    def session(self) -> str | None:
        return self.follower.session

    @property
    def stopping(self) -> bool:
        """True once the stream stopped or ended (what is left of it comes without waiting for more)."""
        return self._end_sample is not None

    @property
    def finished(self) -> bool:
        """True once the stream stopped or ended and every sample up to its end was returned."""
        return self._at_end() and not self.pending.pending

    @property
    def refetched_samples(self) -> int:
        """Samples fetched from the amp's history so far."""
        return self.follower.refetched

    # -- get_data ----------------------------------------------------------------------

    def read(self, timeout: float) -> tuple[np.ndarray, list]:
        """Every sample followed since the last call, and the markers on them; wait up to ``timeout``."""
        if self.follower.session is None:
            raise RuntimeError("get_data() before start(): call amp.start() first (it starts the amplifier, "
                               "or joins it if another client started it)")
        pending = self.pending
        deadline = time.monotonic() + timeout
        while True:
            self._receive(deadline)
            until = self._release_until()  # before draining: a marker drained after it is covered
            if until is not None:  # so look now, not at what the poll in _receive found
                self.bus.forget()
                self._take_waiting()
            first = pending.first
            if until is None or first is None or until > first:
                break
            # Everything pending waits for markers that may be on their way: wait it out.
            wait = (self.follower.timeline.time_of(first) + self.marker_grace_ns - self._amp_now()) / 1e9
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(max(wait, 0.0005) if wait > 0 else 0.005, remaining))
        if self._end_sample is not None and self._markers_settled_at != self._end_sample and self._at_end():
            self._markers_settled_at = self._end_sample
            self._await_markers(self._end_sample, deadline)
        data, segments = pending.take(len(self.channels), until)
        self.returned = segments
        markers = self.placer.place(self.follower.timeline, segments, self.fs, self._marker_offset(),
                                    ended=self._at_end() and not pending.pending)
        if self._amp_markers:
            rows, self._amp_markers = rows_of(self._amp_markers, segments)
            markers = sorted(markers + [(row * 1000.0 / self.fs, label) for row, label in rows],
                             key=lambda m: m[0])
        self.warnings += self.markers.warnings
        self.markers.warnings = []
        if self._error and not len(data):
            raise AmpError(self._error)
        if self.ended and not len(data) and self._at_end():
            raise EndOfData(f"the amp's data ended after sample {self._end_sample} of session {self.session}")
        return data, markers

    def returned_times(self) -> np.ndarray:
        """Acquisition times (int64 ns, this host's clock) of the samples the last :meth:`read` returned."""
        timeline = self.follower.timeline
        times = [timeline.times_of(first, n) for first, n in self.returned]
        out = np.concatenate(times) if times else np.empty(0, np.int64)
        return out - (self.amp_clock.offset_ns or 0)

    # -- the bus -----------------------------------------------------------------------

    def _receive(self, deadline: float):
        """Handle bus messages until samples are pending, the stream ended, or ``deadline``."""
        pending = self.pending
        if self._deferred is not None and not pending.pending:
            block, self._deferred = self._deferred, None
            self._on_block(block)
        bus = self.bus
        bus.forget_older_than(FRESH_POLL_NS)  # what an earlier call's poll found may be stale
        while self._deferred is None:
            if bus.ready is None:  # after a message: is there more?
                bus.poll(0)
            msg = bus.receive()
            if msg is None:
                if self._error or self._at_end():
                    return
                if pending.pending and self._end_sample is None:
                    return  # running: return what is here; after stop(), everything up to its end
                if self._end_sample is not None and time.monotonic() - self._last_message > END_QUIET_S:
                    # stopped, the bus quiet and samples still missing (the stream info
                    # after the last block would have fetched them): from the history
                    self._fill(self._end_sample)
                    continue
                remaining = deadline - time.monotonic()
                silent = time.monotonic() - self._last_message
                if silent > HANDSHAKE_CHECK_S and \
                        (failure := bus.watch.failure(ignore=self.markers.endpoint)) is not None:
                    raise failure  # no data because the service refused this client: say why
                if silent > SILENCE_S:
                    self._check_alive()
                    if not self.connected:  # away: say so now, do not wait out the timeout
                        return
                # Idle until the next block: the moment for a clock probe, if one is due (also at a
                # timeout of 0, which a reader of several streams uses).
                markers_here = self.markers.heard_within(SILENCE_S)
                if self.amp_clock.update() or (markers_here and self.markers_clock.update()):
                    continue
                if remaining <= 0:
                    return
                bus.poll(min(remaining, 0.1))
                continue
            self._dispatch(msg)

    def _dispatch(self, msg):
        """Handle one bus message: the amp's block or stream info, or the marker stream's."""
        if isinstance(msg, Block):
            self._heard_from_amp()
            self._on_block(msg)
        elif isinstance(msg, StreamInfo):
            self._heard_from_amp()
            self._on_info(msg)
        else:
            self.markers.on_message(msg)

    def _heard_from_amp(self):
        self._last_message = time.monotonic()
        if self._away_since is not None:  # it is back
            self._away_since, self.connected = None, True

    def _take_waiting(self, amp_messages: bool = True):
        """Handle every message waiting on the bus, without waiting (up to a new session's first block).

        ``amp_messages=False`` (before a start): the amp's messages precede
        the start and are dropped; the markers still go to their feed.
        """
        bus = self.bus
        while self._deferred is None and (msg := bus.receive()) is not None:
            if amp_messages or not isinstance(msg, (Block, StreamInfo)):
                self._dispatch(msg)

    def _on_block(self, block: Block):
        self.follower.on_block(block)

    def _on_info(self, info: StreamInfo):
        self.channels, self.fs = info.channels, info.fs
        if info.session != self.session or info.session is None:
            return
        if info.state == "error":
            self._error = info.error or "the amplifier driver failed"
        elif info.state == "ended":
            self.ended = True
            self._end_sample = info.next_sample
        # The info follows every block before it on the same socket: if it
        # reports samples this client has not seen, the bus dropped them.
        self.follower.on_info(info)

    def _fill(self, until: int):
        self.follower.fill(until)

    def _history(self, session: str, from_sample: int, until: int):
        return history_blocks(self.ctl, self.stream, session, from_sample, until)

    # -- what the follower hands on ------------------------------------------------------

    def samples(self, block: Block, skip: int, stop: int):
        h = block.header
        self.pending.append(h.first_sample + skip, block.data[skip:stop])
        for offset, label in h.markers:
            if skip <= offset < stop:
                self._amp_markers.append((h.first_sample + offset, label))
        if self.placer.start_ns is None:
            self.placer.start_ns = h.time_of(skip)

    def lost(self, first_sample: int, count: int, reason: str):
        self.gaps.append((first_sample, count))
        self.lost_samples += count
        self.warnings.append(GapWarning(f"{count} samples lost from sample {first_sample} of session "
                                        f"{self.session}: {reason}"))

    def new_session(self, old: str | None, block: Block, not_acquired: int) -> bool | None:
        """The amp restarted (or another client started it again): report the samples not acquired.

        The old session's samples are returned first (None: later), and its
        sample times stay (``Timeline.begin_session``): a marker of the old
        session that comes later is still placed on its sample there (late,
        at a negative ms).
        """
        if self.pending.pending:
            self._deferred = block
            return None
        first = self.follower.next_sample
        self.gaps.append((first, not_acquired))
        self.lost_samples += not_acquired
        try:
            origin = self.ctl.call("status").get("session_origin")
        except ServiceUnavailable:
            origin = None
        how = "another client stopped and started the amp" if origin == "command" else "the amp restarted"
        self.warnings.append(GapWarning(
            f"{how} (session {old} -> {block.header.session}): {not_acquired} samples were not acquired "
            f"after sample {first}; continuing with the new session"))
        self.placer.begin_session()
        self._end_sample = None
        self._error = None
        return True

    # -- waits -------------------------------------------------------------------------

    def _await_markers(self, end_sample: int, deadline: float):
        """The data ended at ``end_sample`` (stop(), or the amp's end): take in every marker stamped up to
        its last sample.

        The markers service says with its heartbeat how far it has published;
        markers it stamped before the last sample but publishes later (it is
        busy, or paused) would otherwise never come (no data follows to carry
        them). A silent service is waited for ``MARKERS_WAIT_S`` at most, and
        never past ``deadline``.
        """
        feed, timeline = self.markers, self.follower.timeline
        if not feed.last_heard or not end_sample or timeline.end_sample is None:
            return
        last = timeline.time_of(min(end_sample, timeline.end_sample) - 1) - self._marker_offset()
        bus = self.bus
        while feed.promised_ns is None or feed.promised_ns < last:
            until = min(deadline, feed.last_heard + MARKERS_WAIT_S)
            if self._deferred is not None or time.monotonic() >= until:
                return
            if bus.poll(min(0.05, until - time.monotonic())):
                self._take_waiting()

    def _release_until(self) -> int | None:
        """First sample to hold back because a marker for it may still be on its way.

        While a markers service is heard from, samples acquired less than
        ``marker_grace`` ago are held for the next call, so a marker sent
        just before them is placed on them rather than arriving late. The
        markers service says at least every quarter second how far it has
        published (its watermark); samples later than a heartbeat period past
        that wait as well, so when it restarts its new markers come from its
        history before the samples they belong to go out. A markers service
        silent for ``MARKERS_WAIT_S`` counts as gone and holds nothing.
        """
        feed = self.markers
        if not self.marker_grace_ns or not feed.last_heard or not feed.heard_within(MARKERS_WAIT_S):
            return None
        cutoff = self._amp_now() - self.marker_grace_ns
        if feed.watermark is not None:
            cutoff = min(cutoff, feed.watermark + self._marker_offset() + MARKERS_HEARTBEAT_NS)
        return self.follower.timeline.sample_at(cutoff)

    def _check_alive(self):
        """After a silence, ask the service; warn while it is away, raise once it stayed away.

        A publisher sends stream info every quarter second, so a silence of
        ``SILENCE_S`` means it is gone. It may come back (a supervisor
        restarts it): until ``dead_after`` seconds have passed, get_data()
        keeps returning (empty) data and warns once; the bus reconnects by
        itself and the gap is reported when the data returns.
        """
        try:
            self.ctl.request("ping", timeout=0.2)
        except ServiceUnavailable as exc:
            now = time.monotonic()
            if self._away_since is None:
                self._away_since = now
                self.connected = False
                self.warnings.append(ServiceWarning(f"the amp service at {self.ctl.endpoint} is not answering; "
                                                    "waiting for it to return"))
            if now - self._away_since > self.dead_after:
                raise ServiceUnavailable(f"{exc} for {now - self._away_since:.1f} s") from None
            self._last_message = now - SILENCE_S + 0.5  # ask again in half a second, not at once
            return
        self._last_message = time.monotonic()
        self._away_since = None
        self.connected = True

    # -- clocks --------------------------------------------------------------------------

    def _amp_now(self) -> int:
        """Now, on the amp's clock."""
        return now_ns() + (self.amp_clock.offset_ns or 0)

    def _marker_offset(self) -> int:
        """What to add to a marker's time to put it on the amp's clock."""
        return (self.amp_clock.offset_ns or 0) - (self.markers_clock.offset_ns or 0)

    def _at_end(self) -> bool:
        return self._end_sample is not None and self.follower.next_sample >= self._end_sample

    def close(self):
        self.bus.close()
        self.markers.close()

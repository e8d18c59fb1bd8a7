"""``get_amp`` and the :class:`Amp` it returns: libmushu's amplifier API over the bus."""

from __future__ import annotations

import logging
import time
import warnings

from . import security
from .arrays import to_plain
from .bus import RCVHWM, choose_endpoint, subscribe
from .clock import ClockOffset, now_ns
from .config import setting
from .control import ControlClient
from .errors import (AmpError, EndOfData, Forbidden, GapWarning, RecordingError, RecordingWarning,
                     ServiceUnavailable, ServiceWarning)
from .history import history_blocks
from .lease import LEASE_S, MIN_LEASE_S, RENEW_S, RecordingLease, this_client
from .markerfeed import MarkerFeed
from .markers import Timeline, rows_of, samples_not_acquired
from .protocol import MAX_MARKER_BYTES, Block, StreamInfo, data_topic, info_topic
from .stream import Assembler

log = logging.getLogger("mushu.client")

#: Without any message (blocks, or the stream info sent every 0.25 s) for this
#: long, the client checks that the amp service is still there.
SILENCE_S = 0.7
#: How long the amp service may be away before get_data() raises.
DEAD_AFTER_S = 30.0
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
#: How long a sample is held back for markers still in flight (see Amp._release_until).
MARKER_GRACE_S = 0.0


def get_available_amps(control: str | None = None, timeout: float = 2.0) -> list[str]:
    """Names of the amplifiers the amp service can use now.

    Parameters
    ----------
    control : str, optional
        Endpoint of the amp service's control socket (default: environment
        variable ``MUSHU_AMP_CONTROL``, else ``tcp://127.0.0.1:12346``).
    timeout : float
        Seconds to wait for the service.

    Raises
    ------
    ServiceUnavailable
        The amp service did not answer.
    """
    ctl = ControlClient(setting("MUSHU_AMP_CONTROL", control), timeout, "amp")
    try:
        return [a["name"] for a in ctl.call("amps") if a.get("available")]
    finally:
        ctl.close()


def get_amp(name: str, data: str | None = None, control: str | None = None,
            timeout: float = 2.0, hwm: int = RCVHWM, markers: str | None = None,
            markers_control: str | None = None, marker_grace: float = MARKER_GRACE_S,
            recorder: str | None = None, dead_after: float = DEAD_AFTER_S, keys: str | None = None) -> "Amp":
    """Select amplifier ``name`` on the amp service and return an :class:`Amp` for it.

    Parameters
    ----------
    name : str
        Driver name, one of :func:`get_available_amps`.
    data, control : str, optional
        Endpoints of the amp service's data and control sockets (default:
        ``MUSHU_AMP_DATA`` / ``MUSHU_AMP_CONTROL``, else localhost).
    timeout : float
        Seconds to wait for each control reply and, in :meth:`Amp.get_data`,
        for new data.
    hwm : int
        Blocks queued for this client before the bus drops them (they are
        then refetched from the amp's history).
    dead_after : float
        Seconds the amp service may be away (restarting) before
        :meth:`Amp.get_data` raises ServiceUnavailable; until then it warns
        once and keeps returning.
    recorder : str, optional
        Endpoint of the recorder's control socket, for ``start(filename)``
        (default: ``MUSHU_RECORDER_CONTROL``, else localhost).
    markers, markers_control : str, optional
        Endpoints of the markers service (default: ``MUSHU_MARKERS_DATA`` /
        ``MUSHU_MARKERS_CONTROL``, else localhost). The markers service may
        start before or after the client, or restart.
    marker_grace : float
        Markers are always placed on their exact sample. One that arrives
        after its sample was returned comes with the next call at a negative
        ms (into the data returned before, as libmushu allows) and is counted
        in ``marker_counts["late"]``. With a grace of this many seconds,
        while a markers service is heard from, samples younger than the grace
        are held for the next call, so that markers still on their way come
        with their samples at non-negative ms; it adds that much latency to
        the data. Default 0: nothing is held.
    keys : str, optional
        This client's CURVE key directory (default: ``MUSHU_KEYS``; empty:
        no encryption). A client with the viewer role reads the data of an
        amp a controller selected and started, and may not change anything
        (``docs/security.md``).

    Raises
    ------
    ServiceUnavailable
        The amp service did not answer.
    SecurityError
        The CURVE handshake failed (not listed, wrong server key, ...).
    KeyError
        No driver of that name exists.
    RuntimeError
        The driver is not available, or another amp is running.
    """
    return Amp(name, data=data, control=control, timeout=timeout, hwm=hwm,
               markers=markers, markers_control=markers_control, marker_grace=marker_grace,
               recorder=recorder, dead_after=dead_after, keys=keys)


class Amp:
    """An amplifier run by the amp service, with libmushu's methods.

    ``get_data()`` returns every sample since the previous call, in order,
    with no gap and no duplicate: blocks the bus dropped or that were sent
    before the subscription took effect are fetched from the service's
    history. Samples that cannot be recovered are reported with a
    :class:`GapWarning` and counted in :attr:`lost_samples`, never silently.

    An ``Amp`` holds ZeroMQ sockets, which are not thread-safe: use it from
    one thread at a time (several threads may each have their own).
    """

    def __init__(self, name: str, data: str | None = None, control: str | None = None,
                 timeout: float = 2.0, hwm: int = RCVHWM, markers: str | None = None,
                 markers_control: str | None = None, marker_grace: float = MARKER_GRACE_S,
                 recorder: str | None = None, dead_after: float = DEAD_AFTER_S, keys: str | None = None):
        self.name = name
        self.timeout = timeout
        self.data_endpoint = setting("MUSHU_AMP_DATA", data)
        self.keys = security.configured(keys)
        self._ctl = ControlClient(setting("MUSHU_AMP_CONTROL", control), timeout, "amp", self.keys)
        described = self._use(name)
        self.stream = described["stream"]
        self._channels = described["channels"]
        self._fs = described["fs"]
        #: Where this client reads the data: the amp's local IPC endpoint on its host, else ``data``.
        self.bus_endpoint = choose_endpoint(self.data_endpoint, described.get("local_data"))
        self._asm = Assembler()
        self._timeline = Timeline()
        self._markers = MarkerFeed(setting("MUSHU_MARKERS_DATA", markers),
                                   setting("MUSHU_MARKERS_CONTROL", markers_control),
                                   setting("MUSHU_MARKER_STREAM"), self.keys)
        self._merger = self._markers.merger
        self.markers_endpoint, self.marker_stream = self._markers.endpoint, self._markers.stream
        # One SUB socket for the data and the markers: one poll per wait, messages in arrival order.
        self._bus = subscribe([self.bus_endpoint, self.markers_endpoint],
                              [data_topic(self.stream), info_topic(self.stream), *self._markers.topics],
                              self.keys, hwm, watch=True, message_bytes=MAX_MARKER_BYTES)
        #: Offsets of the amp's and the markers service's clocks from this host's.
        self.amp_clock = ClockOffset(lambda: self._ctl.call("time"))
        self.markers_clock = self._markers.clock
        self._rec_ctl = ControlClient(setting("MUSHU_RECORDER_CONTROL", recorder), timeout, "recorder", self.keys)
        #: Base path of the recording in progress (on the recorder's host), or None.
        self.recording: str | None = None
        #: What the recorder reported when the last recording finished.
        self.recording_result: dict | None = None
        self._lease: RecordingLease | None = None  # renews the recording in progress
        self._next_recording_check = 0.0
        self._deferred: Block | None = None  # a new session's first block, after the old one's samples
        self._amp_markers: list[tuple[int, str]] = []  # markers the amplifier put on its samples
        #: True once the amp's data ended (a replay reached its end); get_data()
        #: then raises EndOfData after the last samples.
        self.ended = False
        self._start_time_ns = 0
        self._away_since: float | None = None
        #: False while the amp service does not answer (see get_data).
        self.connected = True
        self.dead_after = dead_after
        #: Samples younger than this (ns) wait for markers that may still be
        #: on their way; applies only while a markers service is heard from.
        self.marker_grace_ns = int(marker_grace * 1e9)
        self._end_sample: int | None = None  # set by stop(): no samples after it
        self._markers_settled_at: int | None = None  # the end up to which every marker is in
        self._error: str | None = None
        self._last_message = time.monotonic()
        #: Counters: samples fetched from the history, and (first_sample,
        #: count) of every unrecoverable gap.
        self.refetched_samples = 0
        self.gaps: list[tuple[int, int]] = []

    def _use(self, name: str) -> dict:
        """Select amp ``name``; a client that may not (a viewer) uses it if a controller selected it."""
        described = self._ctl.call("status")
        #: What the amp service lets this client do (docs/security.md).
        self.role = described.get("security", {}).get("role", "controller")
        if described["amp"] == name:
            return described
        if self.role != "controller":
            raise Forbidden(f"amp {name!r} is not selected ({described['amp']!r} is) and role {self.role} "
                            "may not select it")
        return {**self._ctl.call("use", amp=name), "local_data": described.get("local_data")}

    def _start(self) -> dict:
        """Start the amp; a client that may not (a viewer) joins it if a controller started it."""
        if self.role == "controller":
            return self._ctl.call("start")
        described = self._ctl.call("status")
        if described["state"] != "running":
            raise Forbidden(f"the amp is not running and role {self.role} may not start it")
        return {**described, "first_sample": described["next_sample"], "joined": True}

    # -- libmushu's methods -------------------------------------------------

    @property
    def presets(self) -> list:
        """The driver's presets, ``[[label, kwargs], ...]``."""
        return self._ctl.call("presets")

    def is_available(self) -> bool:
        """True if the service reports this amplifier available."""
        return any(a["name"] == self.name and a["available"] for a in self._ctl.call("amps"))

    def configure(self, **kwargs):
        """Configure the amplifier; raises the driver's ValueError/TypeError as is.

        numpy values among the arguments are sent as plain values
        (:func:`mushu_client.arrays.to_plain`): a scalar as a number, a
        numeric array as an encoded map that drivers taking arrays
        (``replayamp``'s ``data``) decode, so libmushu's
        ``configure(data=ndarray, ...)`` works. An array larger than
        1.5 MiB raises ValueError: replay it from a file (``path=``).
        """
        kwargs = {k: to_plain(v) for k, v in kwargs.items()}
        described = self._ctl.call("configure", kwargs=kwargs)
        self._channels, self._fs = described["channels"], described["fs"]

    def start(self, filename: str | None = None, lease: float | None = LEASE_S):
        """Start acquisition; samples from here on are returned by :meth:`get_data`.

        If the amplifier is already running (started by another client),
        this joins it from the current sample on. A viewer (``keys``) can
        only join. If this client is recording, the recording is finished
        first, at the amp's current sample, with a :class:`RecordingWarning`
        saying so (libmushu too stopped writing a file at the next
        ``start``).

        Parameters
        ----------
        filename : str, optional
            Record to this recording name as well (files ``filename.eeg``,
            ``.marker``, ``.meta``, ``.vhdr``, ``.vmrk``), through the
            recorder service. A relative name lands in the recorder's data
            directory. The recording holds exactly the samples and markers
            :meth:`get_data` returns until :meth:`stop`.
        lease : float or None
            Seconds the recording outlives this client. While it records,
            the client renews a lease on the recorder every second (from a
            thread of its own, ``get_data()`` or not); when the renewals stop
            (the process ended or died, or this Amp was closed or dropped
            without :meth:`stop`) the recorder finishes the recording
            after this long, at the last sample it has, and says why in the
            meta. At least 2. None: no lease, the recording runs until
            :meth:`stop` or ``mushu record stop``, even after this process.

        Raises
        ------
        FileExistsError
            A recording of that name exists.
        RuntimeError
            Another recording is in progress on the recorder (the message
            names it and says how to end it).
        ServiceUnavailable
            A filename was given and no recorder answers.
        """
        if filename is not None:
            if lease is not None and (type(lease) not in (int, float) or not lease >= MIN_LEASE_S):
                raise ValueError(f"lease must be at least {MIN_LEASE_S:g} seconds (it is renewed every "
                                 f"{RENEW_S:g} s), or None for a recording that outlives this client; not {lease!r}")
            try:
                self._rec_ctl.call("check", name=filename)
            except ServiceUnavailable as exc:
                raise ServiceUnavailable(f"cannot record to {filename!r}: {exc}") from None
        if self.recording is not None:
            self._restart_recording()
        self._bus.forget()  # not what an earlier poll found: what is there now
        self._take_waiting(amp_messages=False)
        self._markers.join()
        self.amp_clock.measure()
        r = self._start()
        self._channels, self._fs = r["channels"], r["fs"]
        self._asm.begin(r["session"], r["first_sample"])
        self._timeline.clear()
        self._merger.start_ns = None
        self._start_time_ns = self._amp_now()
        self._deferred = None
        self._amp_markers = []
        self.ended = False
        self._end_sample = None
        self._error = None
        if filename is not None:
            try:
                reply = self._rec_ctl.call(
                    "record", name=filename, session=r["session"], first_sample=r["first_sample"],
                    markers_session=self._merger.session, markers_next_seq=self._merger.next_seq,
                    lease_s=lease, client=this_client())
            except Exception:
                if not r["joined"]:
                    self._ctl.call("stop")
                raise
            self.recording = reply["base"]
            self._lease = RecordingLease(self._rec_ctl.endpoint, reply["token"], reply["base"], keys=self.keys,
                                         owner=self)
            self._next_recording_check = time.monotonic() + RENEW_S

    def _restart_recording(self):
        """start() while recording: finish the recording at the amp's current sample, and say so."""
        recording = self.recording
        try:
            self._finish_recording(self._ctl.call("status"))
        except RecordingError as exc:
            warnings.warn(RecordingWarning(f"start() finished recording {recording!r} first: {exc}"), stacklevel=3)
            return
        warnings.warn(RecordingWarning(
            f"start() finished recording {recording!r} first ({self.recording_result['n_samples']} samples); "
            "call stop() before start() to end a recording yourself"), stacklevel=3)

    def stop(self):
        """Stop acquisition, and the recording if :meth:`start` began one.

        Samples acquired before it stay readable: the next :meth:`get_data`
        returns all of them, up to the last sample the amp acquired.

        Raises
        ------
        RecordingError
            The recording failed (disk full, ...), or it ended before this
            call (``mushu record stop``, its lease ran out, another client
            stopped and started the amp); the files written so far stay
            readable, and :attr:`recording_result` says how it ended.
        """
        try:
            r = self._ctl.call("stop")
        except Exception:
            if self.recording is not None:  # the amp does not answer: the recorder ends at what it has
                try:
                    self._finish_recording({})
                except RecordingError as exc:
                    warnings.warn(RecordingWarning(str(exc)), stacklevel=2)
            raise
        if r["session"] == self._asm.session:
            self._end_sample = r["next_sample"]
        if self.recording is not None:
            self._finish_recording(r)

    def _finish_recording(self, amp: dict):
        """Finish this client's recording at the amp's ``next_sample`` of its ``session`` (without
        them: at the last sample the recorder has)."""
        recording, lease = self.recording, self._lease
        self.recording, self._lease = None, None
        lease.close()
        try:
            result = self._rec_ctl.request("finish", timeout=60.0, end_sample=amp.get("next_sample"),
                                           session=amp.get("session"), token=lease.token)[0]
        except RuntimeError as exc:
            raise RecordingError(str(exc)) from None
        except ValueError as exc:  # the recorder restarted after the recording ended
            raise RecordingError(f"recording {recording!r} ended before it was finished: {exc}") from None
        except ServiceUnavailable as exc:
            raise RecordingError(f"recording {recording!r} was not confirmed finished: {exc}") from None
        self.recording_result = result
        if result.get("ended_by", "client") != "client":
            raise RecordingError(f"recording {recording!r} ended at amp sample {result['end_sample']} before it "
                                 f"was finished: {result['end_reason']}"
                                 + (f"; {result['error']}" if result.get("error") else ""))

    def get_channels(self) -> list[str]:
        """Channel names, in the order of the data's columns."""
        return list(self._channels)

    def get_sampling_frequency(self) -> float:
        """Sampling frequency in Hz."""
        return self._fs

    def get_data(self):
        """Return every sample acquired since the previous call, and the markers.

        Waits up to ``timeout`` seconds when no new data has arrived yet.

        Returns
        -------
        data : ndarray, shape (n_samples, n_channels)
            Possibly empty.
        markers : list of (float, str)
            ``(ms relative to the first returned sample, label)``.

        Raises
        ------
        AmpError
            The driver failed and acquisition stopped.
        EndOfData
            The amp's data ended (a replay reached its end) and every sample
            has been returned.
        ServiceUnavailable
            Nothing arrived for several seconds and the service does not answer.
        """
        asm = self._asm
        deadline = time.monotonic() + self.timeout
        while True:
            self._receive(deadline)
            until = self._release_until()  # before draining: a marker drained after it is covered
            if until is not None:  # so look now, not at what the poll in _receive found
                self._bus.forget()
                self._take_waiting()
            first = asm.first_pending
            if until is None or first is None or until > first:
                break
            # Everything pending waits for markers that may be on their way: wait it out.
            wait = (self._timeline.time_of(first) + self.marker_grace_ns - self._amp_now()) / 1e9
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(max(wait, 0.0005) if wait > 0 else 0.005, remaining))
        if self._end_sample is not None and self._markers_settled_at != self._end_sample and self._at_end():
            self._markers_settled_at = self._end_sample
            self._await_markers(self._end_sample, deadline)
        if self.recording is not None and time.monotonic() >= self._next_recording_check:
            self._check_recording()
        data, segments = asm.take(len(self._channels), until)
        markers = self._merger.place(self._timeline, segments, self._fs, self._marker_offset(),
                                     ended=self._at_end() and not asm.pending_samples)
        if self._amp_markers:
            rows, self._amp_markers = rows_of(self._amp_markers, segments)
            markers = sorted(markers + [(row * 1000.0 / self._fs, label) for row, label in rows],
                             key=lambda m: m[0])
        if segments:  # sample times of the last seconds, to place markers that arrive late
            self._timeline.forget_before(segments[-1][0] - int(self._fs * TIMELINE_S))
        if self._error and not len(data):
            raise AmpError(self._error)
        if self.ended and not len(data) and self._at_end():
            raise EndOfData(f"the amp's data ended after sample {self._end_sample} of session {asm.session}")
        return data, markers

    # -- stream bookkeeping -------------------------------------------------

    def _receive(self, deadline: float):
        """Handle bus messages until samples are pending, the stream ended, or ``deadline``."""
        asm = self._asm
        if self._deferred is not None and not asm.pending_samples:
            block, self._deferred = self._deferred, None
            self._on_block(block)
        bus = self._bus
        bus.forget_older_than(FRESH_POLL_NS)  # what an earlier call's poll found may be stale
        while self._deferred is None:
            if bus.ready is None:  # after a message: is there more?
                bus.poll(0)
            msg = bus.receive()
            if msg is None:
                if self._error or self._at_end():
                    return
                if asm.pending_samples and self._end_sample is None:
                    return  # running: return what is here; after stop(), everything up to its end
                if self._end_sample is not None and time.monotonic() - self._last_message > END_QUIET_S:
                    # stopped, the bus quiet and samples still missing (the stream info
                    # after the last block would have fetched them): from the history
                    self._fill(self._end_sample)
                    continue
                remaining = deadline - time.monotonic()
                silent = time.monotonic() - self._last_message
                if silent > HANDSHAKE_CHECK_S and \
                        (failure := bus.watch.failure(ignore=self.markers_endpoint)) is not None:
                    raise failure  # no data because the service refused this client: say why
                if silent > SILENCE_S:
                    self._check_alive()
                    if not self.connected:  # away: say so now, do not wait out the timeout
                        return
                if remaining <= 0:
                    return
                # Idle until the next block: the moment for a clock probe, if one is due.
                markers_here = self._markers.heard_within(SILENCE_S)
                if self.amp_clock.update() or (markers_here and self.markers_clock.update()):
                    continue
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
            self._markers.on_message(msg)

    def _heard_from_amp(self):
        self._last_message = time.monotonic()
        if self._away_since is not None:  # it is back
            self._away_since, self.connected = None, True

    def _take_waiting(self, amp_messages: bool = True):
        """Handle every message waiting on the bus, without waiting (up to a new session's first block).

        ``amp_messages=False`` (before a start): the amp's messages precede
        the start and are dropped; the markers still go to their feed.
        """
        bus = self._bus
        while self._deferred is None and (msg := bus.receive()) is not None:
            if amp_messages or not isinstance(msg, (Block, StreamInfo)):
                self._dispatch(msg)

    def _await_markers(self, end_sample: int, deadline: float):
        """The data ended at ``end_sample`` (stop(), or the amp's end): take in every marker stamped up to
        its last sample.

        The markers service says with its heartbeat how far it has published;
        markers it stamped before the last sample but publishes later (it is
        busy, or paused) would otherwise never come (no data follows to carry
        them). A silent service is waited for ``MARKERS_WAIT_S`` at most, and
        never past ``deadline``.
        """
        feed, timeline = self._markers, self._timeline
        if not feed.last_heard or not end_sample or timeline.end_sample is None:
            return
        last = timeline.time_of(min(end_sample, timeline.end_sample) - 1) - self._marker_offset()
        bus = self._bus
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
        feed = self._markers
        if not self.marker_grace_ns or not feed.last_heard or not feed.heard_within(MARKERS_WAIT_S):
            return None
        cutoff = self._amp_now() - self.marker_grace_ns
        if feed.watermark is not None:
            cutoff = min(cutoff, feed.watermark + self._marker_offset() + MARKERS_HEARTBEAT_NS)
        return self._timeline.sample_at(cutoff)

    def _amp_now(self) -> int:
        """Now, on the amp's clock."""
        return now_ns() + (self.amp_clock.offset_ns or 0)

    def _marker_offset(self) -> int:
        """What to add to a marker's time to put it on the amp's clock."""
        return (self.amp_clock.offset_ns or 0) - (self.markers_clock.offset_ns or 0)

    def _at_end(self) -> bool:
        return self._end_sample is not None and self._asm.next_sample >= self._end_sample

    def _on_block(self, block: Block):
        asm = self._asm
        if asm.session is None:  # reading without start(): join where the stream is
            asm.begin(block.header.session, block.header.first_sample)
        elif block.header.session != asm.session:
            if block.header.t_ns <= self._end_time():
                return  # a block of an earlier session, still queued
            if asm.pending_samples:  # return the old session's samples first
                self._deferred = block
                return
            self._new_session(block)
        if asm.missing_before(block):
            self._fill(block.header.first_sample)
        self._accept(block)

    def _end_time(self) -> int:
        """Acquisition time (amp clock) just after the newest sample of the current session."""
        end = self._timeline.end_ns()
        return self._start_time_ns if end is None else end

    def _new_session(self, block: Block):
        """The amp restarted: report the samples it did not acquire, follow its new session.

        The old session's sample times are kept (``Timeline.begin_session``):
        a marker of the old session that comes later is still placed on its
        sample there (late, at a negative ms).
        """
        h, asm = block.header, self._asm
        first_block = next(iter(history_blocks(self._ctl, self.stream, h.session, 0, 1)), block) \
            if h.first_sample else block
        lost = samples_not_acquired(self._end_time(), first_block.header)
        first = asm.next_sample
        asm.lost += lost
        self.gaps.append((first, lost))
        try:
            origin = self._ctl.call("status").get("session_origin")
        except ServiceUnavailable:
            origin = None
        how = ("another client stopped and started the amp" if origin == "command" else "the amp restarted")
        warnings.warn(GapWarning(f"{how} (session {asm.session} -> {h.session}): {lost} samples "
                                 f"were not acquired after sample {first}; continuing with the new session"),
                      stacklevel=6)
        asm.begin(h.session, 0)
        self._timeline.begin_session()
        self._merger.begin_session()
        self._end_sample = None
        self._error = None

    def _accept(self, block: Block) -> int:
        """Assemble the new part of ``block`` and record its sample times."""
        h = block.header
        added = self._asm.add(block)
        if added:
            skip = h.n_samples - added
            for offset, label in h.markers:
                if offset >= skip:
                    self._amp_markers.append((h.first_sample + offset, label))
            t_ns = h.t_ns + round(skip * 1e9 / h.fs)
            self._timeline.add(h.first_sample + skip, t_ns, added, h.fs)
            if self._merger.start_ns is None:
                self._merger.start_ns = t_ns
        return added

    def _on_info(self, info: StreamInfo):
        self._channels, self._fs = info.channels, info.fs
        if info.session != self._asm.session or info.session is None:
            return
        if info.state == "error":
            self._error = info.error or "the amplifier driver failed"
        elif info.state == "ended":
            self.ended = True
            self._end_sample = info.next_sample
        # The info follows every block before it on the same socket: if it
        # reports samples this client has not seen, the bus dropped them.
        if info.next_sample > self._asm.next_sample:
            self._fill(info.next_sample)

    def _fill(self, until: int):
        """Fetch samples up to ``until`` from the history; report what it no longer holds."""
        asm = self._asm
        for block in history_blocks(self._ctl, self.stream, asm.session, asm.next_sample, until):
            if asm.missing_before(block):  # older samples have left the history
                self._lose_samples(block.header.first_sample)
            self.refetched_samples += self._accept(block)
        self._lose_samples(until)

    def _lose_samples(self, until: int):
        """Declare the samples before ``until`` lost, and say so."""
        first = self._asm.next_sample
        lost = self._asm.skip_to(until)
        if lost:
            self.gaps.append((first, lost))
            warnings.warn(GapWarning(f"{lost} samples lost from sample {first} of session "
                                     f"{self._asm.session}: no longer in the amp's history"), stacklevel=5)

    def _check_recording(self):
        """Warn (once each) if the recording stopped, ended or cannot be reached; stop() raises it."""
        self._next_recording_check = time.monotonic() + RENEW_S
        news = self._lease.news()
        if news:
            warnings.warn(RecordingWarning(f"recording {self.recording!r}: {news}"), stacklevel=3)

    def _check_alive(self):
        """After a silence, ask the service; warn while it is away, raise once it stayed away.

        A publisher sends stream info every quarter second, so a silence of
        ``SILENCE_S`` means it is gone. It may come back (a supervisor
        restarts it): until ``dead_after`` seconds have passed, get_data()
        keeps returning (empty) data and warns once; the bus reconnects by
        itself and the gap is reported when the data returns.
        """
        try:
            self._ctl.request("ping", timeout=0.2)
        except ServiceUnavailable as exc:
            now = time.monotonic()
            if self._away_since is None:
                self._away_since = now
                self.connected = False
                warnings.warn(ServiceWarning(f"the amp service at {self._ctl.endpoint} is not answering; "
                                             "waiting for it to return"), stacklevel=5)
            if now - self._away_since > self.dead_after:
                raise ServiceUnavailable(f"{exc} for {now - self._away_since:.1f} s") from None
            self._last_message = now - SILENCE_S + 0.5  # ask again in half a second, not at once
            return
        self._last_message = time.monotonic()
        self._away_since = None
        self.connected = True

    # -- extras -------------------------------------------------------------

    @property
    def bad_messages(self) -> int:
        """Bus messages that did not decode (logged and skipped)."""
        return self._bus.bad_messages

    @property
    def lost_samples(self) -> int:
        """Samples lost since this object was made (see :attr:`gaps`)."""
        return self._asm.lost

    def status(self) -> dict:
        """The amp service's status map."""
        return self._ctl.call("status")

    @property
    def marker_counts(self) -> dict:
        """Marker edge cases so far: ``before_start`` (not returned), ``late`` (returned at a negative ms), ``lost``."""
        m = self._merger
        return {"before_start": m.before_start, "late": m.late, "lost": m.lost}

    def close(self):
        """Close this client's sockets (the services keep running).

        A recording in progress is not finished: it stops being renewed, so
        the recorder finishes it when its lease runs out. Call :meth:`stop`
        first.
        """
        if self._lease is not None:
            self._lease.close()
        self._bus.close()
        self._markers.close()
        self._ctl.close()
        self._rec_ctl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["Amp", "get_amp", "get_available_amps"]

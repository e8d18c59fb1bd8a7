"""``get_amp`` and the :class:`Amp` it returns: libmushu's amplifier API over the bus."""

from __future__ import annotations

import warnings

import numpy as np

from mushu_core import security
from mushu_core.arrays import to_plain
from mushu_core.bus import RCVHWM, choose_endpoint
from mushu_core.config import ConfigError, amp_stream_settings, setting
from mushu_core.control import ControlClient
from mushu_core.errors import Forbidden, RecordingError, RecordingWarning
from mushu_core.leases import LEASE_S

from .reader import StreamReader
from .recording_control import RecordingControl

#: How long the amp service may be away before get_data() raises.
DEAD_AFTER_S = 30.0
#: How long a sample is held back for markers still in flight (see get_amp's marker_grace).
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
            recorder: str | None = None, dead_after: float = DEAD_AFTER_S, keys: str | None = None,
            stream: str | None = None) -> "Amp":
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
    stream : str, optional
        Another amp service than the first: the one of stream ``stream``
        that the configuration file declares (``[amp.NAME]``), at its
        ``data`` and ``control`` endpoints (``data`` and ``control`` given
        here win), recorded by its own recorder (its table's ``recorder``).

    Raises
    ------
    ServiceUnavailable
        The amp service did not answer.
    SecurityError
        The CURVE handshake failed (not listed, wrong server key, ...).
    UnknownAmp
        No driver of that name exists: a ``KeyError`` (as libmushu raised)
        and a ``ValueError``; the message lists the known amps.
    RuntimeError
        The driver is not available (its message says why: a missing extra,
        no device), or another amp is running.
    """
    return Amp(name, data=data, control=control, timeout=timeout, hwm=hwm,
               markers=markers, markers_control=markers_control, marker_grace=marker_grace,
               recorder=recorder, dead_after=dead_after, keys=keys, stream=stream)


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
                 recorder: str | None = None, dead_after: float = DEAD_AFTER_S, keys: str | None = None,
                 stream: str | None = None):
        self.name = name
        self._no_recorder: str | None = None  # why start(filename) cannot record this stream
        if stream is not None:  # [amp.NAME] of the configuration file
            own = amp_stream_settings(stream)
            data, control = data or own["MUSHU_AMP_DATA"], control or own["MUSHU_AMP_CONTROL"]
            recorder = recorder or own.get("MUSHU_RECORDER_CONTROL")
            if recorder is None:
                self._no_recorder = (f"stream {stream!r} has no recorder of its own: give it one in the "
                                     f"configuration file ([amp.{stream}] recorder = \"tcp://HOST:PORT\"; "
                                     f"mushu up runs it as recorder-{stream}), or pass recorder=")
        #: Seconds to wait for each control reply and, in get_data(), for new data.
        self.timeout = timeout
        self.data_endpoint = setting("MUSHU_AMP_DATA", data)
        self.keys = security.configured(keys)
        self._ctl = ControlClient(setting("MUSHU_AMP_CONTROL", control), timeout, "amp", self.keys)
        described = self._use(name)
        self.stream = described["stream"]
        #: Where this client reads the data: the amp's local IPC endpoint on its host, else ``data``.
        self.bus_endpoint = choose_endpoint(self.data_endpoint, described.get("local_data"))
        self._reader = StreamReader(self._ctl, self.stream, self.bus_endpoint,
                                    setting("MUSHU_MARKERS_DATA", markers),
                                    setting("MUSHU_MARKERS_CONTROL", markers_control),
                                    setting("MUSHU_MARKER_STREAM"), self.keys, hwm, int(marker_grace * 1e9),
                                    dead_after)
        self._reader.channels, self._reader.fs = described["channels"], described["fs"]
        self.markers_endpoint, self.marker_stream = self._reader.markers.endpoint, self._reader.markers.stream
        #: Offsets of the amp's and the markers service's clocks from this host's.
        self.amp_clock, self.markers_clock = self._reader.amp_clock, self._reader.markers_clock
        self._recorder = RecordingControl(setting("MUSHU_RECORDER_CONTROL", recorder), timeout, self.keys)
        #: The first sample of the session the last start() followed (0, or where it joined).
        self.first_sample: int | None = None

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

    def _warn(self, stacklevel: int = 3):
        """Raise the warnings the reader and the recording collected, at the caller's line."""
        for source in (self._reader, self._recorder):
            pending, source.warnings = source.warnings, []
            for w in pending:
                warnings.warn(w, stacklevel=stacklevel)

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
        (:func:`mushu_core.arrays.to_plain`): a scalar as a number, a
        numeric array as an encoded map that drivers taking arrays
        (``replayamp``'s ``data``) decode, so libmushu's
        ``configure(data=ndarray, ...)`` works. An array larger than
        1.5 MiB raises ValueError: replay it from a file (``path=``).
        """
        kwargs = {k: to_plain(v) for k, v in kwargs.items()}
        described = self._ctl.call("configure", kwargs=kwargs)
        self._reader.channels, self._reader.fs = described["channels"], described["fs"]

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
        reader, recorder = self._reader, self._recorder
        if filename is not None:
            if self._no_recorder:
                raise ConfigError(self._no_recorder)
            recorder.check(filename, lease)
        if recorder.recording is not None:
            recorder.finish_for_start(self._ctl.call("status"))
        reader.before_start()
        r = self._start()
        reader.channels, reader.fs = r["channels"], r["fs"]
        reader.begin(r["session"], r["first_sample"])
        self.first_sample = r["first_sample"]
        if filename is not None:
            markers = reader.markers.follower
            try:
                recorder.record(filename, r["session"], r["first_sample"], markers.session, markers.next_seq,
                                lease, owner=self)
            except Exception:
                if not r["joined"]:
                    self._ctl.call("stop")
                raise
        self._warn()

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
        recorder = self._recorder
        try:
            r = self._ctl.call("stop")
        except Exception:
            if recorder.recording is not None:  # the amp does not answer: the recorder ends at what it has
                try:
                    recorder.finish({})
                except RecordingError as exc:
                    warnings.warn(RecordingWarning(str(exc)), stacklevel=2)
            raise
        self._reader.stopped(r["session"], r["next_sample"])
        if recorder.recording is not None:
            recorder.finish(r)

    def get_channels(self) -> list[str]:
        """Channel names, in the order of the data's columns."""
        return list(self._reader.channels)

    def get_sampling_frequency(self) -> float:
        """Sampling frequency in Hz."""
        return self._reader.fs

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
        return self._get_data(self.timeout, stacklevel=4)

    def _get_data(self, timeout: float, stacklevel: int = 3):
        try:
            data, markers = self._reader.read(timeout)
            self._recorder.look()
        finally:
            self._warn(stacklevel)
        return data, markers

    # -- extras -------------------------------------------------------------

    def sample_times(self) -> np.ndarray:
        """Acquisition times of the samples the last :meth:`get_data` returned, one per row.

        Returns
        -------
        ndarray of int64
            Nanoseconds on this host's monotonic clock
            (:func:`mushu_core.clock.now_ns`, ``time.monotonic_ns()``): the
            amp's stamps less the amp host's clock offset, estimated as
            :attr:`amp_clock` does. Several amps' times, even on other
            hosts, are on this one clock (:class:`mushu_client.Streams`).
        """
        return self._reader.returned_times()

    @property
    def recording(self) -> str | None:
        """Base path of the recording in progress (on the recorder's host), or None."""
        return self._recorder.recording

    @property
    def recording_result(self) -> dict | None:
        """What the recorder reported when the last recording finished."""
        return self._recorder.result

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """``(first_sample, count)`` of every gap: samples lost, or not acquired while the amp restarted."""
        return self._reader.gaps

    @property
    def lost_samples(self) -> int:
        """Samples lost since this object was made (see :attr:`gaps`)."""
        return self._reader.lost_samples

    @property
    def refetched_samples(self) -> int:
        """Samples fetched from the amp's history, not from the bus."""
        return self._reader.refetched_samples

    @property
    def connected(self) -> bool:
        """False while the amp service does not answer (get_data warns, and raises after ``dead_after``)."""
        return self._reader.connected

    @property
    def ended(self) -> bool:
        """True once the amp's data ended (a replay reached its end); get_data() then raises EndOfData."""
        return self._reader.ended

    @property
    def marker_grace_ns(self) -> int:
        """Samples younger than this (ns) wait for markers still on their way."""
        return self._reader.marker_grace_ns

    @property
    def bad_messages(self) -> int:
        """Bus messages that did not decode (logged and skipped)."""
        return self._reader.bus.bad_messages

    def status(self) -> dict:
        """The amp service's status map."""
        return self._ctl.call("status")

    @property
    def marker_counts(self) -> dict:
        """Marker edge cases so far: ``before_start`` (not returned), ``late`` (returned at a negative ms), ``lost``."""
        placer = self._reader.placer
        return {"before_start": placer.before_start, "late": placer.late,
                "lost": self._reader.markers.follower.lost}

    def close(self):
        """Close this client's sockets (the services keep running).

        A recording in progress is not finished: it stops being renewed, so
        the recorder finishes it when its lease runs out. Call :meth:`stop`
        first.
        """
        self._recorder.close()
        self._reader.close()
        self._ctl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["Amp", "get_amp", "get_available_amps"]

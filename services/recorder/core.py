"""The recorder's core: which samples and markers go into the active recording.

No sockets here. The service feeds it the blocks and markers it receives and
gives it four callables to reach the other services (history and status of
the amp and of the markers service); the core decides what to write, fills
gaps from the histories, places markers with the client's own rules
(:mod:`mushu_core.follow`), and keeps on disk what a restarted recorder
needs to resume the recording exactly.

A recording covers amp samples ``[first_sample, end_sample)`` of one amp
session, from ``record`` to ``finish``: the same samples the client's
``get_data()`` returned between ``start(filename)`` and ``stop()``. It
follows the amp into a new session only when the amp restarted (the new
session is the first its process acquired); a session a start command began
means the recorded one ended, and so does the recording. A recording with a
lease ends when its client stops renewing it (``renew``), and a controller
ends any recording with ``stop``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from mushu_core import __version__
from mushu_core.clock import ClockOffset, host_clock_id, now_ns
from mushu_core.follow.markers import MarkerFollower
from mushu_core.follow.placement import MarkerPlacer
from mushu_core.follow.stream import BlockFollower
from mushu_core.leases import MIN_LEASE_S, describe_client
from mushu_core.recordings import EXTENSIONS, base_name
from mushu_core.wire import PROTOCOL_VERSION, Block, Marker, StreamInfo, dispatch

from .files import JOURNAL, SESSION, RecordingWriter, add_to_session, sync_paths

log = logging.getLogger("mushu.recorder")

#: The recorder's state in its data directory, one per stream (recorders of several streams share a directory).
STATE_FILE = ".mushu-recorder-{stream}.json"
#: Journal ``seq`` of markers from the amplifier itself (those of the markers
#: service have theirs, >= 0; gap markers have -1).
AMP_MARKER_SEQ = -2
#: Longest a finish waits for the markers service to publish the markers stamped before its end.
MARKERS_SETTLE_NS = 3_000_000_000
#: "No end": catch up with whatever the amp's history holds.
END = 2**63
#: Block times kept for placing markers that arrive after their samples.
TIMELINE_S = 30.0
#: Longest one step of catching up from the amp's history takes while the
#: amp runs, so that control requests are answered in between.
CATCH_UP_STEP_NS = 50_000_000
#: How long to wait before asking the amp again about a new session it did not describe.
SESSION_RETRY_NS = 500_000_000
#: Results of ended recordings kept for their clients' ``finish`` and ``renew`` (by token).
RESULTS_KEPT = 64


@dataclass
class Services:
    """How the core reaches the other services (sockets live in the service)."""

    amp_status: callable
    amp_history: callable       # (session, from_sample, until) -> iterable of Block
    markers_status: callable    # () -> dict or None when not running
    markers_history: callable   # (session, from_seq, until) -> iterable of Marker
    amp_time: callable          # () -> the amp's time reply {"t_ns", "clock"}
    markers_time: callable      # () -> the markers service's time reply


@dataclass
class Active:
    """The recording being written."""

    writer: RecordingWriter
    first_sample: int            # amp sample index of the recording's first sample
    follower: BlockFollower      # the amp stream, followed from where the recording began
    markers: MarkerFollower | None = None  # the marker stream, followed from where the recording began
    placer: MarkerPlacer = field(default_factory=MarkerPlacer)
    placed: set = field(default_factory=set)   # (session, seq) of markers written
    error: str | None = None
    token: str = ""              # names the recording in renew and finish
    lease_s: float | None = None  # ended this long after the last renewal; None: runs until finished
    renewed_ns: int = field(default_factory=now_ns)
    client: dict | None = None   # who started it, as the client described itself

    @property
    def session(self) -> str:
        """The amp session written now."""
        return self.follower.session

    @property
    def next_sample(self) -> int:
        """The amp sample to write next."""
        return self.follower.next_sample

    @property
    def timeline(self):
        """Acquisition times of the samples written lately."""
        return self.follower.timeline

    @property
    def behind(self) -> bool:
        """Catching up from the amp's history stopped at a step's end: :meth:`RecorderCore.tick` goes on."""
        return self.follower.behind


#: Commands any listed client may send; record, renew, finish and stop need the controller role
#: (docs/security.md).
READ_ONLY = frozenset({"ping", "status", "time", "check"})


class RecorderCore:
    """State and rules of the recorder.

    Parameters
    ----------
    data_dir : str
        Where relative recording names are resolved.
    services : Services
    stream : str
        The amp stream recorded (names the state file).
    """

    def __init__(self, data_dir: str, services: Services, stream: str = "eeg"):
        self.data_dir = os.path.abspath(data_dir)
        self.stream = stream
        self.services = services
        self.active: Active | None = None
        self.amp_clock = ClockOffset(services.amp_time)
        self.markers_clock = ClockOffset(services.markers_time)
        self._next_meta_ns = 0
        self._markers_seen_ns = -(10**18)  # when the markers service was last heard from
        self.last_error: str | None = None
        self.finished = 0
        self.started_ns = now_ns()
        #: Where the service reads the amp's blocks (for status).
        self.amp_data: str | None = None
        #: The results of the recordings that ended, by token (the newest RESULTS_KEPT).
        self.results: OrderedDict[str, dict] = OrderedDict()
        #: The result of the recording that ended last, however it ended.
        self.last_finished: dict | None = None
        self._undecided: tuple[str, int] | None = None  # (amp session, when to ask the amp again)
        #: Syncs files to the disk: at once here; the service syncs in a thread (files.BackgroundSync).
        self.sync_files = sync_paths
        self.commands = {"ping": self.cmd_ping, "status": self.cmd_status, "time": self.cmd_time,
                         "check": self.cmd_check, "record": self.cmd_record, "renew": self.cmd_renew,
                         "finish": self.cmd_finish, "stop": self.cmd_stop}

    def handle(self, cmd: str, args: dict):
        return dispatch(self.commands, cmd, args)

    # -- paths and the state file -------------------------------------------

    def resolve(self, name: str) -> str:
        """Recording base path for ``name``: relative names go under the data directory."""
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"a recording name must be a non-empty string, not {name!r}")
        base = base_name(os.path.expanduser(name))
        return os.path.normpath(base if os.path.isabs(base) else os.path.join(self.data_dir, base))

    def _state_path(self) -> str:
        return os.path.join(self.data_dir, STATE_FILE.format(stream=self.stream))

    def name_of(self, base: str) -> str:
        """The shortest name that :meth:`resolve` turns into ``base``."""
        rel = os.path.relpath(base, self.data_dir)
        return base if rel.startswith(os.pardir) else rel

    def _save_state(self):
        a = self.active
        state = {"active": None if a is None else
                 {"base": a.writer.base, "token": a.token, "lease_s": a.lease_s, "client": a.client}}
        tmp = self._state_path() + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self._state_path())
        self.sync_files([self._state_path()])

    # -- commands -------------------------------------------------------------

    def cmd_ping(self):
        return {"service": "recorder", "version": __version__, "protocol": PROTOCOL_VERSION,
                "data_dir": self.data_dir}

    def cmd_time(self):
        return {"t_ns": now_ns(), "clock": host_clock_id()}

    def cmd_check(self, name: str):
        """Resolve ``name`` and refuse it if a recording of that name exists."""
        base = self.resolve(name)
        existing = [base + ext for ext in (*EXTENSIONS, JOURNAL) if os.path.exists(base + ext)]
        if existing:
            raise FileExistsError(f"recording {base!r} exists already ({', '.join(existing)})")
        if not os.path.isdir(os.path.dirname(base)):
            raise FileNotFoundError(f"directory {os.path.dirname(base)!r} does not exist on the recorder's host")
        return {"base": base}

    def cmd_record(self, name: str, session: str, first_sample: int, markers_session: str | None = None,
                   markers_next_seq: int = 0, lease_s: float | None = None, client: dict | None = None,
                   part_of: str | None = None):
        """Record amp ``session`` from ``first_sample`` on into recording ``name``.

        ``part_of`` names the first stream's recording of a session of
        several streams: when this one finishes, its stream's entry goes into
        that recording's session file (``files.SESSION``).

        ``markers_session`` / ``markers_next_seq`` say from which marker the
        client follows the markers service, so both see the same markers.
        ``lease_s``: the recording ends this many seconds after its client's
        last ``renew`` (None: only ``finish`` and ``stop`` end it).
        ``client`` describes who records (``status`` shows it). Returns the
        base path and the ``token`` naming the recording in ``renew`` and
        ``finish``.
        """
        if type(first_sample) is not int or first_sample < 0:
            raise TypeError(f"first_sample must be a non-negative integer, not {first_sample!r}")
        if lease_s is not None and (type(lease_s) not in (int, float) or not MIN_LEASE_S <= lease_s < math.inf):
            raise ValueError(f"lease_s must be a number of seconds of at least {MIN_LEASE_S:g} (two of its "
                             f"client's renewals), or None for no lease, not {lease_s!r}")
        if client is not None and not (isinstance(client, dict) and all(
                isinstance(k, str) and type(v) in (str, int) for k, v in client.items())):
            raise TypeError(f"client must be a map of names to strings or integers describing the client, "
                            f"not {client!r}")
        if part_of is not None:
            part_of = self.resolve(part_of)
        self._expire_lease()
        amp = self.services.amp_status()
        if self.active is not None and self.active.session != session and \
                amp.get("session") == session and self._amp_restarted_with(session, amp) is False:
            self._end_early("session", self._session_ended(session))
        if self.active is not None:
            raise RuntimeError(self._busy())
        base = self.resolve(name)
        if amp.get("session") != session:
            raise ValueError(f"amp session {session!r} is not the amp's current session {amp.get('session')!r}")
        mushu = {
            "version": __version__, "protocol": PROTOCOL_VERSION,
            "amp_session": session, "first_sample": first_sample,
            "stream": amp.get("stream"), "amp_config": amp.get("config"),
            "start_wall": time.time(), "start_wall_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "start_monotonic_ns": None,
            "markers_session": markers_session, "markers_first_seq": markers_next_seq,
            "segments": [{"session": session, "first_sample": first_sample, "file_sample": 0}],
            "clock_offsets_ns": {"amp": [], "markers": []},
            "lease_s": lease_s, "client": client, "part_of": part_of,
        }
        self.amp_clock.measure()
        self._measure_markers_clock()
        units = [amp.get("unit", "uV")] * len(amp["channels"])
        writer = RecordingWriter.create(base, amp["channels"], amp["fs"], amp["amp"], units, mushu)
        follower = BlockFollower(self, self.services.amp_history, TIMELINE_S)
        follower.begin(session, first_sample, start_ns=now_ns() + (self.amp_clock.offset_ns or 0))
        self.active = Active(writer, first_sample, follower, token=secrets.token_hex(16),
                             lease_s=lease_s, client=client)
        self.active.markers = self._follow_markers(markers_session, markers_next_seq)
        self._save_state()
        log.info("recording %s: amp session %s from sample %d", base, session, first_sample)
        self.catch_up(step=True)  # the amp runs on: the live blocks take the next steps
        return {"base": base, "token": self.active.token}

    def _busy(self) -> str:
        """Why a new recording is refused: which one is in progress, and how to end it."""
        a = self.active
        if a.lease_s is None:
            lease = "it has no lease and runs until it is finished or stopped"
        else:
            ago = (now_ns() - a.renewed_ns) / 1e9
            lease = (f"its client renewed its lease {ago:.1f} s ago; without a renewal it ends "
                     f"{max(0.0, a.lease_s - ago):.1f} s from now")
        return (f"already recording {a.writer.base!r} (started by {describe_client(a.client)}; {lease}); "
                f"a controller ends it with 'mushu record stop {self.name_of(a.writer.base)}', its client with "
                f"stop(); then start again")

    def cmd_renew(self, token: str):
        """Renew the lease of the recording ``token`` names, and say how it stands.

        Returns ``{"base", "state", "error"}``: state ``recording``, ``error``
        (it stopped on an error, which ``finish`` raises), or ``ended`` (it
        ended without its client, with ``ended_by`` and ``end_reason``).
        """
        a = self.active
        if a is not None and a.token == token:
            a.renewed_ns = now_ns()
            return {"base": a.writer.base, "state": "error" if a.error else "recording", "error": a.error}
        result = self._result_of(token)
        return {"base": result["base"], "state": "ended", "error": result["error"],
                "ended_by": result["ended_by"], "end_reason": result["end_reason"]}

    def cmd_finish(self, end_sample: int | None, token: str | None = None, session: str | None = None):
        """Write the recording up to amp sample ``end_sample`` (exclusive) of amp ``session``, and close it.

        ``end_sample`` None: up to the last sample written. ``token``
        (``record``'s) names the recording: one that has ended already is
        not finished again, the reply is its result, whose ``ended_by`` says
        who ended it. Without ``token``, the recording in progress is
        finished.
        """
        if end_sample is not None and (type(end_sample) is not int or end_sample < 0):
            raise TypeError(f"end_sample must be a non-negative integer or None, not {end_sample!r}")
        a = self.active
        if token is not None and (a is None or a.token != token):
            return self._result_of(token)
        a = self._need_active()
        if end_sample is None:
            end_sample, session = a.next_sample, None
        if session is not None and session != a.session:
            first = next(iter(self.services.amp_history(session, 0, 1)), None)
            if first is not None:
                a.follower.on_block(first)  # a restart (follow it) or another client's session (the end)
            if self.active is not a:  # its amp session had ended
                return self._result_of(a.token)
            if a.session != session:  # the amp could not say: finish at what it has
                end_sample = a.next_sample
        result = self._end(end_sample, "client", "finished by its client")
        if result["error"] is not None:
            raise RuntimeError(f"recording {result['base']!r} failed: {result['error']}")
        return result

    def cmd_stop(self, name: str | None = None):
        """End the recording in progress now, at the last sample it has written.

        ``name``, resolved as in ``record``: only if it is that recording.
        This is ``mushu record stop``: a controller ends a recording whose
        client is gone or that has no lease.
        """
        a = self.active
        if name is not None:
            base = self.resolve(name)
            if a is None or a.writer.base != base:
                now = "no recording is" if a is None else \
                    f"{a.writer.base!r} is: 'mushu record stop {self.name_of(a.writer.base)}' ends it"
                raise ValueError(f"recording {base!r} is not in progress ({now})")
        elif a is None:
            raise RuntimeError("no recording is in progress")
        return self._end_early("controller", "stopped by a controller ('mushu record stop')")

    def cmd_status(self):
        a = self.active
        rec = None
        if a is not None:
            rec = {"base": a.writer.base, "name": self.name_of(a.writer.base), "session": a.session,
                   "first_sample": a.first_sample, "next_sample": a.next_sample, "n_samples": a.writer.n_samples,
                   "fs": a.writer.fs, "markers": len(a.writer.markers), "gaps": a.writer.meta["mushu"]["gaps"],
                   "error": a.error, "client": a.client, "lease_s": a.lease_s,
                   "renewed_s_ago": (now_ns() - a.renewed_ns) / 1e9}
        return {"service": "recorder", "pid": os.getpid(), "version": __version__,
                "data_dir": self.data_dir, "state": "idle" if a is None else ("error" if a.error else "recording"),
                "recording": rec, "last_error": self.last_error, "finished": self.finished,
                "last_finished": self.last_finished,
                "amp_data": self.amp_data, "uptime_s": (now_ns() - self.started_ns) / 1e9}

    def _need_active(self) -> Active:
        if self.active is None:
            raise RuntimeError("no recording is active")
        return self.active

    def _result_of(self, token) -> dict:
        """The result of the ended recording ``token`` names."""
        result = self.results.get(token) if isinstance(token, str) else None
        if result is None:
            raise ValueError(f"no recording has token {token!r}: none in progress, and this recorder does not "
                             f"remember one ending (it keeps the last {RESULTS_KEPT} since it started)")
        return result

    # -- ending ---------------------------------------------------------------

    def _end(self, end_sample: int, ended_by: str, reason: str) -> dict:
        """Write the recording up to amp sample ``end_sample`` and close it; its result.

        ``ended_by``: ``client`` (its client's finish), ``lease``,
        ``controller`` (``stop``) or ``session`` (its amp session ended).
        The result's ``error`` is None unless the recording failed.
        """
        a = self.active
        if a.error is None:
            self.catch_up(until=end_sample)
            self._settle_markers(end_sample)
        if a.error is None:
            self._place_markers(end=end_sample)
            self._store_offsets()
        dropped = a.placer.pending
        error = a.error
        if error is None:
            try:
                a.writer.finish(end_sample=end_sample, stop_wall=time.time(), ended_by=ended_by, end_reason=reason,
                                markers_before_start=a.placer.before_start, markers_after_end=dropped)
                self.sync_files(a.writer.sync_paths())
            except OSError as exc:
                self._fail(exc)
                error = f"{a.error} (at finish)"
        if error is None and a.writer.meta["mushu"].get("part_of"):
            try:
                self._add_to_session(a.writer)
            except OSError as exc:  # the recording itself is whole: say so, and what is missing
                error = f"the session file {a.writer.meta['mushu']['part_of'] + SESSION} was not written: {exc}"
                log.error("%s", error)
        result = {"base": a.writer.base, "n_samples": a.writer.n_samples, "markers": len(a.writer.markers),
                  "gaps": a.writer.meta["mushu"]["gaps"], "markers_after_end": dropped,
                  "markers_before_start": a.placer.before_start, "end_sample": end_sample,
                  "ended_by": ended_by, "end_reason": reason, "error": error}
        if error is None:
            self.finished += 1
        self.results[a.token] = self.last_finished = result
        while len(self.results) > RESULTS_KEPT:
            self.results.popitem(last=False)
        self._close_active()
        (log.info if ended_by == "client" else log.warning)(
            "finished %s: %d samples, %d markers; %s", result["base"], result["n_samples"], result["markers"], reason)
        return result

    def _add_to_session(self, writer: RecordingWriter):
        """This stream's entry in its session's file: where its first sample lies on this host's clock."""
        m = writer.meta["mushu"]
        offsets = m["clock_offsets_ns"]["amp"]
        start = m["start_monotonic_ns"]
        # the estimate nearest the first sample brings its time from the amp's clock onto this host's
        near = min(offsets, key=lambda o: abs(o["t_ns"] + o["offset_ns"] - start)) if offsets else None
        entry = {"recording": self.name_of(writer.base), "amp": writer.meta.get("Amp"),
                 "channels": len(writer.meta["Channels"]), "fs": writer.meta["Sampling Frequency"],
                 "fs_measured": m.get("fs_measured"), "drift_ppm": m.get("drift_ppm"),
                 "n_samples": writer.n_samples, "gaps": m["gaps"], "clock": host_clock_id(),
                 "first_sample_ns": None if start is None else start - (near["offset_ns"] if near else 0),
                 "amp_clock_offsets_ns": offsets}
        add_to_session(m["part_of"], m.get("stream") or "eeg", entry)

    def _end_early(self, ended_by: str, reason: str) -> dict:
        """End the recording without its client, at the last sample it has written."""
        return self._end(self.active.next_sample, ended_by, reason)

    def _expire_lease(self):
        a = self.active
        if a is not None and a.lease_s is not None and now_ns() - a.renewed_ns > a.lease_s * 1e9:
            self._end_early("lease", f"its client did not renew its lease for {a.lease_s:g} s (it stopped or died)")

    def _session_ended(self, session: str) -> str:
        return (f"the amp session it recorded ({self.active.session}) ended: the amp was stopped and started "
                f"again (session {session}) in the same process, which is not a restart")

    def _amp_restarted_with(self, session: str, status: dict | None = None) -> bool | None:
        """Did amp session ``session`` begin as the amp's process came up (True: the amp restarted), or
        by a start command (False)? None: the amp does not answer.

        The amp's status says (``session_origin``): ``restored`` (it came up
        again and restored its running state) and ``startup`` (``--start``)
        are restarts, ``command`` is a client's start.
        """
        if status is None:
            try:
                status = self.services.amp_status()
            except Exception as exc:
                log.warning("the amp does not say how session %s began: %s", session, exc)
                return None
        if status.get("session") != session:
            return False  # it began yet another session since
        return status.get("session_origin") != "command"

    def _close_active(self):
        self.active.writer.close()
        self.active = None
        try:
            self._save_state()
        except OSError as exc:
            log.error("cannot update the recorder state file: %s", exc)

    # -- data -----------------------------------------------------------------

    def on_block(self, block: Block):
        """A live block: what of it belongs to the recording is written (the follower fetches what is missing)."""
        a = self.active
        if a is None or a.error is not None:
            return
        a.follower.on_block(block, deadline_ns=now_ns() + CATCH_UP_STEP_NS)

    def on_info(self, info: StreamInfo):
        """The amp's stream info: the device's measured rate goes into the recording's meta."""
        a = self.active
        if a is not None and info.session == a.session and info.fs_measured is not None:
            a.writer.meta["mushu"]["fs_measured"] = info.fs_measured
            a.writer.meta["mushu"]["drift_ppm"] = info.drift_ppm

    def on_marker(self, marker: Marker):
        self._markers_seen_ns = now_ns()
        a = self.active
        if a is None or a.error is not None:
            return
        a.markers.on_message(marker)
        self._place_markers()

    def catch_up(self, until: int | None = None, step: bool = False):
        """Fetch from the amp's history what the recording misses, up to ``until``.

        ``step``: stop after :data:`CATCH_UP_STEP_NS` (and at least one
        block); the live blocks and :meth:`tick` take the next steps. A
        recorder that cannot keep up with the amp still answers its control
        socket, and writes what the history no longer holds as a gap.
        """
        a = self.active
        deadline = now_ns() + CATCH_UP_STEP_NS if step else None
        if a.follower.behind:
            a.follower.catch_up(END if until is None else until, deadline)
        elif until is not None:
            a.follower.fill(until, deadline)
        else:
            a.follower.fill(END, deadline)

    # -- what the follower hands on ---------------------------------------------

    def samples(self, block: Block, skip: int, stop: int):
        """Rows ``skip:stop`` of ``block`` are the recording's next samples: write them."""
        a = self.active
        h = block.header
        if a.writer.meta["mushu"]["start_monotonic_ns"] is None:
            a.writer.meta["mushu"]["start_monotonic_ns"] = h.time_of(skip)
            a.placer.start_ns = a.writer.meta["mushu"]["start_monotonic_ns"]
            self._guard(a.writer.write_meta)
        try:
            a.writer.add_block_times(a.writer.n_samples, stop - skip, h.time_of(skip), h.t_read_ns)
            a.writer.append(block.data[skip:stop])
        except OSError as exc:
            self._fail(exc)
            return
        for offset, label in h.markers:
            if skip <= offset < stop:
                self._add_amp_marker(h, offset, label)
        self._place_markers()

    def lost(self, first_sample: int, count: int, reason: str):
        """Samples the amp's history no longer holds: written as a gap (NaN), listed in the meta."""
        a = self.active
        log.warning("recording %s: %d samples lost at amp sample %d (%s)", a.writer.base, count, first_sample, reason)
        self._guard(a.writer.append_gap, count, reason, amp_sample=first_sample, session=a.session)

    def new_session(self, old: str | None, block: Block, not_acquired: int) -> bool | None:
        """A block of a newer amp session: follow the restarted amp behind a gap (True), or end the
        recording, whose session ended (False). While the amp does not say which, its blocks wait in
        its history (None)."""
        session = block.header.session
        if self._undecided is not None and self._undecided[0] == session and now_ns() < self._undecided[1]:
            return None
        restarted = self._amp_restarted_with(session)
        if restarted is None:
            self._undecided = (session, now_ns() + SESSION_RETRY_NS)
            return None
        self._undecided = None
        a = self.active
        if not restarted:
            self._end_early("session", self._session_ended(session))
            return False
        # The old session's sample times stay (Timeline.begin_session): a marker of it that comes
        # later is still written on its sample there.
        self._place_markers(end=a.next_sample)
        log.warning("recording %s: the amp restarted (session %s -> %s), %d samples lost",
                    a.writer.base, old, session, not_acquired)
        if not_acquired:
            self._guard(a.writer.append_gap, not_acquired, "amp restarted", session=old, new_session=session)
        a.writer.meta["mushu"]["segments"].append(
            {"session": session, "first_sample": 0, "file_sample": a.writer.n_samples})
        self._guard(a.writer.write_meta)
        return True

    # -- markers --------------------------------------------------------------

    def _follow_markers(self, session: str | None, next_seq: int) -> MarkerFollower:
        """The marker stream of a recording, from ``next_seq`` of ``session`` (where its client began) on."""
        follower = MarkerFollower(self, self.services.markers_history)
        follower.join(session, next_seq)
        return follower

    def marker(self, marker: Marker):
        """The marker stream's next marker (MarkerFollower): to be placed, unless it is written already."""
        a = self.active
        if (marker.session, marker.seq) not in a.placed:  # before a crash the recording may have it
            a.placer.add(marker)

    def markers_lost(self, session: str, first_seq: int, count: int):
        log.warning("recording %s: markers %d..%d of session %s are no longer in the markers history",
                    self.active.writer.base, first_seq, first_seq + count - 1, session)

    def _add_amp_marker(self, h, offset: int, label: str):
        """A marker the amplifier put on its sample (in the block header)."""
        a = self.active
        sample = self._file_index(h.first_sample + offset)
        self._guard(a.writer.add_marker, sample, label, AMP_MARKER_SEQ, a.session,
                    h.time_of(offset))

    def _settle_markers(self, end_sample: int):
        """Take in every marker the markers service stamped up to the recording's last sample.

        Its status says how far its heartbeats promise that everything
        stamped is published (``promised_ns``); markers stamped before the
        last sample but published later (the service is busy, or paused)
        would otherwise miss the recording, while the client, which waits for
        the same promise, has them. A service that does not answer is
        waited for while it was heard from in the last
        :data:`MARKERS_SETTLE_NS`, and never longer than that.
        """
        a = self.active
        last = None
        if end_sample > 0 and a.timeline.end_sample is not None:
            offset = (self.amp_clock.offset_ns or 0) - (self.markers_clock.offset_ns or 0)
            last = a.timeline.time_of(min(end_sample, a.timeline.end_sample) - 1) - offset
        deadline = now_ns() + MARKERS_SETTLE_NS
        settled = None
        while True:
            try:
                status = self.services.markers_status()
            except Exception as exc:
                log.warning("markers service unavailable: %s", exc)
                status = None
            if status is None:  # busy or gone: wait for one heard from lately, not for one that is down
                if now_ns() > min(deadline, self._markers_seen_ns + MARKERS_SETTLE_NS):
                    break
                time.sleep(0.02)
                continue
            self._markers_seen_ns = now_ns()
            settled = status
            promised = status.get("promised_ns")
            if last is None or promised is None or promised >= last or now_ns() > deadline:
                break
            time.sleep(0.02)
        # Once, when the promise covers the last sample: during a flood each fetch would bring
        # thousands of markers that the live stream brings anyway.
        if settled is not None:
            self._fill_markers(settled["session"], settled["last_seq"] + 1)

    def _fill_markers(self, session: str | None = None, until: int | None = None):
        """Fetch markers the live stream did not bring (up to seq ``until``, or all)."""
        a = self.active
        if session is None:
            try:
                status = self.services.markers_status()
            except Exception as exc:
                log.warning("markers service unavailable: %s", exc)
                return
            if status is None:
                return
            session, until = status["session"], status["last_seq"] + 1
        a.markers.fill(session, until)
        self._place_markers()

    def _place_markers(self, end: int | None = None):
        a = self.active
        offset = (self.amp_clock.offset_ns or 0) - (self.markers_clock.offset_ns or 0)
        for sample, m, previous in a.placer.place_samples(a.timeline, a.next_sample if end is None else end,
                                                          offset):
            self._guard(a.writer.add_marker, self._file_index(sample, previous), m.label, m.seq, m.session, m.t_ns)
            a.placed.add((m.session, m.seq))
        a.timeline.forget_before(a.next_sample - int(TIMELINE_S * a.writer.fs))

    def _file_index(self, amp_sample: int, previous: bool = False) -> int:
        """The file's row of ``amp_sample`` of the current amp session (``previous``: of the one before)."""
        segments = self.active.writer.meta["mushu"]["segments"]
        seg = segments[-2] if previous and len(segments) > 1 else segments[-1]
        return seg["file_sample"] + amp_sample - seg["first_sample"]

    # -- errors and periodic work ---------------------------------------------

    def _guard(self, fn, *args, **kw):
        try:
            fn(*args, **kw)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException):
        a = self.active
        if a.error is None:
            a.error = f"{type(exc).__name__}: {exc}"
            self.last_error = a.error
            log.error("recording %s stopped: %s", a.writer.base, a.error)
            a.writer.fail(a.error)

    def _measure_markers_clock(self):
        try:
            self.markers_clock.measure()
            self._markers_seen_ns = now_ns()
        except Exception as exc:  # not running: its offset is estimated once it answers
            log.info("markers service clock not measured: %s", exc)

    def _store_offsets(self):
        """Put the raw clock offset estimates into the meta (kept across a crash)."""
        offsets = self.active.writer.meta["mushu"]["clock_offsets_ns"]
        offsets["amp"], offsets["markers"] = list(self.amp_clock.history), list(self.markers_clock.history)
        self._guard(self.active.writer.write_meta)

    def tick(self):
        """Periodic work: an expired lease, a step of catching up, a clock probe when due, the meta every 10 s."""
        self._expire_lease()
        if self.active is not None and self.active.error is None and self.active.follower.behind:
            self.catch_up(step=True)
        self.amp_clock.update()
        if now_ns() - self._markers_seen_ns < 5_000_000_000:  # never block on a service that is not there
            self.markers_clock.update()
        a = self.active
        if a is not None and a.error is None and now_ns() >= self._next_meta_ns:
            self._next_meta_ns = now_ns() + 10_000_000_000
            self._store_offsets()

    def flush(self):
        if self.active is not None and self.active.error is None:
            self._guard(self.active.writer.flush)

    def sync(self):
        if self.active is not None and self.active.error is None:
            self._guard(self.active.writer.flush)
            self.sync_files(self.active.writer.sync_paths())

    # -- resuming after a crash -----------------------------------------------

    def resume(self):
        """Continue the recording a killed recorder left, if the state file names one."""
        try:
            with open(self._state_path()) as f:
                state = json.load(f)
        except FileNotFoundError:
            return None
        active = state.get("active")
        if not active:
            return None
        writer = RecordingWriter.resume(active["base"])
        mushu = writer.meta["mushu"]
        seg = mushu["segments"][-1]
        next_sample = seg["first_sample"] + writer.n_samples - seg["file_sample"]
        # the lease starts again: its client has as long as ever to find the recorder back
        follower = BlockFollower(self, self.services.amp_history, TIMELINE_S)
        follower.begin(seg["session"], next_sample, start_ns=mushu["start_monotonic_ns"])
        a = Active(writer, mushu["first_sample"], follower,
                   token=active.get("token") or secrets.token_hex(16), lease_s=active.get("lease_s"),
                   client=active.get("client"))
        a.placed = {(m["session"], m["seq"]) for m in writer.markers if m["seq"] >= 0}
        a.placer.start_ns = mushu["start_monotonic_ns"]
        a.markers = self._follow_markers(mushu.get("markers_session"), mushu.get("markers_first_seq", 0))
        self.active = a
        stored = mushu.get("clock_offsets_ns", {})
        self.amp_clock.history = list(stored.get("amp", []))
        self.markers_clock.history = list(stored.get("markers", []))
        try:
            self.amp_clock.measure()
        except Exception as exc:
            log.warning("amp clock not measured: %s", exc)
        self._measure_markers_clock()
        log.info("resuming %s at amp sample %d (%d samples, %d markers on disk)",
                 writer.base, next_sample, writer.n_samples, len(writer.markers))
        self._rebuild_timeline()
        self.catch_up(step=True)  # an amp that runs on: the live blocks and tick() take the next steps
        self._fill_markers()
        return writer.base

    def _rebuild_timeline(self):
        """Block times of the samples already written, from the amp's history,
        so markers that arrive now can still be placed on them."""
        a = self.active
        start = max(a.first_sample, a.next_sample - int(TIMELINE_S * a.writer.fs))
        journaled = {(m["sample"], m["label"]) for m in a.writer.markers if m["seq"] == AMP_MARKER_SEQ}
        for block in self.services.amp_history(a.session, start, a.next_sample):
            h = block.header
            if a.timeline.end_sample is not None and h.first_sample < a.timeline.end_sample:
                continue
            n = min(h.n_samples, a.next_sample - h.first_sample)
            a.timeline.add(h.first_sample, h.t_ns, n, h.fs)
            for offset, label in h.markers:  # written to the data, not yet to the journal?
                entry = (self._file_index(h.first_sample + offset), label)
                if offset < n and entry not in journaled:
                    self._add_amp_marker(h, offset, label)

"""The viewer's one thread on the bus: follows an amp stream and the markers, and runs the page's commands.

Every ZeroMQ socket of the viewer (the amp's and markers' buses, the control clients, the recording
control) is made, used and closed in :meth:`BusThread.run`'s thread only. The web server (another thread,
its asyncio loop) hands it commands through a :class:`queue.Queue` and gets what it publishes through the
``publish`` callable it gives, which must be safe to call from this thread.

Samples follow the path every consumer's do (:class:`~mushu_core.follow.stream.BlockFollower`: every
sample once, in order, history fills, gaps reported), markers are placed on samples as the client and the
recorder place them (:class:`~mushu_core.follow.placement.MarkerPlacer`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

import numpy as np
import zmq

from mushu_client.recording_control import RecordingControl
from mushu_client.sender import MarkerSender
from mushu_core import security
from mushu_core.bus import RCVHWM, subscribe
from mushu_core.clock import ClockOffset, now_ns
from mushu_core.control import ControlClient
from mushu_core.errors import MushuError, ServiceUnavailable
from mushu_core.fetch import history_blocks, history_markers, join_markers
from mushu_core.follow.markers import MarkerFollower
from mushu_core.follow.placement import MarkerPlacer
from mushu_core.follow.stream import BlockFollower
from mushu_core.leases import LEASE_S
from mushu_core.wire import (MAX_MARKER_BYTES, Block, Marker, MarkerStreamInfo, StreamInfo, data_topic, info_topic,
                             marker_topic)

from .core import Decimator, RateMeter, Recent, encode_frame

log = logging.getLogger("mushu.viewer")

#: Seconds between frames sent to the pages: samples arriving meanwhile go out together.
FLUSH_S = 0.02
#: Seconds between status messages (and the services' status requests behind them).
STATUS_S = 0.5
#: Seconds a service has to answer a status request.
STATUS_TIMEOUT_S = 0.2
#: Seconds a marker waits for its sample before it is shown at its own time (the amp is stopped or away).
MARKER_HOLD_S = 2.0
#: Largest number of messages handled from one bus before looking at the others.
BATCH = 1000
#: Markers kept for a page that opens.
RECENT_MARKERS = 200


class BusThread:
    """Follow one amp stream and the markers; hand pages frames, markers and status; run their commands.

    Parameters
    ----------
    endpoints : dict
        ``amp_data``, ``amp_control``, ``markers_data``, ``markers_control`` (None: no markers service),
        ``recorder`` (None: no recorder), ``markers_host``, ``markers_port``.
    publish : callable
        ``publish(message)``: a ``bytes`` data frame or a ``dict`` (JSON) for every page (the web server
        sets it before :meth:`run`).
    stream, marker_stream : str
        mushu stream names.
    """

    mode = "live"

    def __init__(self, endpoints: dict, publish=None, stream: str = "eeg", marker_stream: str = "markers"):
        self.endpoints, self.publish = endpoints, publish
        self.stream, self.marker_stream = stream, marker_stream
        self.commands: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        #: Held while the recent frames change, and while a page's snapshot copies them (web server's thread).
        self._recent_lock = threading.Lock()
        self.info: dict | None = None  # the stream as pages are told it
        self.recent: Recent | None = None
        self.recent_markers: list[dict] = []
        self.status: dict = {"type": "status"}
        #: Counters: samples shown, samples lost, markers shown, markers lost.
        self.shown_samples = self.lost_samples = self.markers_shown = self.lost_markers = 0
        self.gaps: list[dict] = []

    # -- what a page that opens gets first ---------------------------------------------

    def snapshot(self) -> list:
        """The messages a new page starts with: the stream, its recent frames and markers, the status.

        Called from the web server's thread: reads references this thread replaces, never mutates.
        """
        out = []
        with self._recent_lock:
            info, recent, markers = self.info, self.recent, self.recent_markers
            frames = [frame for _first, _n, frame in recent.frames] if recent is not None else []
        if info is not None:
            out.append(info)
            out += frames
        if markers:
            out.append({"type": "markers", "markers": markers})
        out.append(self.status)
        return out

    # -- the thread ------------------------------------------------------------------

    def run(self):
        """Follow until :meth:`shutdown`."""
        ep = self.endpoints
        keys = security.configured()
        self.keys = keys
        self.bus = subscribe(ep["amp_data"], [data_topic(self.stream), info_topic(self.stream)], keys, RCVHWM)
        self.ctl = ControlClient(ep["amp_control"], 2.0, "amp", keys)
        self.amp_clock = ClockOffset(lambda: self.ctl.call("time"))
        self.mbus = self.mctl = None
        if ep.get("markers_data") and ep.get("markers_control"):
            self.mbus = subscribe(ep["markers_data"], [marker_topic(self.marker_stream), info_topic(self.marker_stream)],
                                  keys, RCVHWM, message_bytes=MAX_MARKER_BYTES)
            self.mctl = ControlClient(ep["markers_control"], STATUS_TIMEOUT_S, "markers", keys)
        self.markers_clock = ClockOffset(lambda: self.mctl.request("time", timeout=STATUS_TIMEOUT_S)[0])
        self.rctl = ControlClient(ep["recorder"], STATUS_TIMEOUT_S, "recorder", keys) if ep.get("recorder") else None
        self.recording: RecordingControl | None = None
        self.sender: MarkerSender | None = None
        self.follower = BlockFollower(self, self._amp_history, 10.0)
        self.markers = MarkerFollower(self, self._markers_history)
        self.markers.join()
        self.placer = MarkerPlacer()
        self._arrivals: dict = {}
        self.decimator: Decimator | None = None
        self.rate = RateMeter()
        self._pending: list[tuple[int, np.ndarray, int]] = []  # (first sample, rows, t_ns of the first) to send
        self._next_flush = self._next_status = 0.0
        try:
            synced = False
            while not self._stop.is_set():
                if not synced:
                    synced = self._sync()
                # A page draws at most every frame: wake once a flush (FLUSH_S) and take everything that came
                # meanwhile (libzmq queues it), not once a block; that is most of this thread's CPU saved.
                self._stop.wait(max(0.0, self._next_flush - time.monotonic()))
                buses = [b for b in (self.bus, self.mbus) if b is not None]
                ready = {s for s, _ in zmq.zmq_poll([(s, zmq.POLLIN) for b in buses for s in b.sockets], 0)}
                for b in buses:
                    if ready.intersection(b.sockets):
                        for _ in range(BATCH):
                            msg = b.receive()
                            if msg is None:
                                break
                            self._handle(msg)
                self._tick()
        finally:
            self._close()

    def shutdown(self):
        """Make :meth:`run` return (from another thread)."""
        self._stop.set()

    def call(self, command: str, **args) -> Future:
        """Run ``command`` (``record``, ``stop_recording``, ``marker``) in this thread; its Future (any thread)."""
        done: Future = Future()
        self.commands.put((command, args, done))
        return done

    # -- the stream ----------------------------------------------------------------------

    def _sync(self) -> bool:
        try:
            status = self.ctl.call("status")
            self.amp_clock.measure()
        except ServiceUnavailable as exc:
            self.status = {"type": "status", "services": {"amp": f"not answering: {exc}"}}
            return False
        self.follower.begin(status["session"], None)
        if status.get("channels"):
            self._stream(status["session"], status["channels"], status["fs"], status.get("unit"), status.get("amp"))
        if self.mctl is not None:
            join_markers(self.mctl, self.markers_clock, self.markers)
        return True

    def _stream(self, session, channels, fs, unit, amp):
        """The stream's shape is known (or changed): tell the pages, start the frames again."""
        info = {"type": "stream", "stream": self.stream, "session": session, "channels": list(channels),
                "fs": float(fs), "unit": unit or "", "amp": amp or ""}
        if self.info is not None and {k: v for k, v in self.info.items() if k != "page_fs"} == info:
            return
        self._flush()
        self.decimator = Decimator(float(fs), len(channels))
        info["page_fs"] = self.decimator.fs
        with self._recent_lock:
            self.recent = Recent(self.decimator.fs, len(channels))
            self.info = info
        self.rate.reset()
        self.publish(info)

    def _handle(self, msg):
        if isinstance(msg, Block):
            self.follower.on_block(msg)
        elif isinstance(msg, StreamInfo):
            if msg.channels and msg.session == self.follower.session:
                self._stream(msg.session, msg.channels, msg.fs, msg.units[0] if msg.units else "", msg.amp)
            self.follower.on_info(msg)
        elif isinstance(msg, (Marker, MarkerStreamInfo)):
            self.markers.on_message(msg)

    def _amp_history(self, session, from_sample, until):
        return history_blocks(self.ctl, self.stream, session, from_sample, until)

    def new_session(self, old, block: Block, not_acquired: int) -> bool:
        h = block.header
        self._flush()
        try:
            status = self.ctl.call("status")
            channels, unit, amp = status["channels"], status.get("unit"), status.get("amp")
        except ServiceUnavailable:
            channels, unit, amp = [f"Ch_{i}" for i in range(h.n_channels)], "", ""
        if len(channels) != h.n_channels:
            channels = [f"Ch_{i}" for i in range(h.n_channels)]
        self.info = None  # a new session is a new stream for the pages, whatever its shape
        self._stream(h.session, channels, h.fs, unit, amp)
        return True

    def lost(self, first_sample: int, count: int, reason: str):
        log.warning("%d samples from %d lost (%s)", count, first_sample, reason)
        self.lost_samples += count
        self.gaps = (self.gaps + [{"first_sample": first_sample, "count": count, "reason": reason}])[-20:]

    def samples(self, block: Block, skip: int, stop: int):
        h = block.header
        if self.info is None or len(self.info["channels"]) != h.n_channels or self.info["fs"] != h.fs:
            self.new_session(None, block, 0)
        self._pending.append((h.first_sample + skip, block.data[skip:stop], h.time_of(skip)))
        self.shown_samples += stop - skip
        if self.placer.start_ns is None:
            self.placer.start_ns = h.time_of(skip)

    def _wall_ms(self, t_ns: int, offset_ns: int | None) -> float:
        """Wall-clock ms of ``t_ns`` on a service's clock ``offset_ns`` ahead of this host's."""
        local = t_ns - (offset_ns or 0)
        return (local - now_ns() + time.time_ns()) / 1e6

    def _flush(self):
        """Send the samples received since the last flush as one frame per run of consecutive samples."""
        pending, self._pending = self._pending, []
        if not pending or self.decimator is None:
            return
        runs: list[list] = []  # [first sample, its rows, the first's t_ns, the sample after the run]
        for first, rows, t_ns in pending:
            if runs and runs[-1][3] == first:
                runs[-1][1].append(rows)
                runs[-1][3] += len(rows)
            else:
                runs.append([first, [rows], t_ns, first + len(rows)])
        for first, parts, t_ns, _end in runs:
            self.rate.add(first, t_ns)
            data = np.concatenate(parts) if len(parts) > 1 else parts[0]
            fed = self.decimator.feed(first, data.astype(np.float32, copy=False))
            if fed is None:
                continue
            row, out = fed
            t_ms = self._wall_ms(t_ns, self.amp_clock.offset_ns)
            frame = encode_frame(row, self.decimator.fs, t_ms, out, self.decimator.factor > 1)
            with self._recent_lock:
                self.recent.add(row, frame, len(out), data)
            self.publish(frame)

    # -- markers ---------------------------------------------------------------------------

    def _markers_history(self, session, from_seq, until):
        if self.mctl is None:
            return ()
        return history_markers(self.mctl, self.marker_stream, session, from_seq, until)

    def marker(self, m: Marker):
        self.placer.add(m)
        self._arrivals[m.session, m.seq] = now_ns()

    def markers_lost(self, session, first_seq, count):
        self.lost_markers += count

    def _place_markers(self):
        shown = []
        if self.placer.start_ns is not None and self.decimator is not None:
            offset_ns = (self.amp_clock.offset_ns or 0) - (self.markers_clock.offset_ns or 0)
            early: list = []
            for sample, m, previous in self.placer.place_samples(self.follower.timeline, self.follower.next_sample,
                                                                 offset_ns, early):
                row = None if previous else self._row(sample)
                shown.append(self._shown(m, row))
            shown += [self._shown(m, None) for m in early]
        give_up = now_ns() - int(MARKER_HOLD_S * 1e9)
        shown += [self._shown(m, None) for m in self.placer.expire(lambda m: self._arrivals[m.session, m.seq] <= give_up)]
        if shown:
            self.markers_shown += len(shown)
            self.recent_markers = (self.recent_markers + shown)[-RECENT_MARKERS:]
            self.publish({"type": "markers", "markers": shown})

    def _row(self, sample: int) -> int:
        k = self.decimator.factor
        return sample if k == 1 else 2 * (sample // k)

    def _shown(self, m: Marker, row: int | None) -> dict:
        self._arrivals.pop((m.session, m.seq), None)
        return {"label": m.label, "row": row, "t_ms": self._wall_ms(m.t_ns, self.markers_clock.offset_ns),
                "seq": m.seq, "source": m.source.split(":")[0]}

    # -- periodic work -------------------------------------------------------------------------

    def _tick(self):
        now = time.monotonic()
        if now >= self._next_flush:
            self._flush()
            self._next_flush = now + FLUSH_S
        if self.placer.pending:
            self._place_markers()
        while True:
            try:
                command, args, done = self.commands.get_nowait()
            except queue.Empty:
                break
            self._run_command(command, args, done)
        if now >= self._next_status:
            self._next_status = now + STATUS_S
            self.amp_clock.update()
            if self.mctl is not None:
                self.markers_clock.update()
            self.status = self._status()
            self.publish(self.status)

    def _status(self) -> dict:
        services, amp, rec = {}, None, None
        try:
            amp = self.ctl.request("status", timeout=STATUS_TIMEOUT_S)[0]
            services["amp"] = "ok"
        except MushuError as exc:
            services["amp"] = f"not answering ({exc})"
        if self.mctl is not None:
            try:
                markers = self.mctl.request("status", timeout=STATUS_TIMEOUT_S)[0]
                services["markers"] = "ok"
                counts = markers.get("counts", {})
            except MushuError as exc:
                services["markers"], counts = f"not answering ({exc})", {}
        else:
            counts = {}
        if self.rctl is not None:
            try:
                rec = self.rctl.request("status", timeout=STATUS_TIMEOUT_S)[0]
                services["recorder"] = "ok" if rec.get("state") != "error" else f"error: {rec.get('last_error')}"
            except MushuError as exc:
                services["recorder"] = f"not answering ({exc})"
        recording = None
        if rec and rec.get("recording"):
            r = rec["recording"]
            channels = len(self.info["channels"]) if self.info else 0
            recording = {"name": r["name"], "n_samples": r["n_samples"], "bytes": r["n_samples"] * channels * 4,
                         "markers": r["markers"], "gaps": len(r["gaps"]), "error": r["error"],
                         "mine": self.recording is not None and self.recording.recording == r["base"]}
        quality = self.recent.quality(self.decimator.fs_in) if self.recent is not None and \
            self.decimator is not None and self.decimator.factor == 1 else None
        return {"type": "status", "services": services,
                "driver": (amp or {}).get("amp") or (self.info or {}).get("amp"),
                "state": (amp or {}).get("state"), "session": self.follower.session,
                "fs": (self.info or {}).get("fs"), "measured_hz": self.rate.hz,
                "samples": self.shown_samples, "lost_samples": self.lost_samples, "gaps": self.gaps[-5:],
                "n_gaps": len(self.gaps), "markers": {"shown": self.markers_shown, "lost": self.lost_markers,
                                                     "received_by_service": counts},
                "recording": recording, "quality": quality}

    # -- commands ------------------------------------------------------------------------------

    def _run_command(self, command: str, args: dict, done: Future):
        try:
            if command == "record":
                result = self._record(args["name"])
            elif command == "stop_recording":
                result = self._stop_recording()
            elif command == "marker":
                result = self._send_marker(args["label"])
            else:
                raise ValueError(f"no command {command!r}; the page may send record, stop_recording and marker")
        except (MushuError, ValueError, TypeError, RuntimeError, OSError) as exc:
            done.set_exception(exc)
        else:
            done.set_result(result)

    def _record(self, name) -> dict:
        if self.rctl is None:
            raise RuntimeError("this viewer has no recorder (give it --recorder)")
        if self.recording is not None and self.recording.recording is not None:
            raise RuntimeError(f"this viewer records {self.recording.recording!r} already; stop it first")
        if not isinstance(name, str) or not name:
            raise ValueError("a recording needs a name")
        if self.follower.session is None:
            raise RuntimeError("the amp is not acquiring: start it first (a client's start(), or mushu up with a "
                               "driver that starts)")
        if self.recording is None:
            self.recording = RecordingControl(self.endpoints["recorder"], 5.0, self.keys)
        self.recording.check(name)
        self.recording.record(name, self.follower.session, self.follower.next_sample, self.markers.session,
                              self.markers.next_seq, LEASE_S, self)
        log.info("recording %s from sample %d", self.recording.recording, self.follower.next_sample)
        return {"recording": self.recording.recording}

    def _stop_recording(self) -> dict:
        if self.recording is None or self.recording.recording is None:
            raise RuntimeError("this viewer records nothing (a recording another client started ends with that "
                               "client, or with mushu record stop)")
        self.recording.finish({"session": self.follower.session, "next_sample": self.follower.next_sample})
        return dict(self.recording.result or {})

    def _send_marker(self, label) -> dict:
        if not isinstance(label, str):
            raise TypeError("a marker label is a string")
        if self.sender is None:
            self.sender = MarkerSender(self.endpoints["markers_host"], int(self.endpoints["markers_port"]))
        self.sender.send(label)
        return {"sent": label}

    def _close(self):
        if self.recording is not None:
            self.recording.close()  # its lease runs out: the recorder ends it
        if self.sender is not None:
            self.sender.close()
        for b in (self.bus, self.mbus):
            if b is not None:
                b.close()
        for c in (self.ctl, self.mctl, self.rctl):
            if c is not None:
                c.close()

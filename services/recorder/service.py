"""The recorder process: one thread and one poller around :class:`RecorderCore`.

It subscribes to the amp's blocks and to the markers (always, so a
recording starts with live data), answers its control socket, ends a
recording whose lease ran out, flushes the files every 100 ms and has them
synced to the disk every second, in a thread of their own (an fsync on a
busy disk takes seconds: :class:`files.BackgroundSync`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import zmq

from mushu_core import process
from mushu_core.bus import QUEUE_BYTES, choose_endpoint, subscribe
from mushu_core.clock import now_ns
from mushu_core.config import setting, setting_mib
from mushu_core.control import ControlClient, ControlServer
from mushu_core.errors import ServiceUnavailable
from mushu_core.fetch import history_blocks, history_markers
from mushu_core.security import Guard
from mushu_core.wire import MAX_MARKER_BYTES, Block, Marker, StreamInfo, data_topic, info_topic, marker_topic

from .core import READ_ONLY, RecorderCore, Services
from .files import BackgroundSync

log = logging.getLogger("mushu.recorder")

FLUSH_NS = 100_000_000
SYNC_NS = 1_000_000_000
#: Longest the recorder takes bus messages before it answers control requests.
DRAIN_NS = 20_000_000


class RecorderService:
    """Connect to the amp and markers services, bind the control socket, serve."""

    def __init__(self, data_dir: str, control: str, amp_data: str, amp_control: str,
                 markers_data: str, markers_control: str, stream: str, marker_stream: str,
                 queue_bytes: int = QUEUE_BYTES):
        self.ctx = zmq.Context.instance()
        self.guard = Guard(self.ctx, {"control": control})
        self.stream, self.marker_stream = stream, marker_stream
        self.amp_ctl = ControlClient(amp_control, 2.0, "amp", self.guard.keys)
        self.markers_ctl = ControlClient(markers_control, 0.5, "markers", self.guard.keys)
        self.core = RecorderCore(data_dir, Services(
            amp_status=self._amp_status,
            amp_history=self._amp_history,
            markers_status=self._markers_status,
            markers_history=self._markers_history,
            amp_time=lambda: self.amp_ctl.call("time"),
            markers_time=lambda: self.markers_ctl.request("time", timeout=0.2)[0]), stream)
        self.core.sync_files = self.syncer = BackgroundSync()
        topics = [data_topic(stream), info_topic(stream), marker_topic(marker_stream)]
        self.bus = subscribe([amp_data, markers_data], topics, self.guard.keys, queue_bytes=queue_bytes,
                             message_bytes=MAX_MARKER_BYTES)
        self.amp_data = self.core.amp_data = amp_data
        try:
            self.control = ControlServer(self.ctx, self.guard, control, READ_ONLY, log, "recorder")
        except OSError:
            self.guard.close()
            raise
        self.quit = False

    # -- the other services ---------------------------------------------------

    def _amp_status(self) -> dict:
        """The amp's status; from here on its blocks are read where it offers this host (a recording starts)."""
        status = self.amp_ctl.call("status")
        self._read_amp_at(choose_endpoint(self.amp_data, status.get("local_data")))
        return status

    def _read_amp_at(self, endpoint: str):
        """Read the amp's blocks at ``endpoint``: connect there, then leave the endpoint read so far.

        Blocks that come both ways are dropped by their sample index; blocks
        that the old connection still held are fetched from the history.
        """
        if endpoint == self.core.amp_data:
            return
        try:
            self.bus.connect(endpoint)
        except zmq.ZMQError as exc:
            log.warning("cannot read the amp at %s, staying on %s: %s", endpoint, self.core.amp_data, exc)
            return
        self.bus.disconnect(self.core.amp_data)
        log.info("reading the amp's blocks at %s", endpoint)
        self.core.amp_data = endpoint

    def _amp_history(self, session, from_sample, until):
        return history_blocks(self.amp_ctl, self.stream, session, from_sample, until)

    def _markers_status(self):
        try:
            return self.markers_ctl.call("status")
        except ServiceUnavailable:
            return None

    def _markers_history(self, session, from_seq, until):
        return history_markers(self.markers_ctl, self.marker_stream, session, from_seq, until)

    # -- the loop -------------------------------------------------------------

    def run(self):
        os.makedirs(self.core.data_dir, exist_ok=True)
        try:
            resumed = self.core.resume()
        except Exception as exc:  # a damaged state must not keep the recorder down
            log.error("cannot resume the recording in progress: %s: %s", type(exc).__name__, exc)
            resumed = None
        if resumed:
            log.warning("resumed recording %s after a restart", resumed)
        log.info("recorder: control on %s, data directory %s", self.control.endpoint, self.core.data_dir)
        next_flush = now_ns() + FLUSH_NS
        next_sync = now_ns() + SYNC_NS
        pollin = zmq.POLLIN
        while not self.quit:
            # The bus reader may replace its socket (bus.BusReader): poll the ones it has now.
            polled = [(s, pollin) for s in (*self.bus.sockets, self.control.sock)]
            ready = {sock for sock, _ in zmq.zmq_poll(polled, 100)}
            if ready.intersection(self.bus.sockets):
                self._drain()
            if self.control.sock in ready:
                self.control.serve(self.core.handle)
            self.core.tick()
            now = now_ns()
            if now >= next_flush:
                self.core.flush()
                next_flush = now + FLUSH_NS
            if now >= next_sync:
                self.core.sync()
                next_sync = now + SYNC_NS
        self.core.sync()
        self.syncer.close()
        self.bus.close()
        self.control.close()
        self.amp_ctl.close()
        self.markers_ctl.close()
        self.guard.close()

    def _drain(self):
        # Then the control socket has its turn: a thousand 1 MiB blocks would
        # keep it waiting for seconds, so the turn comes after DRAIN_NS too.
        deadline = now_ns() + DRAIN_NS
        for _ in range(1000):
            msg = self.bus.receive()
            if msg is None:
                return
            if isinstance(msg, Block):
                self.core.on_block(msg)
            elif isinstance(msg, Marker):
                self.core.on_marker(msg)
            elif isinstance(msg, StreamInfo):
                self.core.on_info(msg)
            if now_ns() > deadline:
                return

    def shutdown(self):
        self.quit = True


def main(argv=None):
    """Console script ``mushu-recorder``."""
    return process.main("mushu-recorder", "mushu file recorder", _arguments, _build, argv)


def _arguments(p: argparse.ArgumentParser):
    # Every default comes from mushu_core.config: argument > environment > mushu.toml > default.
    p.add_argument("--data-dir", help="directory of relative recording names (env MUSHU_DATA_DIR, default ./data)")
    p.add_argument("--control", help="endpoint to bind the control socket to (env MUSHU_RECORDER_CONTROL_BIND, "
                   "else MUSHU_RECORDER_CONTROL)")
    p.add_argument("--amp-data", help="amp service blocks (env MUSHU_AMP_DATA)")
    p.add_argument("--amp-control", help="amp service control (env MUSHU_AMP_CONTROL)")
    p.add_argument("--markers-data", help="markers service bus (env MUSHU_MARKERS_DATA)")
    p.add_argument("--markers-control", help="markers service control (env MUSHU_MARKERS_CONTROL)")
    p.add_argument("--stream", help="amp stream name (env MUSHU_STREAM)")
    p.add_argument("--marker-stream", help="marker stream name (env MUSHU_MARKER_STREAM)")
    p.add_argument("--queue-mb", type=float, help="blocks queued from the amp, at most, in MiB "
                   f"(env MUSHU_RECORDER_QUEUE_MB, default {QUEUE_BYTES / 2**20:g})")


def _build(a: argparse.Namespace):
    return RecorderService(
     setting("MUSHU_DATA_DIR", a.data_dir), setting("MUSHU_RECORDER_CONTROL_BIND", a.control),
     setting("MUSHU_AMP_DATA", a.amp_data), setting("MUSHU_AMP_CONTROL", a.amp_control),
     setting("MUSHU_MARKERS_DATA", a.markers_data), setting("MUSHU_MARKERS_CONTROL", a.markers_control),
     setting("MUSHU_STREAM", a.stream), setting("MUSHU_MARKER_STREAM", a.marker_stream),
     setting_mib("MUSHU_RECORDER_QUEUE_MB", a.queue_mb))


if __name__ == "__main__":
    sys.exit(main())

"""The amp service process: sockets and threads around :class:`AmpCore`.

Two threads share the core under one lock:

- the acquisition thread owns the PUB socket; while running it reads the
  driver once per block period, publishes the stamped blocks and, every quarter
  second (and at once after a state change), the stream info;
- the main thread owns the ROUTER control socket and answers requests.

A driver that blocks in ``get_data`` (hardware) holds the lock only for that
read, so control requests wait at most one device read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time

import zmq

from mushu_core import process
from mushu_core.bus import QUEUE_BYTES, host_key, local_endpoint, queue_hwm
from mushu_core.clock import now_ns
from mushu_core.config import setting, setting_flag, setting_float, setting_int, setting_mib
from mushu_core.control import ControlServer
from mushu_core.security import Guard
from mushu_core.wire import data_topic, encode_info

from .core import DEFAULT_HISTORY_BYTES, MAX_BLOCK_BYTES, READ_ONLY, STATE_COMMANDS, AmpCore

log = logging.getLogger("mushu.amp")

#: Stream info goes out four times a second: a consumer notices a dead amp within a second.
INFO_PERIOD_NS = 250_000_000


class AmpService:
    """Bind the sockets and serve until :meth:`shutdown`.

    Parameters
    ----------
    core : AmpCore
    data_endpoint, control_endpoint : str
        ZeroMQ endpoints to bind the PUB and ROUTER sockets to.
    block_ms : float
        Period of the acquisition loop, i.e. the duration of a simulated block.
    sndhwm : int
        PUB high-water mark per subscriber, in messages, at most. A consumer
        that falls further behind loses blocks on the bus and refetches them
        from the history.
    queue_bytes : int
        Bytes of blocks the PUB queues per subscriber, at most: the mark is
        ``queue_bytes`` in blocks of the largest size (``MAX_BLOCK_BYTES``) if
        that is lower than ``sndhwm``. It is set before the socket binds and
        never changed (:func:`mushu_core.bus.queue_hwm`).
    local_ipc : bool
        Also publish on a local IPC endpoint, offered in ``status`` to the
        clients on this host (:func:`mushu_core.bus.choose_endpoint`).
    """

    def __init__(self, core: AmpCore, data_endpoint: str, control_endpoint: str,
                 block_ms: float = 1.0, sndhwm: int = 10000, local_ipc: bool = True,
                 queue_bytes: int = QUEUE_BYTES):
        self.core = core
        self.period_ns = max(1, int(block_ms * 1e6))
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.quit = threading.Event()
        self.ctx = zmq.Context()
        try:
            self.guard = Guard(self.ctx, {"data": data_endpoint, "control": control_endpoint})
        except Exception:
            self.ctx.destroy(linger=0)
            raise
        self.pub = self.ctx.socket(zmq.PUB)
        self.sndhwm = queue_hwm(queue_bytes, sndhwm, MAX_BLOCK_BYTES)
        self.pub.setsockopt(zmq.SNDHWM, self.sndhwm)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.guard.server(self.pub)
        try:
            self.pub.bind(data_endpoint)
            self.control = ControlServer(self.ctx, self.guard, control_endpoint, READ_ONLY, log, "amp service")
        except (zmq.ZMQError, OSError) as exc:
            self.guard.close()
            self.ctx.destroy(linger=0)
            raise OSError(f"cannot bind amp service to {data_endpoint} / {control_endpoint}: {exc}") from None
        self.data_endpoint = data_endpoint
        self.control_endpoint = control_endpoint
        self.local_path = self._bind_local(data_endpoint) if local_ipc else None

    def _bind_local(self, data_endpoint: str) -> str | None:
        """Bind the PUB to this host's IPC endpoint too and offer it in status; its path, or None."""
        key = host_key()
        if key is None:
            return None
        try:
            endpoint = local_endpoint(data_endpoint, self.core.stream, key)
            self.pub.bind(endpoint)
        except (OSError, zmq.ZMQError) as exc:
            log.warning("no local IPC endpoint (%s): clients on this host use %s", exc, data_endpoint)
            return None
        self.core.local_data = {"endpoint": endpoint, "host": key}
        return endpoint[len("ipc://"):]

    def run(self):
        """Serve until :meth:`shutdown` is called (e.g. from a signal handler)."""
        acq = threading.Thread(target=self._acquisition_loop, name="acquisition", daemon=True)
        acq.start()
        log.info("amp service: data on %s, control on %s", self.data_endpoint, self.control_endpoint)
        try:
            self._control_loop()
        finally:
            self.quit.set()
            self.wake.set()
            acq.join()
            with self.lock:
                if self.core.running:
                    self.core.cmd_stop()
            self.guard.close()
            self.ctx.destroy(linger=0)
            if self.local_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.local_path)

    def shutdown(self):
        self.quit.set()
        self.wake.set()

    # -- control ----------------------------------------------------------

    def _control_loop(self):
        poller = zmq.Poller()
        poller.register(self.control.sock, zmq.POLLIN)
        while not self.quit.is_set():
            if poller.poll(100):
                self._serve()

    def _serve(self):
        def handle(cmd, args):
            with self.lock:
                return self.core.handle(cmd, args)

        cmd, error = self.control.serve(handle)
        if error is None and cmd in STATE_COMMANDS:
            self.wake.set()

    # -- acquisition ------------------------------------------------------

    def _acquisition_loop(self):
        # The hot path runs once per block period (1000 times a second by
        # default), so it binds what it uses to locals once and sends each
        # block's three frames with plain ``send`` and an int flag:
        # ``send_multipart`` type-checks every frame and ORs enum flags in
        # Python on each call. The frames on the wire are the same. Frames
        # under the socket's copy threshold are copied either way; only
        # larger payloads go zero-copy.
        core, lock, wake, quit_ = self.core, self.lock, self.wake, self.quit
        topic = data_topic(core.stream)
        send, send_multipart = self.pub.send, self.pub.send_multipart
        more = int(zmq.SNDMORE)
        copy_threshold = self.pub.copy_threshold
        monotonic_ns, sleep = now_ns, time.sleep
        period = self.period_ns
        next_tick = monotonic_ns()
        next_info = 0
        while not quit_.is_set():
            with lock:
                running = core.running
                blocks = core.acquire() if running else ()
            for _header, frame, data in blocks:
                send(topic, more)
                send(frame, more)
                send(data, 0, copy=data.nbytes < copy_threshold)
            now = monotonic_ns()
            if now >= next_info or wake.is_set():
                wake.clear()
                with lock:
                    info = core.info()
                    running = core.running
                send_multipart(encode_info(info))
                next_info = now + INFO_PERIOD_NS
            if running:
                next_tick += period
                if next_tick < now - period:  # fell behind: do not burst to catch up
                    next_tick = now
                if next_tick > now:
                    sleep((next_tick - now) / 1e9)
            else:
                wake.wait((next_info - now) / 1e9)
                next_tick = monotonic_ns()


def main(argv=None):
    """Console script ``mushu-amp``."""
    return process.main("mushu-amp", "mushu amplifier-driver service", _arguments, _build, argv)


def _arguments(p: argparse.ArgumentParser):
    # Every default comes from mushu_core.config: argument > environment > mushu.toml > default.
    p.add_argument("--data", help="endpoint to bind the block publisher to (env MUSHU_AMP_DATA_BIND, "
                   "else MUSHU_AMP_DATA)")
    p.add_argument("--control", help="endpoint to bind the control socket to (env MUSHU_AMP_CONTROL_BIND, "
                   "else MUSHU_AMP_CONTROL)")
    p.add_argument("--stream", help="stream name (env MUSHU_STREAM, default 'eeg')")
    p.add_argument("--amp", help="select this driver at startup")
    p.add_argument("--configure", metavar="JSON", help="configure the driver with these arguments at startup")
    p.add_argument("--start", action="store_true", help="start acquiring at startup")
    p.add_argument("--block-ms", type=float, help="block period of simulated drivers in ms (env MUSHU_AMP_BLOCK_MS, "
                   "default 1)")
    p.add_argument("--history-mb", type=float, help="size of the block history in MiB (env MUSHU_AMP_HISTORY_MB, "
                   f"default {DEFAULT_HISTORY_BYTES / 2**20:g})")
    p.add_argument("--sndhwm", type=int, help="PUB high-water mark in messages (env MUSHU_AMP_SNDHWM, default 10000)")
    p.add_argument("--queue-mb", type=float, help="blocks the PUB queues per subscriber, at most, in MiB "
                   f"(env MUSHU_AMP_QUEUE_MB, default {QUEUE_BYTES / 2**20:g})")
    p.add_argument("--state-file", help="keep the driver, its configuration and running state here and restore "
                   "them at startup (env MUSHU_AMP_STATE; none by default)")


def _build(a: argparse.Namespace):
    core = AmpCore(setting("MUSHU_STREAM", a.stream),
                   history_bytes=setting_mib("MUSHU_AMP_HISTORY_MB", a.history_mb),
                   state_file=setting("MUSHU_AMP_STATE", a.state_file) or None)
    if setting("MUSHU_DRIVERS"):  # the driver registry reads the environment: hand it a file's value too
        os.environ["MUSHU_DRIVERS"] = setting("MUSHU_DRIVERS")
    if a.amp or a.configure or a.start:  # explicit arguments win over the saved state
        if a.amp:
            core.cmd_use(a.amp)
        if a.configure:
            core.cmd_configure(json.loads(a.configure))
        if a.start:
            core.start("startup")
        core.save_state()
    else:
        core.restore_state()
    return AmpService(core, setting("MUSHU_AMP_DATA_BIND", a.data),
                      setting("MUSHU_AMP_CONTROL_BIND", a.control),
                      block_ms=setting_float("MUSHU_AMP_BLOCK_MS", a.block_ms),
                      sndhwm=setting_int("MUSHU_AMP_SNDHWM", a.sndhwm),
                      queue_bytes=setting_mib("MUSHU_AMP_QUEUE_MB", a.queue_mb),
                      local_ipc=setting_flag("MUSHU_AMP_LOCAL_IPC"))


if __name__ == "__main__":
    sys.exit(main())

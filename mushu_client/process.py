"""What every mushu service process does the same way: common arguments, logging, signals.

Each service's ``main()`` builds its own ``argparse`` parser, calls
:func:`add_common_arguments`, then :func:`setup` with the parsed arguments,
builds its service object and hands it to :func:`serve`.
"""

from __future__ import annotations

import gc
import logging
import signal

from . import clock
from .clock import now_ns
from .config import setting


def add_common_arguments(parser):
    """``--clock-offset`` and ``--log-level``."""
    parser.add_argument("--clock-offset", type=float, default=0.0,
                        help="add SECONDS to every timestamp (simulates another host's clock, for tests)")
    parser.add_argument("--log-level", help="env MUSHU_LOG_LEVEL, default INFO")


def setup(parser, args, program: str):
    """Configure logging (``MUSHU_LOG_LEVEL``) and the clock offset; a broken config file exits."""
    try:
        level = setting("MUSHU_LOG_LEVEL", args.log_level).upper()
    except ValueError as exc:  # e.g. a broken mushu.toml
        parser.error(str(exc))
    logging.basicConfig(level=level, format=f"%(asctime)s {program} %(levelname)s %(message)s")
    clock.set_offset(args.clock_offset)


def serve(service) -> int:
    """Run ``service`` until SIGTERM or SIGINT ask it to ``shutdown()``; return the exit code."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.shutdown())
    # What exists now (modules, drivers, sockets) lives as long as the process:
    # keep it out of the cyclic collector's full passes, which hold the GIL.
    gc.collect()
    gc.freeze()
    service.run()
    return 0


class ThrottledLog:
    """Log warnings by kind, at most ``burst`` lines per kind per ``window_s`` seconds.

    Bad input can arrive thousands of times a second; its log lines must not
    flood the log or cost the service its time. A window's suppressed lines
    are reported as a count when the next window opens.
    """

    def __init__(self, logger: logging.Logger, burst: int = 20, window_s: float = 10.0):
        self.log = logger
        self.burst = burst
        self.window_ns = int(window_s * 1e9)
        self._windows: dict[str, list[int]] = {}  # kind -> [window start, logged, suppressed]

    def __call__(self, kind: str, fmt: str, *args):
        now = now_ns()
        w = self._windows.setdefault(kind, [now, 0, 0])
        if now - w[0] > self.window_ns:
            if w[2]:
                self.log.warning("%d more %s problems were not logged", w[2], kind)
            w[:] = [now, 0, 0]
        if w[1] < self.burst:
            w[1] += 1
            self.log.warning(fmt, *args)
        else:
            w[2] += 1


def log_refused(throttled: ThrottledLog, cmd: str | None, error: Exception):
    """Log a refused control request (throttled per kind of refusal)."""
    throttled(type(error).__name__, "control request %s refused: %s: %.300s", cmd or "(malformed)",
              type(error).__name__, error)

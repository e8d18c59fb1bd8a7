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

"""The ``mushu`` command: a thin CLI over the services' control sockets.

One module per command (as in circus): each defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> exit code``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import amps, convert, down, keys, marker, plot, status, up

COMMANDS = [up, down, status, amps, marker, convert, plot, keys]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mushu", description="mushu: EEG/BCI acquisition over ZeroMQ")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.NAME, help=cmd.HELP, description=cmd.HELP)
        cmd.add_arguments(p)
        p.set_defaults(run=cmd.run)
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.ERROR, format="mushu: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""The ``mushu`` command: a thin CLI over the services' control sockets.

One module per command (as in circus): each defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> exit code``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mushu_core.security import KeyDirError

from . import amps, convert, down, keys, marker, plot, record, status, up, view

COMMANDS = [up, down, status, amps, marker, record, view, convert, plot, keys]


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
    try:
        return args.run(args)
    except KeyDirError as exc:  # MUSHU_KEYS names no usable key directory, whatever the command
        print(f"mushu {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

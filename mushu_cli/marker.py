"""``mushu marker LABEL``: send one marker to the markers service."""

from __future__ import annotations

import sys

from mushu_client.sender import MarkerSender
from mushu_core.config import setting
from mushu_core.errors import ServiceUnavailable

NAME = "marker"
HELP = "send one marker (trigger) to the markers service"


def add_arguments(p):
    p.add_argument("label", help="the marker text")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--udp", action="store_true", help="send one UDP datagram instead of using TCP")
    how.add_argument("--zmq", action="store_true", help="send to the ZeroMQ ingress (env MUSHU_MARKERS_INGRESS), "
                     "with CURVE if MUSHU_KEYS is set")
    p.add_argument("--host", help="markers service host (env MUSHU_MARKERS_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="markers service TCP/UDP port (env MUSHU_MARKERS_PORT, default 12344)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for the TCP connection")


def run(args) -> int:
    try:
        protocol = "udp" if args.udp else "zmq" if args.zmq else "tcp"
        with MarkerSender(args.host, args.port, protocol, args.timeout) as sender:
            sender.send(args.label)
            where = setting("MUSHU_MARKERS_INGRESS") if args.zmq else f"{sender.host}:{sender.port}"
    except ValueError as exc:  # a bad label, or a broken key directory
        print(f"mushu marker: {exc}", file=sys.stderr)
        return 2
    except ServiceUnavailable as exc:
        print(f"mushu marker: {exc}", file=sys.stderr)
        return 1
    note = " (a datagram: nothing confirms that it arrived)" if args.udp else ""
    print(f"sent marker {args.label!r} to the markers service at {where} over {protocol.upper()}{note}")
    return 0

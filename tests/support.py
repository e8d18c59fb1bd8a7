"""Helpers for tests and benchmarks that run mushu services on one machine."""

from __future__ import annotations

import random
import socket

_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; Windows and macOS use 49152-65535


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP and UDP port on ``host`` that nothing is bound to, for a service to bind next.

    The port is below the kernel's ephemeral range: a port the kernel hands
    out (``bind(0)``) can be given again, to the local end of any outgoing
    connection, before the service binds it. No port is handed out twice by
    one process.
    """
    low, _ = _ephemeral_range()
    first = 20000 if low > 21000 else 1024
    for _ in range(1000):
        port = random.randrange(first, low)
        if port in _handed_out:
            continue
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind((host, port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found on {host} in {first}-{low - 1}")

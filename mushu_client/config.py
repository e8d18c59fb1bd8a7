"""Endpoints and their defaults, each overridable by an environment variable.

Everything defaults to localhost so that zero configuration works on one
machine; on a lab network, set the variables (or pass endpoints as arguments)
to point the client at the hosts that run the services.
"""

from __future__ import annotations

import os

#: variable -> default. Services bind to these; clients connect to them.
DEFAULTS = {
    "MUSHU_AMP_DATA": "tcp://127.0.0.1:12345",
    "MUSHU_AMP_CONTROL": "tcp://127.0.0.1:12346",
    "MUSHU_STREAM": "eeg",
    # markers service: bus endpoints, its ZeroMQ ingress, and the TCP/UDP
    # ingress (libmushu's port 12344, on loopback unless configured).
    "MUSHU_MARKERS_DATA": "tcp://127.0.0.1:12347",
    "MUSHU_MARKERS_CONTROL": "tcp://127.0.0.1:12348",
    "MUSHU_MARKERS_INGRESS": "tcp://127.0.0.1:12349",
    "MUSHU_MARKERS_HOST": "127.0.0.1",
    "MUSHU_MARKERS_PORT": "12344",
    "MUSHU_MARKER_STREAM": "markers",
    # recorder: its control socket, and where relative recording names go
    # (on the recorder's host).
    "MUSHU_RECORDER_CONTROL": "tcp://127.0.0.1:12350",
    "MUSHU_DATA_DIR": "data",
}


def setting(name: str, value: str | None = None) -> str:
    """Return ``value`` if given, else the environment variable ``name``, else its default."""
    if value is not None:
        return value
    return os.environ.get(name) or DEFAULTS[name]

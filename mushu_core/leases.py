"""A recording's lease, as the client and the recorder agree on it: its terms, and who holds it.

The client renews a recording's lease every :data:`RENEW_S` seconds
(:mod:`mushu_client.lease`); the recorder ends a recording whose lease was
not renewed for its length (``docs/architecture.md``, "How a recording ends").
"""

from __future__ import annotations

import os
import socket
import sys

#: Seconds between renewals.
RENEW_S = 1.0
#: Seconds a recording outlives its client's last renewal, by default.
LEASE_S = 10.0
#: The shortest lease: two renewals.
MIN_LEASE_S = 2 * RENEW_S


def this_client() -> dict:
    """Who records, as ``record`` tells the recorder (``mushu record status`` shows it)."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] not in ("", "-c") else "python"
    return {"pid": os.getpid(), "host": socket.gethostname(), "program": program}


def describe_client(client) -> str:
    """Who started a recording, from the ``client`` map its ``record`` request carried."""
    if not isinstance(client, dict) or not client:
        return "a client that did not describe itself"
    text = f"pid {client.get('pid', '?')} on host {client.get('host', '?')}"
    return f"{text} ({client['program']})" if client.get("program") else text

"""The lease a client holds on its recording: renewed from a thread while the recording runs.

The recorder ends a recording whose lease is not renewed for its length (the
client stopped or died) at the last sample it has. A thread renews it, so a
client that does not call ``get_data()`` for a while (a script waiting for a
key press) keeps its recording; the process ending ends the renewals.
"""

from __future__ import annotations

import threading
import weakref

from mushu_core.control import ControlClient
from mushu_core.errors import ServiceUnavailable
from mushu_core.leases import RENEW_S


class RecordingLease:
    """Renew recording ``token`` on the recorder every :data:`RENEW_S` seconds, and watch how it stands.

    With or without a lease on the recorder's side, the renewal's reply says
    whether the recording still runs; :meth:`news` hands each change on once.

    Parameters
    ----------
    endpoint : str
        The recorder's control endpoint.
    token : str
        What ``record`` returned to name the recording.
    base : str
        The recording's base path, for messages.
    timeout : float
        Seconds to wait for each renewal's reply.
    keys : Keys, optional
        The client's CURVE keys.
    owner : object, optional
        Renew only while this object (the client's Amp) lives: one dropped
        without ``stop()`` or ``close()`` lets its recording's lease run out.
    """

    def __init__(self, endpoint: str, token: str, base: str, timeout: float = 2.0, keys=None, owner=None):
        self.token, self.base = token, base
        self._owner = None if owner is None else weakref.ref(owner)
        #: The last renewal's reply, or None before the first.
        self.reply: dict | None = None
        self._ctl = ControlClient(endpoint, timeout, "recorder", keys)  # this thread's socket alone
        self._problem: str | None = None
        self._told: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mushu lease {base}", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._done.wait(RENEW_S):
                if self._owner is not None and self._owner() is None:
                    return
                try:
                    self.reply = self._ctl.call("renew", token=self.token)
                    self._problem = None
                except ServiceUnavailable as exc:
                    self._problem = f"the recorder did not confirm it is still recording: {exc}"
                    continue
                except Exception as exc:  # the recorder no longer knows it (restarted after it ended)
                    self._problem = f"{type(exc).__name__}: {exc}"
                    return
                if self.reply.get("state") == "ended":
                    return
        finally:
            self._ctl.close()

    def news(self) -> str | None:
        """What went wrong with the recording since the last call (once per change), or None."""
        reply = self.reply or {}
        if self._problem:
            text = self._problem
        elif reply.get("state") == "ended":
            text = f"ended ({reply.get('end_reason')})" + (f": {reply['error']}" if reply.get("error") else "")
        elif reply.get("state") == "error":
            text = f"stopped: {reply.get('error')}"
        else:
            text = None
        if text == self._told:
            return None
        self._told = text
        return text

    def close(self):
        """Stop renewing (the recorder ends a leased recording once its lease runs out)."""
        self._done.set()
        self._thread.join(self._ctl.timeout + 1.0)


__all__ = ["RecordingLease"]

"""The client's side of a recording: asking the recorder to record, renewing the lease, finishing it.

:class:`RecordingControl` is what :meth:`mushu_client.Amp.start` with a
filename and :meth:`mushu_client.Amp.stop` use: ``check`` and ``record``
requests, the :class:`~mushu_client.lease.RecordingLease` that renews the
recording while it runs, and ``finish``. Problems it notices while the
recording runs are collected in :attr:`RecordingControl.warnings`; the
``Amp`` raises them from its public methods.
"""

from __future__ import annotations

import time

from mushu_core.control import ControlClient
from mushu_core.errors import RecordingError, RecordingWarning, ServiceUnavailable
from mushu_core.leases import LEASE_S, MIN_LEASE_S, RENEW_S, this_client

from .lease import RecordingLease


class RecordingControl:
    """The recording a client runs on the recorder, if any.

    Parameters
    ----------
    endpoint : str
        The recorder's control endpoint.
    timeout : float
        Seconds to wait for each reply (a finish waits longer).
    keys : Keys or None
        The client's CURVE keys.

    Attributes
    ----------
    recording : str or None
        Base path of the recording in progress (on the recorder's host).
    result : dict or None
        What the recorder reported when the last recording finished.
    warnings : list of RecordingWarning
        What to tell the user, since the owner last took them.
    """

    def __init__(self, endpoint: str, timeout: float, keys):
        self.ctl = ControlClient(endpoint, timeout, "recorder", keys)
        self.keys = keys
        self.recording: str | None = None
        self.result: dict | None = None
        self.warnings: list[RecordingWarning] = []
        self._lease: RecordingLease | None = None
        self._next_check = 0.0
        #: The first stream's recording of the session the next recording is a stream of (``Streams``).
        self.part_of: str | None = None

    def check(self, name: str, lease: float | None = LEASE_S):
        """Refuse ``name`` (it exists, its directory does not) and a bad lease before anything starts."""
        if lease is not None and (type(lease) not in (int, float) or not lease >= MIN_LEASE_S):
            raise ValueError(f"lease must be at least {MIN_LEASE_S:g} seconds (it is renewed every "
                             f"{RENEW_S:g} s), or None for a recording that outlives this client; not {lease!r}")
        try:
            self.ctl.call("check", name=name)
        except ServiceUnavailable as exc:
            raise ServiceUnavailable(f"cannot record to {name!r}: {exc}") from None

    def record(self, name: str, session: str, first_sample: int, markers_session: str | None,
               markers_next_seq: int, lease: float | None, owner):
        """Record amp ``session`` from ``first_sample`` on, with the markers from ``markers_next_seq`` on.

        ``owner`` (the Amp): the lease is renewed while it lives.
        """
        session_of = {} if self.part_of is None else {"part_of": self.part_of}
        reply = self.ctl.call("record", name=name, session=session, first_sample=first_sample,
                              markers_session=markers_session, markers_next_seq=markers_next_seq,
                              lease_s=lease, client=this_client(), **session_of)
        self.recording = reply["base"]
        self._lease = RecordingLease(self.ctl.endpoint, reply["token"], reply["base"], keys=self.keys, owner=owner)
        self._next_check = time.monotonic() + RENEW_S

    def finish(self, amp: dict):
        """Finish the recording at the amp's ``next_sample`` of its ``session`` (without them: at the
        last sample the recorder has).

        Raises
        ------
        RecordingError
            It failed, or it ended before (``ended_by`` in :attr:`result`).
        """
        recording, lease = self.recording, self._lease
        self.recording, self._lease = None, None
        lease.close()
        try:
            result = self.ctl.request("finish", timeout=60.0, end_sample=amp.get("next_sample"),
                                      session=amp.get("session"), token=lease.token)[0]
        except RuntimeError as exc:
            raise RecordingError(str(exc)) from None
        except ValueError as exc:  # the recorder restarted after the recording ended
            raise RecordingError(f"recording {recording!r} ended before it was finished: {exc}") from None
        except ServiceUnavailable as exc:
            raise RecordingError(f"recording {recording!r} was not confirmed finished: {exc}") from None
        self.result = result
        if result.get("ended_by", "client") != "client":
            raise RecordingError(f"recording {recording!r} ended at amp sample {result['end_sample']} before it "
                                 f"was finished: {result['end_reason']}"
                                 + (f"; {result['error']}" if result.get("error") else ""))

    def finish_for_start(self, amp: dict):
        """start() while recording: finish the recording at the amp's current sample, and say so."""
        recording = self.recording
        try:
            self.finish(amp)
        except RecordingError as exc:
            self.warnings.append(RecordingWarning(f"start() finished recording {recording!r} first: {exc}"))
            return
        self.warnings.append(RecordingWarning(
            f"start() finished recording {recording!r} first ({self.result['n_samples']} samples); "
            "call stop() before start() to end a recording yourself"))

    def look(self):
        """About once a renewal: note (once each) if the recording stopped, ended or cannot be reached."""
        if self.recording is None or time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + RENEW_S
        news = self._lease.news()
        if news:
            self.warnings.append(RecordingWarning(f"recording {self.recording!r}: {news}"))

    def close(self):
        """Stop renewing (the recorder ends a leased recording once its lease runs out)."""
        if self._lease is not None:
            self._lease.close()
        self.ctl.close()

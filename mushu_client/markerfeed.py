"""Following a markers service: its bus, its history, its clock and how far it has published.

:class:`MarkerFeed` is the markers half of the client (:class:`mushu_client.Amp`
is the data half). The client's one SUB socket subscribes to the feed's
:attr:`~MarkerFeed.topics` as well and hands it the marker stream's messages
(:meth:`~MarkerFeed.on_message`); the feed fetches from the service's history
whatever the bus did not deliver (markers dropped, or published by a
restarted service before this client's subscription took effect), and queues
every marker once, in order, in its :class:`~mushu_client.markers.MarkerMerger`
for placement on samples.
"""

from __future__ import annotations

import time
import warnings

from .clock import ClockOffset, now_ns
from .control import ControlClient
from .errors import GapWarning, ServiceUnavailable
from .history import history_markers
from .markers import MarkerMerger
from .protocol import Marker, MarkerStreamInfo, info_topic, marker_topic


class MarkerFeed:
    """The markers of one marker stream, as this client receives them.

    Parameters
    ----------
    endpoint, control : str
        The markers service's bus (PUB) and control endpoints.
    stream : str
        The marker stream's name.
    keys : str or None
        This client's CURVE key directory (None: no encryption).

    Attributes
    ----------
    topics : list of bytes
        The marker stream's topics, for the client's SUB socket.
    merger : MarkerMerger
        The markers received and not yet placed on samples.
    clock : ClockOffset
        The markers service's clock, relative to this host's.
    last_heard : float
        ``time.monotonic()`` of the last message from the service (0: never).
    watermark : int or None
        The service has published every marker stamped up to this time (its clock).
    promised_ns : int or None
        The time of the latest heartbeat: every marker stamped up to it (the
        service's clock) has been published, and this feed has it.
    joined_ns : int or None
        When :meth:`join` was last called (this host's clock); None before.
        Until then the feed only notes how far the service has published:
        markers before a start are never returned, so none is fetched.
    """

    def __init__(self, endpoint: str, control: str, stream: str, keys: str | None):
        self.endpoint, self.stream = endpoint, stream
        self.topics = [marker_topic(stream), info_topic(stream)]
        self.ctl = ControlClient(control, 0.5, "markers", keys)
        self.merger = MarkerMerger()
        self.clock = ClockOffset(lambda: self.ctl.request("time", timeout=0.2)[0])
        self.last_heard = 0.0
        self.watermark: int | None = None
        self.promised_ns: int | None = None
        self.joined_ns: int | None = None

    def heard_within(self, seconds: float) -> bool:
        """True if the service was heard from in the last ``seconds``."""
        return time.monotonic() - self.last_heard < seconds

    def join(self):
        """Skip the markers received so far (they precede a start) and follow the service from now on.

        The client hands the feed every waiting message first.
        """
        self.merger.drop_pending()
        self.joined_ns = now_ns()
        # A service this client has heard from answers in milliseconds; one it
        # has not may not be running, which must not delay start() much.
        timeout = 0.5 if self.last_heard > 0 else 0.1
        try:
            status = self.ctl.request("status", timeout=timeout)[0]
            self.last_heard = time.monotonic()
            self.clock.measure()
        except ServiceUnavailable:
            # Followed from where it was last heard; one never heard from, from its
            # first marker (markers stamped before the join are not returned).
            return
        self.merger.follow(status["session"], status["last_seq"] + 1)

    def on_message(self, msg: Marker | MarkerStreamInfo):
        """Take a message of the marker stream; fetch from the history what the bus missed before it."""
        self.last_heard = time.monotonic()
        merger = self.merger
        if self.joined_ns is None:  # before any start: where the service is, nothing to fetch
            merger.follow(msg.session, msg.seq + 1 if isinstance(msg, Marker) else msg.last_seq + 1)
        elif isinstance(msg, Marker):
            if merger.missing_before(msg):
                self._fill(msg.session, msg.seq)
            merger.add(msg)
        else:
            # Markers this client has not seen (dropped by the bus, or
            # published before a restarted service's subscribers joined).
            behind = msg.session != merger.session or msg.last_seq >= merger.next_seq
            if behind and msg.last_seq >= 0:
                self._fill(msg.session, msg.last_seq + 1)
            self.promised_ns = msg.t_ns
        if self.watermark is None or msg.t_ns > self.watermark:
            self.watermark = msg.t_ns

    def _fill(self, session: str, until: int):
        """Fetch markers of ``session`` up to seq ``until`` from the service's history."""
        merger = self.merger
        unknown = merger.session != session  # a session not followed so far, from its first marker
        if unknown:
            merger.follow(session, 0)
        for m in history_markers(self.ctl, self.stream, session, merger.next_seq, until):
            if merger.missing_before(m):  # older markers have left the history
                if unknown and self._before_join(m):
                    merger.follow(session, m.seq)  # and were stamped before the join: not this client's
                else:
                    self._lose(m.seq)
            unknown = False
            merger.add(m)
        self._lose(until)

    def _before_join(self, marker: Marker) -> bool:
        """True if ``marker`` was stamped before :meth:`join` (so were those before it in its session)."""
        if self.clock.offset_ns is None:
            try:
                self.clock.measure()
            except ServiceUnavailable:
                return False
        return marker.t_ns - self.clock.offset_ns < self.joined_ns

    def _lose(self, until: int):
        first = self.merger.next_seq
        lost = self.merger.skip_to(until)
        if lost:
            warnings.warn(GapWarning(f"{lost} markers lost from seq {first} of markers session "
                                     f"{self.merger.session}: no longer in the markers service's history"),
                          stacklevel=5)

    def close(self):
        self.ctl.close()

"""The client's markers service: its bus topics, its history, its clock and how far it has published.

:class:`MarkerFeed` is the markers half of the client (:class:`mushu_client.Amp`
is the data half). The client's one SUB socket subscribes to the feed's
:attr:`~MarkerFeed.topics` as well and hands it the marker stream's messages
(:meth:`~MarkerFeed.on_message`); the feed's
:class:`~mushu_core.follow.markers.MarkerFollower` fetches from the service's
history whatever the bus did not deliver (markers dropped, or published by a
restarted service before this client's subscription took effect), and every
marker goes once, in order, to the :class:`~mushu_core.follow.placement.MarkerPlacer`
that puts it on its sample.
"""

from __future__ import annotations

import time

from mushu_core.clock import ClockOffset, now_ns
from mushu_core.control import ControlClient
from mushu_core.errors import GapWarning, ServiceUnavailable
from mushu_core.fetch import history_markers
from mushu_core.follow.markers import MarkerFollower
from mushu_core.follow.placement import MarkerPlacer
from mushu_core.wire import Marker, MarkerStreamInfo, info_topic, marker_topic


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
    follower : MarkerFollower
        Where the stream is, every marker once, in order.
    placer : MarkerPlacer
        The markers received and not yet placed on samples.
    clock : ClockOffset
        The markers service's clock, relative to this host's.
    last_heard : float
        ``time.monotonic()`` of the last message from the service (0: never).
    watermark : int or None
        The service has published every marker stamped up to this time (its clock).
    joined_ns : int or None
        When :meth:`join` was last called (this host's clock); None before.
    warnings : list of GapWarning
        Markers lost since the client last looked (it raises them).
    """

    def __init__(self, endpoint: str, control: str, stream: str, keys: str | None):
        self.endpoint, self.stream = endpoint, stream
        self.topics = [marker_topic(stream), info_topic(stream)]
        self.ctl = ControlClient(control, 0.5, "markers", keys)
        self.placer = MarkerPlacer()
        self.follower = MarkerFollower(self, self._history, self._stamped_before_join)
        self.clock = ClockOffset(lambda: self.ctl.request("time", timeout=0.2)[0])
        self.last_heard = 0.0
        self.watermark: int | None = None
        self.joined_ns: int | None = None
        self.warnings: list[GapWarning] = []

    @property
    def promised_ns(self) -> int | None:
        """The latest heartbeat's time: every marker stamped up to it (the service's clock) is in."""
        return self.follower.promised_ns

    def heard_within(self, seconds: float) -> bool:
        """True if the service was heard from in the last ``seconds``."""
        return time.monotonic() - self.last_heard < seconds

    def join(self):
        """Skip the markers received so far (they precede a start) and follow the service from now on.

        The client hands the feed every waiting message first.
        """
        self.placer.drop_pending()
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
            self.follower.join()
            return
        self.follower.join(status["session"], status["last_seq"] + 1)

    def on_message(self, msg: Marker | MarkerStreamInfo):
        """Take a message of the marker stream."""
        self.last_heard = time.monotonic()
        self.follower.on_message(msg)
        if self.watermark is None or msg.t_ns > self.watermark:
            self.watermark = msg.t_ns

    # -- what the follower hands on ---------------------------------------------------

    def marker(self, m: Marker):
        self.placer.add(m)

    def markers_lost(self, session: str, first_seq: int, count: int):
        self.warnings.append(GapWarning(f"{count} markers lost from seq {first_seq} of markers session {session}: "
                                        "no longer in the markers service's history"))

    def _history(self, session: str, from_seq: int, until: int):
        return history_markers(self.ctl, self.stream, session, from_seq, until)

    def _stamped_before_join(self, marker: Marker) -> bool:
        if self.clock.offset_ns is None:
            try:
                self.clock.measure()
            except ServiceUnavailable:
                return False
        return marker.t_ns - self.clock.offset_ns < self.joined_ns

    def close(self):
        self.ctl.close()

"""Following a marker stream: every marker once, in order; what the bus did not deliver, from the history.

No sockets here. :class:`MarkerFollower` is written once for every consumer
(the client, the recorder, the LSL bridge): it takes the marker stream's
messages (markers and the heartbeats that say how far the markers service
has published), fetches the markers the bus dropped through a function it is
given, and hands each marker to its :class:`MarkerSink` once, in ``seq``
order, or reports it lost. Placing them on samples is
:mod:`mushu_core.follow.placement`'s.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

from mushu_core.wire import Marker, MarkerStreamInfo

MarkerHistory = Callable[[str, int, int], Iterable[Marker]]


class MarkerSink(Protocol):
    """What a :class:`MarkerFollower` tells its consumer."""

    def marker(self, marker: Marker) -> None:
        """The next marker of the stream (each one once, in order)."""

    def markers_lost(self, session: str, first_seq: int, count: int) -> None:
        """``count`` markers from ``first_seq`` of ``session`` are gone (not in the markers service's history)."""


class MarkerFollower:
    """One marker stream, followed from a marker on.

    Parameters
    ----------
    sink : MarkerSink
        Told each marker and each loss.
    history : callable
        ``history(session, from_seq, until)`` yields the markers of
        ``session`` the service's history holds with ``from_seq <= seq <
        until``, in order.
    stamped_before_join : callable, optional
        ``stamped_before_join(marker)``: True if ``marker`` was stamped
        before this consumer joined (:meth:`join`), so that the markers a
        session began with before it are no loss of this consumer's.

    Attributes
    ----------
    session : str or None
        The markers service's session followed.
    next_seq : int
        The ``seq`` expected next.
    joined : bool
        False until :meth:`join`: until then the follower only notes where
        the service is (markers before a start are never wanted, so none is
        fetched).
    promised_ns : int or None
        The latest heartbeat's time: every marker stamped up to it (the
        service's clock) is published, and this follower has it.
    lost : int
        Markers lost so far.
    """

    def __init__(self, sink: MarkerSink, history: MarkerHistory,
                 stamped_before_join: Callable[[Marker], bool] | None = None):
        self.sink, self.history, self.stamped_before_join = sink, history, stamped_before_join
        self.session: str | None = None
        self.next_seq = 0
        self.joined = False
        self.promised_ns: int | None = None
        self.lost = 0

    def follow(self, session: str | None, next_seq: int):
        """Follow ``session`` from ``next_seq`` on (where the service is now, or where a client began)."""
        self.session, self.next_seq = session, next_seq

    def join(self, session: str | None = None, next_seq: int | None = None):
        """From now on markers are wanted: every one after ``session``'s ``next_seq`` (if known)."""
        self.joined = True
        if session is not None and next_seq is not None:
            self.follow(session, next_seq)

    def on_message(self, msg: Marker | MarkerStreamInfo):
        """Take a message of the marker stream; fetch from the history what the bus missed before it."""
        if not self.joined:  # before a start: where the service is, nothing to fetch
            self.follow(msg.session, msg.seq + 1 if isinstance(msg, Marker) else msg.last_seq + 1)
            return
        if isinstance(msg, Marker):
            if msg.session != self.session or msg.seq > self.next_seq:
                self.fill(msg.session, msg.seq)
            self._add(msg)
            return
        # Markers not seen: dropped by the bus, or published by a restarted
        # service before this consumer's subscription took effect.
        if (msg.session != self.session or msg.last_seq >= self.next_seq) and msg.last_seq >= 0:
            self.fill(msg.session, msg.last_seq + 1)
        self.promised_ns = msg.t_ns

    def fill(self, session: str, until: int):
        """Fetch the markers of ``session`` up to seq ``until`` from the history; report what it no longer holds."""
        unknown = session != self.session  # a session not followed so far: from its first marker
        if unknown:
            self.follow(session, 0)
        for m in self.history(session, self.next_seq, until):
            if m.seq > self.next_seq:  # older markers have left the history
                if unknown and self.stamped_before_join is not None and self.stamped_before_join(m):
                    self.next_seq = m.seq  # and were stamped before the join: not this consumer's
                else:
                    self._lose(m.seq)
            unknown = False
            self._add(m)
        self._lose(until)

    def _add(self, m: Marker):
        if m.session != self.session:
            self.follow(m.session, 0)
        if m.seq < self.next_seq:
            return  # a repeat (the bus and the history both brought it)
        self.next_seq = m.seq + 1
        self.sink.marker(m)

    def _lose(self, until: int):
        count = until - self.next_seq
        if count > 0:
            self.lost += count
            self.sink.markers_lost(self.session, self.next_seq, count)
            self.next_seq = until

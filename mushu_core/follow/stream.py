"""Following an amp's block stream: its session, its next sample, duplicates, gaps, history fills, restarts.

No sockets here. :class:`BlockFollower` is the zguide's Clone agent for one
stream, written once for every consumer (the client, the recorder, the LSL
bridge): it takes the decoded blocks and stream infos a consumer receives,
live or from the history, fetches from the history what the bus did not
deliver through a function it is given, and tells its :class:`FollowerSink`
what happened, in order: new samples, samples lost for good, and a new
session (the amp restarted, or another client started it again). The
consumer only does what it is for with that: return it, write it, push it.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Protocol

from mushu_core.wire import Block, StreamInfo

from .timeline import Timeline, samples_not_acquired

#: No end: follow the history as far as it goes.
END = 2**63

History = Callable[[str, int, int], Iterable[Block]]


class FollowerSink(Protocol):
    """What a :class:`BlockFollower` tells its consumer."""

    def samples(self, block: Block, skip: int, stop: int) -> None:
        """Rows ``skip`` to ``stop`` of ``block`` are the stream's next samples (from ``first_sample + skip``)."""

    def lost(self, first_sample: int, count: int, reason: str) -> None:
        """``count`` samples from ``first_sample`` of the session followed are gone (not in the history)."""

    def new_session(self, old: str | None, block: Block, not_acquired: int) -> bool | None:
        """The stream goes on with ``block``'s session after ``not_acquired`` samples the amp did not acquire.

        Return True to follow the new session; False to stop following (the
        session followed ended, for this consumer: a recording of it); None
        for "not yet": nothing changes, and the consumer hands the follower
        ``block`` again later (the client first returns the old session's
        samples).
        """


class BlockFollower:
    """One amp stream, followed from a sample on: every sample once, in order, or reported lost.

    Parameters
    ----------
    sink : FollowerSink
        Told what happened.
    history : callable
        ``history(session, from_sample, until)`` yields the blocks of
        ``session`` the amp's history holds from the one with ``from_sample``
        to ``until``; it may stop early (what it did not give is lost).
    horizon_s : float
        Seconds of sample times kept (:attr:`timeline`), for markers that
        arrive that late.

    Attributes
    ----------
    session : str or None
        The session followed.
    next_sample : int
        The next sample expected.
    timeline : Timeline
        Acquisition times of the recent samples followed.
    behind : bool
        A fill from the history stopped at its deadline; :meth:`catch_up`
        goes on with it (live blocks meanwhile come from the history too).
    followed : bool
        False once the sink declined a new session: nothing is followed any more.
    duplicates, refetched, lost : int
        Samples received twice and dropped, taken from the history, and lost.
    """

    def __init__(self, sink: FollowerSink, history: History, horizon_s: float = 10.0):
        self.sink, self.history, self.horizon_s = sink, history, horizon_s
        self.session: str | None = None
        self.next_sample = 0
        self.timeline = Timeline()
        self.behind = False
        self.followed = True
        self.duplicates = self.refetched = self.lost = 0
        self._start_ns: int | None = None
        self._fetching: tuple[int, Iterator[Block]] | None = None  # (until, the history's blocks) across steps

    def begin(self, session: str | None, first_sample: int | None, start_ns: int | None = None):
        """Follow ``session`` from ``first_sample`` on (a start); ``start_ns`` is about when that sample was acquired.

        ``first_sample`` None: from its first block that comes (a running
        session joined where it is); ``session`` None: the next block's session.
        """
        self.session, self.next_sample = session, first_sample
        self.timeline.clear()
        self.behind, self.followed, self._fetching = False, True, None
        self._start_ns = start_ns

    def end_ns(self) -> int | None:
        """Acquisition time just after the newest sample followed (a restart's gap begins there)."""
        end = self.timeline.end_ns()
        return self._start_ns if end is None else end

    # -- what comes in ---------------------------------------------------------------

    def on_block(self, block: Block, deadline_ns: int | None = None):
        """Take a block, live or from the history; fetch what is missing before it.

        ``deadline_ns`` (``time.monotonic_ns()``): stop fetching then and
        leave the rest to :meth:`catch_up`; this block is then dropped (the
        history gives it later).
        """
        h = block.header
        if not self.followed:
            return
        if self.session is None:  # reading without a start: join where the stream is
            self.begin(h.session, h.first_sample)
        elif h.session == self.session and self.next_sample is None:
            self.next_sample = h.first_sample
        elif h.session != self.session:
            end = self.end_ns()
            if end is not None and h.t_ns <= end:
                return  # a block of an earlier session, still queued
            if not self._new_session(block):
                return
        if self.behind and not self.catch_up(h.first_sample, deadline_ns):
            return
        if h.first_sample > self.next_sample and not self.fill(h.first_sample, deadline_ns):
            return
        self._take(block)

    def on_info(self, info: StreamInfo, deadline_ns: int | None = None):
        """Take a stream info: one that reports samples not received means the bus dropped them."""
        if self.followed and info.session == self.session and info.session is not None \
                and self.next_sample is not None and info.next_sample > self.next_sample:
            self.fill(info.next_sample, deadline_ns)

    def fill(self, until: int, deadline_ns: int | None = None) -> bool:
        """Fetch the samples up to ``until`` from the history; report what it no longer holds.

        Returns False if it stopped at ``deadline_ns`` (:attr:`behind`); the
        next call goes on with the reply it was reading.
        """
        if self._fetching is None:
            self._fetching = (until, iter(self.history(self.session, self.next_sample, until)))
        return self._go_on(until, deadline_ns)

    def catch_up(self, until: int = END, deadline_ns: int | None = None) -> bool:
        """Go on with a fill that stopped at its deadline (and up to ``until``); True once it is done."""
        if not self.behind:
            return True
        return self.fill(until, deadline_ns)

    # -- inside ------------------------------------------------------------------------

    def _go_on(self, until: int, deadline_ns: int | None) -> bool:
        self.behind = False
        session = self.session
        while True:
            asked, blocks = self._fetching
            for block in blocks:
                if block.header.first_sample > self.next_sample:  # older samples have left the history
                    self._lose(block.header.first_sample, "no longer in the amp's history")
                self.refetched += self._take(block, until)
                if not self.followed or self.session != session or self.next_sample >= until:
                    break
                if deadline_ns is not None and time.monotonic_ns() > deadline_ns:
                    self.behind = True
                    return False
            else:
                if asked < until < END and self.next_sample < until:
                    # The reply held what an earlier step asked for; the stream has gone on since.
                    self._fetching = (until, iter(self.history(session, self.next_sample, until)))
                    continue
            break
        self._fetching = None
        if self.followed and self.session == session and self.next_sample < until < END:
            self._lose(until, "no longer in the amp's history")
        return True

    def _take(self, block: Block, until: int = END) -> int:
        """Hand on the part of ``block`` not taken yet (and before ``until``); the number of samples."""
        h = block.header
        skip = self.next_sample - h.first_sample
        stop = h.n_samples if until >= h.first_sample + h.n_samples else until - h.first_sample
        if skip < 0:
            raise ValueError(f"block starts at sample {h.first_sample}, after the expected {self.next_sample}")
        if skip >= stop:
            self.duplicates += h.n_samples if skip >= h.n_samples else 0
            return 0
        self.duplicates += skip
        self.timeline.add(h.first_sample + skip, h.time_of(skip), stop - skip, h.fs)
        self.next_sample = h.first_sample + stop
        if self.horizon_s:
            self.timeline.forget_before(self.next_sample - int(h.fs * self.horizon_s))
        self.sink.samples(block, skip, stop)  # with the timeline up to date: markers can be placed on them
        return stop - skip

    def _lose(self, until: int, reason: str):
        count = until - self.next_sample
        if count > 0:
            self.lost += count
            self.sink.lost(self.next_sample, count, reason)
            self.next_sample = until

    def _new_session(self, block: Block) -> bool:
        """``block`` is of a newer session: time the samples not acquired, ask the sink, follow it."""
        h = block.header
        first = block if h.first_sample == 0 else next(iter(self.history(h.session, 0, 1)), block)
        end = self.end_ns()
        not_acquired = samples_not_acquired(end, first.header) if end is not None else 0
        go_on = self.sink.new_session(self.session, block, not_acquired)
        if go_on is None:
            return False
        if not go_on:
            self.followed = False
            return False
        self.session, self.next_sample = h.session, 0
        self.behind, self._fetching = False, None
        self.timeline.begin_session()
        return True

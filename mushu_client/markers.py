"""Placing markers on samples (no sockets here).

A marker stamped at time ``T`` belongs to the first sample acquired at or
after ``T``: the first sample that can show the event's effect. Sample ``i``
of a block was acquired at ``t_ns + i * 1e9 / fs``. A marker is held back
until data whose acquisition times reach ``T`` has arrived, then returned
exactly once, normally with the ``get_data`` call whose data holds its
sample, as ``(ms, label)`` with ``ms = (sample - first returned sample) *
1000 / fs``, so ``0 <= ms < duration`` and ``int(ms * fs / 1000)`` is the
sample's row.

Decisions for the edge cases:

- A marker stamped more than one sample period before the first sample the
  client returns (before ``start()``, or before the client joined) belongs
  to no returned data: it is counted in ``before_start`` and not returned.
  One stamped within the period before the first sample lands on it.
- A marker that reaches the client after the data holding its sample was
  already returned (the marker's path, through the markers service, is
  longer than the data's) is returned with the next data, still on its
  exact sample: at a negative ms, counting back into the data returned
  before (libmushu's contract allows this: "a marker from the last block").
  It is counted in ``late``. A client that prefers non-negative offsets
  holds the newest samples back for a grace period (``marker_grace``), at
  the cost of that much data latency.
"""

from __future__ import annotations

import bisect
import math

from .protocol import Marker


class Timeline:
    """Acquisition times of a stream's recent samples, from the blocks' stamps.

    Each block's samples are timed from its own stamp, so the times of
    consecutive blocks may overlap where a read was delayed more than the
    next one. A marker's sample is decided in sample order (see
    :meth:`sample_at`), so that it depends only on the blocks up to that
    sample: every consumer puts it on the same sample, whenever its later
    blocks arrive.
    """

    def __init__(self):
        self._first: list[int] = []   # first_sample per block
        self._t: list[int] = []       # t_ns per block
        self._n: list[int] = []       # n_samples per block
        self._reach: list[int] = []   # the latest sample time of this block and every block before it
        self.period_ns = 1e6
        #: The session before this one (:meth:`begin_session`), or None.
        self.previous: Timeline | None = None

    def clear(self):
        self._first, self._t, self._n, self._reach = [], [], [], []
        self.previous = None

    def begin_session(self):
        """The stream goes on with a new session, numbered from sample 0 again.

        The ended session's times stay in :attr:`previous`, so that a marker
        of that session that arrives later is still put on its sample there.
        """
        if self._first:
            previous = Timeline()
            previous._first, previous._t, previous._n, previous._reach = self._first, self._t, self._n, self._reach
            previous.period_ns = self.period_ns
            self.previous = previous
        self._first, self._t, self._n, self._reach = [], [], [], []

    def in_previous(self, t_ns: int) -> bool:
        """True if ``t_ns`` is no later than the last sample of the previous session."""
        return self.previous is not None and t_ns <= self.previous._reach[-1]

    def add(self, first_sample: int, t_ns: int, n_samples: int, fs: float):
        """Record a block; blocks must be added in sample order, without overlap."""
        self.period_ns = 1e9 / fs
        self._first.append(first_sample)
        self._t.append(t_ns)
        self._n.append(n_samples)
        last = t_ns + round((n_samples - 1) * self.period_ns)
        self._reach.append(max(last, self._reach[-1]) if self._reach else last)

    def time_of(self, sample: int) -> int:
        """Acquisition time of a recorded ``sample``."""
        i = max(0, bisect.bisect_right(self._first, sample) - 1)
        return self._t[i] + round((sample - self._first[i]) * self.period_ns)

    @property
    def end_sample(self) -> int | None:
        """One past the last sample recorded."""
        return self._first[-1] + self._n[-1] if self._first else None

    def end_ns(self, recent: int = 64) -> int | None:
        """Acquisition time of the sample after the last one recorded; None if none is.

        A block is stamped when the driver's read returns, so every stamp is
        late by that read's delay and never early. The estimate takes the
        least-delayed stamp of the last ``recent`` blocks, not the last one.
        """
        if not self._first:
            return None
        k = max(0, len(self._first) - recent)
        origin = min(t - round(first * self.period_ns) for t, first in zip(self._t[k:], self._first[k:]))
        return origin + round(self.end_sample * self.period_ns)

    def sample_at(self, t_ns: int) -> int | None:
        """The first sample, in sample order, acquired at or after ``t_ns``; None if not yet known.

        The first block with a sample acquired at or after ``t_ns`` holds it:
        its first such sample. A time before every recorded block maps to the
        first recorded sample. The answer depends only on the blocks up to
        the one that holds it, never on blocks that arrive later.
        """
        i = bisect.bisect_left(self._reach, t_ns)
        if i == len(self._reach):
            return None  # after the last sample that has arrived
        offset = max(0, math.ceil((t_ns - self._t[i]) / self.period_ns))
        return self._first[i] + min(offset, self._n[i] - 1)

    def forget_before(self, sample: int):
        """Drop blocks that end at or before ``sample``, keeping the last one."""
        if len(self._first) < 256 or self._first[255] > sample:  # amortised: in batches of 256 or more
            return
        k = bisect.bisect_right(self._first, sample) - 1
        del self._first[:k], self._t[:k], self._n[:k], self._reach[:k]


def samples_not_acquired(end_ns: int, header) -> int:
    """Samples a restarted amp did not acquire: from ``end_ns`` to its new session's sample 0.

    ``end_ns`` is the time just after the old session's last sample
    (:meth:`Timeline.end_ns`); ``header`` is a block of the new session,
    best its first one (sample 0, from the history): every consumer that
    times the restart by that block counts the same gap.
    """
    period = 1e9 / header.fs
    t_zero = header.t_ns - round(header.first_sample * period)
    return max(0, round((t_zero - end_ns) / period))


class MarkerMerger:
    """Markers of one marker stream, sequenced and waiting for their samples.

    Attributes
    ----------
    session : str or None
        Session of the markers service being followed.
    next_seq : int
        Sequence number expected next.
    before_start, late : int
        Counters for the edge cases described in the module docstring.
    """

    def __init__(self):
        self.session: str | None = None
        self.next_seq = 0
        #: Samples returned so far; with ``_returned``, the runs ``[first_sample,
        #: n, position]`` they came in, it locates a late marker's sample.
        self.returned = 0
        self._returned: list[list[int]] = []
        self._previous_returned: list[list[int]] = []  # the same of the session before (begin_session)
        self.before_start = 0
        self.late = 0
        self.lost = 0
        #: Acquisition time of the first sample the client returns.
        self.start_ns: int | None = None
        self._pending: list[Marker] = []

    def follow(self, session: str, next_seq: int):
        """Follow ``session`` from ``next_seq`` on."""
        self.session, self.next_seq = session, next_seq

    def missing_before(self, marker: Marker) -> int:
        """Markers missing before ``marker`` in its session (0 if none or a duplicate)."""
        if marker.session != self.session:
            return marker.seq  # a new session: everything from its seq 0 is needed
        return max(0, marker.seq - self.next_seq)

    def add(self, marker: Marker) -> bool:
        """Queue ``marker`` if it is the next expected one (or later, after a gap)."""
        if marker.session != self.session:
            self.session, self.next_seq = marker.session, 0
        if marker.seq < self.next_seq:
            return False
        self.next_seq = marker.seq + 1
        self._pending.append(marker)
        return True

    def skip_to(self, seq: int) -> int:
        n = max(0, seq - self.next_seq)
        self.lost += n
        self.next_seq = max(self.next_seq, seq)
        return n

    def drop_pending(self):
        self._pending = []

    def place_samples(self, timeline: Timeline, end: int, offset_ns: int = 0) -> list[tuple[int, Marker, bool]]:
        """Take the pending markers whose sample is before ``end``: ``[(sample, marker, in_previous)]``.

        ``offset_ns`` is added to each marker's time to bring it onto the
        stream's clock. Markers stamped before the start are counted and
        dropped; markers whose sample has not arrived stay pending. A marker
        stamped no later than the previous session's last sample (an amp
        restart since: :meth:`Timeline.begin_session`) is placed on that
        session's sample, with ``in_previous`` True. The result is in sample
        order (the previous session's first), markers on one sample in
        ``seq`` order.
        """
        placed, keep = [], []
        for m in self._pending:
            t = m.t_ns + offset_ns
            if self.start_ns is None:
                keep.append(m)
                continue
            if t <= self.start_ns - timeline.period_ns:
                self.before_start += 1
                continue
            if timeline.in_previous(t):
                placed.append((timeline.previous.sample_at(t), m, True))
                continue
            sample = timeline.sample_at(t)
            if sample is None or sample >= end:
                keep.append(m)
            else:
                placed.append((sample, m, False))
        self._pending = keep
        placed.sort(key=lambda p: (not p[2], p[0], p[1].seq))
        return placed

    def place(self, timeline: Timeline, segments: list, fs: float, offset_ns: int = 0, ended: bool = False):
        """Return ``[(ms, label)]`` for the pending markers whose samples are being returned.

        ``segments`` are the ``[first_sample, n]`` runs of the returned rows
        (see :meth:`Assembler.take`). A marker whose sample falls in a lost
        gap lands on the next returned sample; one whose sample was returned
        before is counted ``late`` and comes at a negative ms, counting back
        into the rows returned before. With no rows, late markers come only
        once the data has ended (``ended``: every row has been returned).
        """
        if not segments and not (ended and self._pending and self._returned):
            return []
        rows = []
        if self._pending:
            returned_end = self._returned[-1][0] + self._returned[-1][1] if self._returned else None
            end = segments[-1][0] + segments[-1][1] if segments else returned_end
            placed = self.place_samples(timeline, end, offset_ns)
            first = segments[0][0] if segments else end
            late = [(self._position(sample, previous) - self.returned, m.label) for sample, m, previous in placed
                    if previous or sample < first]
            self.late += len(late)
            rows, _ = rows_of([(sample, m.label) for sample, m, previous in placed if not previous and sample >= first],
                              segments)
            rows = late + rows
        self._remember(segments)
        return [(row * 1000.0 / fs, label) for row, label in rows]

    def _remember(self, segments: list):
        runs = self._returned
        for first, n in segments:
            if runs and runs[-1][0] + runs[-1][1] == first:
                runs[-1][1] += n
            else:
                runs.append([first, n, self.returned])
            self.returned += n
        if len(runs) > 1024:  # runs only split at lost samples: this is over a thousand gaps
            del runs[:512]

    def begin_session(self):
        """The stream goes on with a new session, whose sample indexes start again at 0.

        Markers placed from now on fall in the new session's rows: a late one
        that belongs before its first row lands on that row, never on a row
        of the old session that has the same index.
        """
        self._previous_returned, self._returned = self._returned, []

    def _position(self, sample: int, previous: bool = False) -> int:
        """Position among the returned samples of ``sample`` (or of the first returned after it), of the
        current session or of the ``previous`` one."""
        runs = self._previous_returned if previous else self._returned
        for first, n, position in reversed(runs):
            if sample >= first:
                return position + min(sample - first, n)
        if runs:
            return runs[0][2]
        return self.returned

def rows_of(items: list, segments: list) -> tuple[list, list]:
    """Split ``[(sample, label)]`` into those returned with ``segments`` and the rest.

    Returns ``([(row, label)], [(sample, label) not yet returned])``; a
    sample in a lost gap between segments maps to the next segment's row.
    """
    if not segments:
        return [], list(items)
    starts = [first for first, _n in segments]
    rows = [0]
    for _first, n in segments:
        rows.append(rows[-1] + n)
    end = segments[-1][0] + segments[-1][1]
    out, keep = [], []
    for sample, label in items:
        if sample >= end:
            keep.append((sample, label))
            continue
        k = max(0, bisect.bisect_right(starts, sample) - 1)
        out.append((rows[k] + min(max(0, sample - starts[k]), segments[k][1]), label))
    return out, keep

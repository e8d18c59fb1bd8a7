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

from mushu_core.wire import Marker

from .timeline import Timeline


class MarkerPlacer:
    """Markers waiting for their samples, placed on them as the samples are returned.

    The markers come in order from a :class:`~mushu_core.follow.markers.MarkerFollower`.

    Attributes
    ----------
    start_ns : int or None
        Acquisition time of the first sample the consumer returns (or writes).
    before_start, late : int
        Counters for the edge cases described in the module docstring.
    returned : int
        Samples returned so far.
    """

    def __init__(self):
        #: Samples returned so far; with ``_returned``, the runs ``[first_sample,
        #: n, position]`` they came in, it locates a late marker's sample.
        self.returned = 0
        self._returned: list[list[int]] = []
        self._previous_returned: list[list[int]] = []  # the same of the session before (begin_session)
        self.before_start = 0
        self.late = 0
        self.start_ns: int | None = None
        # in time order (seq order among equal times): placement stops at the first marker whose
        # sample has not come, as every later one's sample is no earlier
        self._pending: list[Marker] = []

    def add(self, marker: Marker):
        """Queue ``marker`` for placement on its sample."""
        pending = self._pending
        if not pending or (pending[-1].t_ns, pending[-1].seq) <= (marker.t_ns, marker.seq):
            pending.append(marker)  # nearly always: markers come in order
        else:
            bisect.insort(pending, marker, key=lambda m: (m.t_ns, m.seq))

    @property
    def pending(self) -> int:
        """Markers waiting for their sample."""
        return len(self._pending)

    def drop_pending(self):
        self._pending = []

    def expire(self, gone) -> list[Marker]:
        """Take the pending markers for which ``gone(marker)`` is true (their sample is not coming)."""
        out = [m for m in self._pending if gone(m)]
        if out:
            self._pending = [m for m in self._pending if not gone(m)]
        return out

    def place_samples(self, timeline: Timeline, end: int, offset_ns: int = 0,
                      early: list | None = None) -> list[tuple[int, Marker, bool]]:
        """Take the pending markers whose sample is before ``end``: ``[(sample, marker, in_previous)]``.

        ``offset_ns`` is added to each marker's time to bring it onto the
        stream's clock. Markers stamped before the start are counted and
        dropped (appended to ``early`` if it is given); markers whose sample
        has not arrived stay pending. A marker
        stamped no later than the previous session's last sample (an amp
        restart since: :meth:`Timeline.begin_session`) is placed on that
        session's sample, with ``in_previous`` True. The result is in sample
        order (the previous session's first), markers on one sample in
        ``seq`` order.
        """
        if self.start_ns is None:
            return []
        placed, taken = [], 0
        for m in self._pending:
            t = m.t_ns + offset_ns
            if t <= self.start_ns - timeline.period_ns:
                self.before_start += 1
                if early is not None:
                    early.append(m)
            elif timeline.in_previous(t):
                placed.append((timeline.previous.sample_at(t), m, True))
            else:
                sample = timeline.sample_at(t)
                if sample is None or sample >= end:  # and so is every later marker's
                    break
                placed.append((sample, m, False))
            taken += 1
        del self._pending[:taken]
        placed.sort(key=lambda p: (not p[2], p[0], p[1].seq))
        return placed

    def place(self, timeline: Timeline, segments: list, fs: float, offset_ns: int = 0, ended: bool = False):
        """Return ``[(ms, label)]`` for the pending markers whose samples are being returned.

        ``segments`` are the ``[first_sample, n]`` runs of the returned rows
        (see :meth:`mushu_client.reader.PendingSamples.take`). A marker whose sample falls in a lost
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

"""A stream's sample clock: the acquisition time of every recent sample, from its blocks' stamps (no sockets).

:class:`Timeline` answers "when was sample k acquired" and "which is the
first sample acquired at or after time t", which places markers on samples
(:mod:`mushu_core.follow.placement`); :func:`samples_not_acquired` times the
gap of an amp restart.
"""

from __future__ import annotations

import bisect
import math

import numpy as np


class Timeline:
    """Acquisition times of a stream's recent samples, from the blocks' stamps.

    Each block's samples are timed from its own stamp, so the times of
    consecutive blocks may overlap (where the amp's clock line moved down
    between them, or an amp of another implementation stamps blocks by
    their reads). A marker's sample is decided in sample order (see
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

    def times_of(self, first: int, n: int) -> np.ndarray:
        """Acquisition times (int64 ns) of the recorded samples ``first .. first + n - 1``, as :meth:`time_of`."""
        out = np.empty(n, np.int64)
        i = max(0, bisect.bisect_right(self._first, first) - 1)
        sample, end = first, first + n
        while sample < end:
            stop = self._first[i + 1] if i + 1 < len(self._first) else end
            stop = min(end, max(stop, sample + 1))
            k = np.arange(sample - self._first[i], stop - self._first[i], dtype=np.float64)
            out[sample - first:stop - first] = self._t[i] + np.round(k * self.period_ns).astype(np.int64)
            sample, i = stop, i + 1
        return out

    @property
    def end_sample(self) -> int | None:
        """One past the last sample recorded."""
        return self._first[-1] + self._n[-1] if self._first else None

    def end_ns(self, recent: int = 64) -> int | None:
        """Acquisition time of the sample after the last one recorded; None if none is.

        A stamp can be late (an amp that stamps a block by its read) but
        not early: the estimate takes the earliest of the last ``recent``
        blocks' stamps, carried to the end on the nominal rate.
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

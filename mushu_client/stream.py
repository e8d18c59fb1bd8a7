"""Reassembling a block stream into contiguous samples (no sockets here).

:class:`Assembler` takes decoded blocks in any mix of live and history
blocks, keeps exactly the samples from its expected position on, once each
and in order, and tells its owner where samples are missing so they can be
fetched from the history (the zguide's Clone pattern: subscribe, fetch
history, drop what the history already covered).
"""

from __future__ import annotations

import numpy as np

from .protocol import Block


class Assembler:
    """Contiguous samples of one session, from ``next_sample`` on.

    Attributes
    ----------
    session : str or None
        The session being assembled.
    next_sample : int
        Absolute index of the next sample expected.
    duplicates : int
        Samples received twice and dropped.
    lost : int
        Samples declared lost with :meth:`skip_to`.
    """

    def __init__(self):
        self.session = None
        self.next_sample = 0
        self.next_seq = 0
        self.duplicates = 0
        self.lost = 0
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self._segments: list[list[int]] = []  # [first_sample, n] of each contiguous run pending

    def begin(self, session: str, first_sample: int):
        """Expect ``session`` from sample ``first_sample`` on; drop anything pending."""
        self.session = session
        self.next_sample = first_sample
        self._pending = []
        self._n_pending = 0
        self._segments = []

    def missing_before(self, block: Block) -> int:
        """Samples missing between what was assembled and ``block`` (0 if none)."""
        return max(0, block.header.first_sample - self.next_sample)

    def add(self, block: Block) -> int:
        """Append the part of ``block`` not yet assembled; return samples added.

        The block must not start after ``next_sample`` (fill or skip the gap
        first).
        """
        h = block.header
        skip = self.next_sample - h.first_sample
        if skip < 0:
            raise ValueError(f"block starts at sample {h.first_sample}, after the expected {self.next_sample}")
        if skip >= h.n_samples:
            self.duplicates += h.n_samples
            return 0
        self.duplicates += skip
        self._pending.append(block.data[skip:] if skip else block.data)
        self._n_pending += h.n_samples - skip
        if self._segments and sum(self._segments[-1]) == self.next_sample:
            self._segments[-1][1] += h.n_samples - skip
        else:
            self._segments.append([self.next_sample, h.n_samples - skip])
        self.next_sample = h.first_sample + h.n_samples
        self.next_seq = h.seq + 1
        return h.n_samples - skip

    def skip_to(self, sample: int) -> int:
        """Declare the samples before ``sample`` lost; return how many."""
        n = max(0, sample - self.next_sample)
        self.lost += n
        self.next_sample = max(self.next_sample, sample)
        return n

    @property
    def pending_samples(self) -> int:
        return self._n_pending

    @property
    def first_pending(self) -> int | None:
        """Index of the oldest sample assembled and not yet taken."""
        return self._segments[0][0] if self._segments else None

    def take(self, n_channels: int, until: int | None = None) -> tuple[np.ndarray, list]:
        """Return the assembled samples before ``until`` (all if None) and their segments.

        Returns
        -------
        data : ndarray
            One new (time, channels) array in native byte order.
        segments : list of [first_sample, n]
            The contiguous runs of sample indexes that make up ``data``'s
            rows, in order (more than one only where samples were lost).
        """
        pending, self._pending = self._pending, []
        segments, self._segments = self._segments, []
        self._n_pending = 0
        if not pending:
            return np.empty((0, n_channels), np.float32), segments
        out = np.concatenate(pending) if len(pending) > 1 else pending[0]
        if until is not None and until < self.next_sample:
            rows, taken = 0, []
            for first, n in segments:
                k = min(n, max(0, until - first))
                if k:
                    taken.append([first, k])
                if k < n:
                    self._segments.append([first + k, n - k])
                rows += k
            self._pending = [out[rows:]]
            self._n_pending = len(out) - rows
            out, segments = out[:rows], taken
        if out.base is not None or not out.flags.writeable:  # a view of a buffer the caller must not share
            out = out.copy()
        return (out if out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))), segments

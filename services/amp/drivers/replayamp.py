"""ReplayAmp: plays back recorded data and its markers, in real time or as fast as possible."""

from __future__ import annotations

import bisect
import logging
import math
import os
import time

import numpy as np

from mushu_core.arrays import decode_array, is_encoded
from mushu_core.config import setting
from mushu_core.recordings import load
from mushu_core.wire import MAX_LABEL_LENGTH

from .base import Amplifier, EndOfData

log = logging.getLogger("mushu.amp.replay")

#: With ``realtime=False``, at most this many bytes of whole blocks per
#: ``get_data`` call (at least one block): about 1 GB/s at the service's
#: default 1 ms loop, in blocks the size of the service's own.
FAST_BYTES_PER_CALL = 1 << 20
#: A marker within this fraction of a sample period after a sample lands on
#: it: absorbs the rounding of the 6-decimal ms in ``.marker`` files.
MARKER_TOLERANCE = 0.01


class ReplayAmp(Amplifier):
    """Replays data, from the arguments or from a recording, block by block.

    ``configure`` takes libmushu's arguments, or ``path`` of a recording
    instead of ``data``, ``marker``, ``channels`` and ``fs``:

    - ``realtime=True``: block ``k`` (blocks of ``blocksize`` samples, from
      0) is returned once ``(k + 1) * blocksize / fs`` seconds have passed
      since ``start()``, when a real amplifier would have its last sample;
      due times come from ``time.monotonic_ns`` and the start, so the
      replay does not drift. Blocks that fell due together are returned
      together.
    - ``realtime=False``: as fast as possible, whole blocks up to
      ``FAST_BYTES_PER_CALL`` per call. PUB/SUB has no back-pressure, so
      "as fast as the consumers take them" means: the consumers' queues
      and the amp's history (``--history-mb``, default 64 MiB) hold what a
      consumer has not yet taken, and the client refetches from the
      history. A replay larger than the history can lose its start for a
      consumer that falls that far behind (it gets a GapWarning); size
      the history for the replay, or use ``realtime=True``.

    After the last sample ``get_data`` raises :class:`EndOfData`; the amp
    service then goes to state ``'ended'`` and clients get
    :class:`mushu_client.EndOfData`. ``start()`` again replays from the
    beginning.

    Each marker lands on the first sample at or after its time (one before
    the data on the first sample); markers after the last sample are not
    replayed.
    """

    presets: list = []

    def __init__(self):
        self.fs = 100.0
        self.channels = ["Ch_0"]
        self.unit = "uV"
        self.realtime = True
        self.blocksize = 1
        self._data = np.empty((0, 1), np.float32)
        self._marker_samples: list[int] = []
        self._marker_labels: list[str] = []
        self._pos = 0
        self._t0 = 0

    def configure(self, data=None, marker=None, channels=None, fs=None, realtime=True,
                  blocksize_ms=None, blocksize_samples=None, path=None):
        """Set what to replay and how.

        Parameters
        ----------
        data : array-like, shape (n_samples, n_channels)
            The samples: an ndarray, a nested list, or the map
            :func:`mushu_core.arrays.encode_array` makes (the client sends
            numpy arrays that way). Replayed as float32.
        marker : list of (float, str)
            ``(ms relative to the first sample of data, label)``.
        channels : list of str
            One name per column of ``data`` (default ``Ch_0``, ``Ch_1``, ...).
        fs : float
            Sampling frequency in Hz.
        realtime : bool
            Pace the blocks by the clock (True) or replay as fast as
            possible (False); see the class description.
        blocksize_ms, blocksize_samples : float or int
            Size of one block; give exactly one of them. In ms it must be a
            whole number of samples.
        path : str
            A recording to replay instead of ``data``, ``marker``,
            ``channels`` and ``fs``: anything :func:`mushu_client.load`
            reads (``NAME`` or one of its files), on the amp service's host.
            A relative name is looked up under ``MUSHU_DATA_DIR`` (where the
            recorder puts relative names), then in the working directory.

        Raises
        ------
        TypeError
            Not exactly one of ``blocksize_ms`` and ``blocksize_samples``;
            ``path`` together with ``data``, ``marker``, ``channels`` or
            ``fs``, or neither ``path`` nor ``data`` and ``fs``.
        ValueError
            Bad data, markers, channels or fs; a block size that is not a
            positive whole number of samples; a recording that cannot be read.
        """
        if (blocksize_ms is None) == (blocksize_samples is None):
            raise TypeError("give exactly one of blocksize_ms and blocksize_samples")
        if not isinstance(realtime, bool):
            raise TypeError(f"realtime must be True or False, not {realtime!r}")
        if path is not None:
            if any(v is not None for v in (data, marker, channels, fs)):
                raise TypeError("path replaces data, marker, channels and fs: give either path or those")
            data, markers, channels, fs, unit = _read_recording(path)
        elif data is None or fs is None:
            raise TypeError("replayamp needs data and fs (and usually marker and channels), or path")
        else:
            data, markers, unit = _as_samples(data), marker, "uV"
        fs = _check_fs(fs)
        channels = _check_channels(channels, data.shape[1])
        blocksize = _blocksize(fs, blocksize_ms, blocksize_samples)
        samples, labels = _place_markers(markers, fs)
        beyond = sum(1 for s in samples if s >= len(data))
        if beyond:
            log.warning("%d markers lie after the last of %d samples and are not replayed", beyond, len(data))
        self._data, self.fs, self.channels, self.unit = data, fs, channels, unit
        self.realtime, self.blocksize = realtime, blocksize
        self._marker_samples, self._marker_labels = samples, labels

    def start(self):
        self._pos = 0
        self._t0 = time.monotonic_ns()

    def clock(self):
        """In real time, sample ``k`` is replayed ``k / fs`` after the start (its block when its last one is)."""
        return (self._t0, self.fs) if self.realtime else None

    def get_data(self):
        n = len(self._data)
        pos = self._pos
        if pos >= n:
            raise EndOfData()
        if self.realtime:
            elapsed = time.monotonic_ns() - self._t0
            if self.fs == int(self.fs):  # integer arithmetic: exact however long the replay
                blocks = elapsed * int(self.fs) // (self.blocksize * 1_000_000_000)
            else:
                blocks = int(elapsed * self.fs // (self.blocksize * 1e9))
            end = min(n, blocks * self.blocksize)
        else:
            row_bytes = self._data.strides[0] or 1
            blocks = max(1, FAST_BYTES_PER_CALL // (self.blocksize * row_bytes))
            end = min(n, pos + blocks * self.blocksize)
        if end <= pos:
            return self._data[:0], []
        self._pos = end
        return self._data[pos:end], self._markers_between(pos, end)

    def _markers_between(self, first: int, end: int) -> list:
        """Markers on samples ``first .. end-1``, as ms from sample ``first``.

        A marker on row ``j > 0`` is given half a sample period before the
        row (``(j - 0.5) * 1000 / fs``): it lands on row ``j`` whatever the
        rounding of ms to a sample on the way.
        """
        lo = bisect.bisect_left(self._marker_samples, first)
        hi = bisect.bisect_left(self._marker_samples, end)
        period_ms = 1000.0 / self.fs
        return [(max(0.0, (s - first - 0.5) * period_ms), label)
                for s, label in zip(self._marker_samples[lo:hi], self._marker_labels[lo:hi])]

    def get_channels(self):
        return list(self.channels)

    def get_sampling_frequency(self):
        return self.fs

    @staticmethod
    def is_available():
        return True


def _read_recording(path):
    """``(data, markers, channels, fs, unit)`` of the recording at ``path``."""
    if not isinstance(path, str) or not path:
        raise TypeError(f"path must be a recording name, not {path!r}")
    path = os.path.expanduser(path)
    candidates = [path] if os.path.isabs(path) else [os.path.join(setting("MUSHU_DATA_DIR"), path), path]
    errors = []
    for candidate in candidates:
        try:
            rec = load(candidate, mmap=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            errors.append(f"{os.path.abspath(candidate)}: {type(exc).__name__}: {exc}")
            continue
        units = rec.meta.get("mushu", {}).get("units") or ["uV"]
        # a plain ndarray view of the mapped file: the amp service takes it as a block without copying
        return np.asarray(rec.data), rec.markers, rec.channels, rec.fs, str(units[0])
    raise ValueError("cannot read recording " + "; ".join(errors))


def _as_samples(data) -> np.ndarray:
    if is_encoded(data):
        data = decode_array(data)
    try:
        a = np.asarray(data)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"data must be a 2-D array (samples, channels): {exc}") from None
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"data must be a 2-D array (samples, channels) with at least one channel, not shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"data must be numeric, not {a.dtype}")
    return np.ascontiguousarray(a, dtype="<f4")


def _check_fs(fs) -> float:
    if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not 0 < fs < math.inf:
        raise ValueError(f"fs must be a positive number of Hz, not {fs!r}")
    return fs


def _check_channels(channels, n: int) -> list:
    if channels is None:
        return [f"Ch_{i}" for i in range(n)]
    if not isinstance(channels, (list, tuple)) or not all(isinstance(c, str) for c in channels):
        raise ValueError(f"channels must be a list of channel names, not {channels!r:.80}")
    if len(channels) != n:
        raise ValueError(f"{len(channels)} channel names for data of {n} channels")
    return list(channels)


def _blocksize(fs: float, blocksize_ms, blocksize_samples) -> int:
    if blocksize_samples is not None:
        if isinstance(blocksize_samples, bool) or not isinstance(blocksize_samples, int) or blocksize_samples < 1:
            raise ValueError(f"blocksize_samples must be a positive integer, not {blocksize_samples!r}")
        return blocksize_samples
    if isinstance(blocksize_ms, bool) or not isinstance(blocksize_ms, (int, float)) or not blocksize_ms > 0:
        raise ValueError(f"blocksize_ms must be a positive number of ms, not {blocksize_ms!r}")
    n = fs * blocksize_ms / 1000
    if not math.isfinite(n) or round(n) < 1 or abs(n - round(n)) > 1e-9 * max(1.0, n):
        raise ValueError(f"blocksize_ms={blocksize_ms} at fs={fs} Hz is {n:g} samples, not a whole number")
    return int(round(n))


def _place_markers(markers, fs: float) -> tuple[list, list]:
    """Sample indexes and labels of ``[(ms, label), ...]``, in sample order."""
    if markers is None:
        return [], []
    if not isinstance(markers, (list, tuple)):
        raise ValueError(f"marker must be a list of (ms, label), not {markers!r:.80}")
    placed = []
    for m in markers:
        if (not isinstance(m, (list, tuple)) or len(m) != 2 or isinstance(m[0], bool)
                or not isinstance(m[0], (int, float)) or not math.isfinite(m[0]) or not isinstance(m[1], str)):
            raise ValueError(f"a marker must be (ms, label) with a finite ms and a string label, not {m!r:.80}")
        if len(m[1]) > MAX_LABEL_LENGTH:
            raise ValueError(f"marker label of {len(m[1])} characters is over the limit of {MAX_LABEL_LENGTH}")
        placed.append((max(0, math.ceil(m[0] * fs / 1000 - MARKER_TOLERANCE)), m[1]))
    placed.sort(key=lambda p: p[0])  # stable: markers on one sample keep their order
    return [s for s, _ in placed], [label for _, label in placed]

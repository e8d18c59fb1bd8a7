"""RampAmp: a deterministic ramp that makes any lost or reordered value visible."""

import numpy as np

from .base import SimulatedAmplifier, check_fs_channels

RAMP_MODULUS = 1 << 24  # float32 represents every integer below 2**24 exactly
#: Size of RampAmp's cached ramp, from which it builds every block.
BASE_BYTES = 1 << 20


def ramp(k0, n, channels):
    """Values of samples ``k0 .. k0+n-1``: ``float32((k * channels + c) mod 2**24)``."""
    start = k0 * channels
    flat = np.arange(start, start + n * channels, dtype=np.int64) & (RAMP_MODULUS - 1)
    return flat.astype(np.float32).reshape(n, channels)


class RampAmp(SimulatedAmplifier):
    """A deterministic driver for tests and benchmarks.

    Sample ``k``, channel ``c`` has the value ``(k * channels + c) mod 2**24``
    as float32, so a consumer can check every value it receives.
    """

    presets = [
        ["Ramp at 1kHz, 64 channels", {"fs": 1000, "channels": 64}],
        ["Ramp at 10kHz, 256 channels", {"fs": 10000, "channels": 256}],
    ]
    unit = "a.u."

    def __init__(self):
        self.fs = 1000
        self.channels = 64
        self._base = np.empty((0, 0), np.float32)

    def configure(self, fs, channels):
        check_fs_channels(fs, channels)
        self.fs = fs
        self.channels = channels

    def start(self):
        self._cached_base()  # before the clock starts: a read stays short, so its time stamp right
        super().start()

    def _cached_base(self):
        """ramp(0, rows) for the current channel count, about BASE_BYTES of it."""
        if self._base.shape[1] != self.channels:
            rows = max(1, min(BASE_BYTES // (4 * self.channels), RAMP_MODULUS // self.channels))
            self._base = ramp(0, rows, self.channels)
        return self._base

    def samples(self, k0, n):
        # Same values as ramp(), without its int64 temporaries: a cached
        # float32 ramp(0, rows) of about BASE_BYTES plus each piece's offset.
        # Every operand and sum is an integer below 2**24, which float32 holds
        # exactly. The cache never grows with n, so a long read costs the same
        # per value as a short one.
        channels = self.channels
        base = self._cached_base()
        if n <= base.shape[0]:
            start = (k0 * channels) & (RAMP_MODULUS - 1)
            if start + n * channels <= RAMP_MODULUS:  # the usual block: one operation
                return np.add(base[:n], start, dtype=np.float32)
        out = np.empty((n, channels), np.float32)
        rows = base.shape[0]
        for i in range(0, n, rows):
            self._fill(out[i:i + rows], k0 + i)
        return out

    def _fill(self, piece, k0):
        """Write samples ``k0 ..`` into ``piece``, at most as many values as the cache holds."""
        flat, base = piece.reshape(-1), self._base.reshape(-1)
        start = (k0 * self.channels) & (RAMP_MODULUS - 1)
        head = min(flat.size, RAMP_MODULUS - start)  # values before the wrap at 2**24
        np.add(base[:head], start, out=flat[:head])
        flat[head:] = base[:flat.size - head]  # after it: 0, 1, 2, ...

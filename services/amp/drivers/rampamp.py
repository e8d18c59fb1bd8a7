"""RampAmp: a deterministic ramp that makes any lost or reordered value visible."""

import numpy as np

from .base import SimulatedAmplifier, check_fs_channels

RAMP_MODULUS = 1 << 24  # float32 represents every integer below 2**24 exactly


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

    def samples(self, k0, n):
        # Same values as ramp(), without its int64 temporaries: a cached
        # float32 ramp(0, rows) plus the block's offset. Every operand and
        # sum is an integer below 2**24, which float32 holds exactly.
        channels = self.channels
        total = n * channels
        if total > RAMP_MODULUS:  # wraps more than once
            return ramp(k0, n, channels)
        base = self._base
        if base.shape[0] < n or base.shape[1] != channels:
            rows = min(max(2 * n, 16), RAMP_MODULUS // channels)  # room to grow, no wrap inside
            base = self._base = ramp(0, rows, channels)
        start = (k0 * channels) & (RAMP_MODULUS - 1)
        if start + total <= RAMP_MODULUS:
            return np.add(base[:n], start, dtype=np.float32)
        # wraps once: the values up to 2**24 - 1, then 0, 1, 2, ...
        head = RAMP_MODULUS - start
        out = np.empty((n, channels), np.float32)
        flat, base_flat = out.reshape(-1), base.reshape(-1)
        np.add(base_flat[:head], start, out=flat[:head])
        flat[head:] = base_flat[:total - head]
        return out

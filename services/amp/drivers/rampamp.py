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
        # Same values as ramp(), in one pass: ramp(0, n) plus the block's
        # offset, in float32. Every operand and sum is an integer below 2**24,
        # which float32 holds exactly; a block that wraps at 2**24 takes ramp().
        channels = self.channels
        start = (k0 * channels) & (RAMP_MODULUS - 1)
        if start + n * channels > RAMP_MODULUS:
            return ramp(k0, n, channels)
        base = self._base
        if base.shape[0] < n or base.shape[1] != channels:
            base = self._base = ramp(0, max(n, 16), channels)
        return np.add(base[:n], start, dtype=np.float32)

"""RandomAmp: uniform random integers 0..1023, as in libmushu."""

import numpy as np

from .base import SimulatedAmplifier, check_fs_channels


class RandomAmp(SimulatedAmplifier):
    """An amplifier that produces random data (libmushu's ``randomamp``)."""

    presets = [
        ["Random noise at 50Hz, 16Channels", {"fs": 50, "channels": 16}],
        ["Random noise at 1kHz, 128Channels", {"fs": 1000, "channels": 128}],
    ]
    unit = "a.u."

    def __init__(self):
        self.fs = 100
        self.channels = 17
        self._rng = np.random.default_rng()

    def configure(self, fs, channels):
        check_fs_channels(fs, channels)
        self.fs = fs
        self.channels = channels

    def samples(self, k0, n):
        return self._rng.integers(0, 1024, (n, self.channels)).astype(np.float32)

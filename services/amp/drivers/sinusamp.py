"""SinusAmp: the same sine on every channel, as in libmushu, without its drift."""

import numpy as np

from .base import SimulatedAmplifier, check_fs_channels


class SinusAmp(SimulatedAmplifier):
    """An amplifier that produces a sine of ``f`` Hz on every channel.

    Sample ``k`` is ``sin(2 pi f k / fs)``: exactly ``fs`` samples per second
    and phase continuous for as long as the run lasts (the phase is reduced
    modulo one period in float64 before the sine is taken).
    """

    presets = [
        ["Sine wave at 50Hz, 16Channels", {"f": 1, "fs": 10, "channels": 16}],
        ["Sine wave at 1kHz, 128Channels", {"f": 3, "fs": 100, "channels": 128}],
    ]

    def __init__(self):
        self.configure(**self.presets[0][1])

    def configure(self, f, fs, channels):
        check_fs_channels(fs, channels)
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < float("inf"):
            raise ValueError(f"f must be a non-negative frequency in Hz, not {f!r}")
        self.f = f
        self.fs = fs
        self.channels = channels

    def samples(self, k0, n):
        k = np.arange(k0, k0 + n, dtype=np.float64)
        # f*k is exact for integer f below 2**53 / k; the modulo keeps the
        # argument of sin small so hours of samples lose no phase.
        cycles = np.fmod(k * self.f, self.fs) / self.fs
        wave = np.sin(2 * np.pi * cycles).astype(np.float32)
        return np.repeat(wave[:, None], self.channels, axis=1)

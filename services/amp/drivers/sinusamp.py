"""SinusAmp: the same sine on every channel, as in libmushu, without its drift."""

import numpy as np

from .base import SimulatedAmplifier, _fs_problem


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
        problems = self.value_problems({"f": f, "fs": fs, "channels": channels})
        if problems:
            raise ValueError("; ".join(problems))
        self.f = f
        self.fs = fs
        self.channels = channels

    def value_problems(self, kwargs: dict) -> list[str]:
        problems = super().value_problems(kwargs)
        f, fs = kwargs.get("f"), kwargs.get("fs")
        if "f" in kwargs and (isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < float("inf")):
            problems.append(f"f must be a non-negative frequency in Hz, not {f!r}")
        elif "f" in kwargs and "fs" in kwargs and not _fs_problem(fs) and f >= fs / 2:
            problems.append(f"f={f:g} Hz is not below the Nyquist frequency fs/2 = {fs / 2:g} Hz, so the samples "
                            f"would show another frequency; choose f below {fs / 2:g} Hz or a higher fs")
        return problems

    def samples(self, k0, n):
        k = np.arange(k0, k0 + n, dtype=np.float64)
        # f*k is exact for integer f below 2**53 / k; the modulo keeps the
        # argument of sin small so hours of samples lose no phase.
        cycles = np.fmod(k * self.f, self.fs) / self.fs
        wave = np.sin(2 * np.pi * cycles).astype(np.float32)
        return np.repeat(wave[:, None], self.channels, axis=1)

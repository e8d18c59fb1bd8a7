"""The driver interface: libmushu's ``Amplifier`` and a clock for simulated amplifiers."""

from __future__ import annotations

import inspect
import time

import numpy as np

# A driver's get_data raises EndOfData when its source has no more samples (a
# replay reached its end): the amp service then stops with state 'ended', and
# clients raise the same error once they have read everything.
from mushu_core.errors import EndOfData  # noqa: F401


class Amplifier:
    """Base class of every amplifier driver, with libmushu's interface.

    A driver is one class. The amp service calls, in its own loop,
    ``configure(**kwargs)`` (with the user's arguments), ``start()``,
    ``get_data()`` as often as it can, and ``stop()``. ``configure`` raises
    ``ValueError`` or ``TypeError`` for settings the amplifier cannot do; the
    client re-raises them unchanged.

    Attributes
    ----------
    presets : list of [str, dict]
        Named configurations, ``[label, kwargs-for-configure]``.
    unit : str
        Physical unit of every channel's values.
    latency_ns : int
        The device's least delay, in ns, from acquiring a sample to the
        return of the read that delivers it (a fixed USB or filter delay),
        if known: the amp service subtracts it from the times it fits
        (:mod:`mushu_amp.timing`).
    read_ns : int or None
        Set by a driver in each ``get_data()`` that reads a device: the
        ``time.monotonic_ns()`` at which the device's read returned, taken
        before the samples are decoded, so that decoding does not count as
        latency. The amp service fits the sample times to it; None (the
        service sets it before each call) means the time ``get_data()``
        returned.
    """

    presets: list = []
    unit = "uV"
    latency_ns = 0
    read_ns: int | None = None

    def clock(self):
        """What the driver knows of when its samples were acquired; None if nothing.

        Asked after ``start()``. Returns ``(t0_ns, fs)`` if sample ``k`` of
        the run ``start()`` began was acquired at ``t0_ns + k * 1e9 / fs``
        on this host's ``time.monotonic_ns()`` clock; or a
        :class:`mushu_amp.timing.StampedClock` the driver gives each read's
        sample times to (``stamp()``) before ``get_data()`` returns them.
        A driver that returns None (a hardware device, whose clock only its
        reads reveal) has its sample times fitted from its reads
        (:class:`mushu_amp.timing.ClockModel`).
        """
        return None

    def configure(self, **kwargs):
        """Configure the amplifier (mode, sampling frequency, channels, ...)."""

    def start(self):
        """Make the amplifier ready for delivering data."""

    def stop(self):
        """Stop the amplifier."""

    def get_data(self):
        """Return ``(data, markers)``: the samples acquired since the last call.

        Returns
        -------
        data : ndarray, shape (n_samples, n_channels)
            Possibly zero samples. An array the driver never writes again
            (a new one, or a view of data that never changes): the service
            keeps it in its history and hands it to libzmq without a copy.
        markers : list of (float, str)
            Markers the device itself produced, in ms relative to the first
            sample of ``data``; a marker lands on the first sample at or after
            its time (it may lie beyond ``data``: it then waits for its sample).

        Raises
        ------
        EndOfData
            The source has no more samples.
        """
        raise NotImplementedError

    def get_channels(self):
        """Return the channel names, in the order of the data's columns."""
        raise NotImplementedError

    def get_sampling_frequency(self):
        """Return the sampling frequency in Hz."""
        raise NotImplementedError

    @staticmethod
    def is_available():
        """Return True if the amplifier can be used on this computer."""
        return False

    def value_problems(self, kwargs: dict) -> list[str]:
        """What is wrong with each of ``kwargs`` this driver can judge alone (for :func:`check_arguments`)."""
        return []


class SimulatedAmplifier(Amplifier):
    """An amplifier whose samples are due by the monotonic clock.

    Sample ``k`` of a run is due ``k / fs`` seconds after ``start()``;
    ``get_data`` returns every sample due by now and not yet returned, so the
    stream has exactly ``fs`` samples per second of the clock without drift.
    Subclasses set ``fs`` and ``channels`` and implement ``samples(k0, n)``.
    """

    fs: float = 100.0
    channels: int = 1

    def start(self):
        self._t0 = time.monotonic_ns()
        self._next = 0

    def clock(self):
        return self._t0, self.fs  # sample k is due, and made, k / fs after start()

    def get_data(self):
        elapsed = time.monotonic_ns() - self._t0
        fs = self.fs
        if fs == int(fs):  # integer arithmetic stays exact for any run length
            due = elapsed * int(fs) // 1_000_000_000 + 1
        else:
            due = int(elapsed * fs // 1_000_000_000) + 1
        n = due - self._next
        if n <= 0:
            return np.empty((0, self.channels), np.float32), []
        data = self.samples(self._next, n)
        self._next = due
        return data, []

    def samples(self, k0: int, n: int) -> np.ndarray:
        """Return samples ``k0 .. k0+n-1`` as a float32 (n, channels) array."""
        raise NotImplementedError

    def get_channels(self):
        return [f"Ch_{i}" for i in range(self.channels)]

    def get_sampling_frequency(self):
        return self.fs

    @staticmethod
    def is_available():
        return True

    def value_problems(self, kwargs: dict) -> list[str]:
        return [problem for name, check in (("fs", _fs_problem), ("channels", _channels_problem))
                if name in kwargs and (problem := check(kwargs[name]))]


def check_fs_channels(fs, channels):
    """Validate the ``fs`` and ``channels`` arguments shared by simulated drivers."""
    problem = _fs_problem(fs) or _channels_problem(channels)
    if problem:
        raise ValueError(problem)


def _fs_problem(fs) -> str | None:
    if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not fs > 0 or fs != fs or fs == float("inf"):
        return f"fs must be a positive number of Hz, not {fs!r}"
    return None


def _channels_problem(channels) -> str | None:
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 65535:
        return f"channels must be an integer from 1 to 65535, not {channels!r}"
    return None


def check_arguments(name: str, driver: Amplifier, kwargs: dict):
    """Refuse ``driver.configure(**kwargs)`` before the call if arguments are missing or unknown.

    The one message names every missing and unknown argument and whatever
    is wrong with the given ones (Python's own would name only the missing
    ones, and not the value that is wrong).

    Raises
    ------
    TypeError
        An argument is missing or unknown.
    """
    signature = inspect.signature(driver.configure)
    params = signature.parameters
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [] if takes_any else [k for k in kwargs if k not in params or params[k].kind not in named]
    missing = [n for n, p in params.items() if p.kind in named and p.default is p.empty and n not in kwargs]
    if not unknown and not missing:
        return
    parts = list(driver.value_problems({k: v for k, v in kwargs.items() if k not in unknown}))
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if unknown:
        parts.append(f"unknown {', '.join(map(repr, unknown))}")
    raise TypeError(f"{name}.configure{signature}: {'; '.join(parts)}")

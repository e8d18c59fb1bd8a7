"""Clocks: each host's monotonic clock, and estimating another host's offset.

Every mushu timestamp is integer nanoseconds of the monotonic clock of the
host that took it. :func:`now_ns` is that clock; a service started with an
artificial offset (``--clock-offset``, for tests that simulate another host)
adds it to every timestamp it takes.

:class:`ClockOffset` estimates how far a service's clock is from this
process's, the way NTP and the Lab Streaming Layer do: a probe sends the
service's ``time`` command at local time ``t0``, gets the service's clock
``t`` and returns at ``t1``; then ``offset = t - (t0 + t1) / 2`` with an error
of at most half the round trip ``t1 - t0``. Of several probes, the one with
the lowest round trip wins; rounds repeat so drift is followed.
"""

from __future__ import annotations

import time

_offset_ns = 0
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _boot_id() -> str | None:
    try:
        with open(_BOOT_ID) as f:
            return f.read().strip()
    except OSError:  # not Linux: always estimate
        return None


_boot = _boot_id()


def host_clock_id() -> str | None:
    """Names the clock :func:`now_ns` reads: equal ids, equal clocks.

    On Linux the monotonic clock is one per boot, shared by every process,
    container and network namespace, so the boot id names it; an artificial
    offset makes it another clock (as if on another host). None where
    unknown.
    """
    if _boot is None:
        return None
    return _boot if not _offset_ns else f"{_boot}{_offset_ns:+d}"


def set_offset(seconds: float):
    """Shift this process's timestamps by ``seconds`` (simulates another host's clock)."""
    global _offset_ns
    _offset_ns = int(round(seconds * 1e9))


def offset_ns() -> int:
    """The artificial offset set with :func:`set_offset`, in ns."""
    return _offset_ns


def now_ns() -> int:
    """This host's monotonic clock in integer nanoseconds (plus any artificial offset)."""
    return time.monotonic_ns() + _offset_ns


class WallToMonotonic:
    """Maps wall-clock stamps (a packet's kernel receive stamp) onto :func:`now_ns`, without a race.

    Reading the monotonic clock and then the wall clock to compute a stamp's
    age is wrong by however long the thread was preempted between the two
    reads. Here the offset between the clocks is measured as NTP measures a
    peer's: the wall clock read between two monotonic reads, the probe with
    the shortest span of several kept (its error is half that span, tens of
    ns), and measured again every ``refresh_s`` (the wall clock is slewed).

    Parameters
    ----------
    refresh_s : float
        Seconds a measurement is used for.
    probes : int
        Probes per measurement.
    """

    def __init__(self, refresh_s: float = 1.0, probes: int = 5):
        self.refresh_ns = int(refresh_s * 1e9)
        self.probes = probes
        self._offset = 0
        self._until = 0

    def offset(self) -> int:
        """Wall clock minus :func:`now_ns`, in ns."""
        mono = time.monotonic_ns
        if mono() >= self._until:
            best = None
            for _ in range(self.probes):
                m1 = mono()
                wall = time.time_ns()
                m2 = mono()
                if best is None or m2 - m1 < best[0]:
                    best = (m2 - m1, wall - (m1 + m2) // 2)
            self._offset = best[1] - _offset_ns
            self._until = mono() + self.refresh_ns
        return self._offset

    def to_monotonic(self, wall_ns: int, read_ns: int) -> int:
        """``wall_ns`` on the :func:`now_ns` clock; ``read_ns`` (its read's :func:`now_ns`) if that is impossible.

        A stamp after its read, or more than 10 s before it, means the wall
        clock was stepped: the read time is taken, and the offset measured
        again.
        """
        t = wall_ns - self.offset()
        if read_ns - 10_000_000_000 < t <= read_ns:
            return t
        self._until = 0
        return read_ns


class ClockOffset:
    """Continuous estimate of a remote clock's offset: ``remote = local + offset_ns``.

    A service whose clock is this process's own (same :func:`host_clock_id`)
    has offset 0 exactly, with no estimation error.

    Parameters
    ----------
    probe : callable
        Returns the service's ``time`` reply, ``{"t_ns": int, "clock": str
        or None}``; it is timed around the call.
    probes : int
        Probes per round; the lowest round trip of the round wins.
    interval : float
        Seconds between rounds.

    Attributes
    ----------
    offset_ns, rtt_ns : int or None
        The current estimate and the round trip it came from.
    history : list of dict
        ``{"t_ns", "offset_ns", "rtt_ns"}`` per finished round (local time),
        the raw material a recording stores.
    """

    def __init__(self, probe, probes: int = 8, interval: float = 2.0):
        self.probe = probe
        self.probes = probes
        self.interval_ns = int(interval * 1e9)
        self.offset_ns: int | None = None
        self.rtt_ns: int | None = None
        self.history: list[dict] = []
        self._round: list[tuple[int, int]] = []
        self._next_ns = 0

    def sample(self) -> tuple[int, int]:
        """One probe: ``(offset_ns, rtt_ns)``; ``(0, 0)`` for this host's own clock."""
        t0 = now_ns()
        reply = self.probe()
        t1 = now_ns()
        local = host_clock_id()
        if local is not None and reply.get("clock") == local:
            return 0, 0
        return reply["t_ns"] - (t0 + t1) // 2, t1 - t0

    def measure(self):
        """A whole round at once (at startup, before the first estimate is needed)."""
        self._round = [self.sample()]
        while len(self._round) < self.probes and self._round[-1][1]:
            self._round.append(self.sample())
        self._finish_round()

    def update(self) -> bool:
        """Take at most one probe if one is due (spread over calls so no call stalls).

        Returns True when a round finished and the estimate changed. A probe
        that fails (the service is away) is skipped.
        """
        if now_ns() < self._next_ns:
            return False
        try:
            self._round.append(self.sample())
        except Exception:  # the service is away: ask again later, not at every call
            self._next_ns = now_ns() + 5 * self.interval_ns
            self._round = []
            return False
        if len(self._round) < self.probes and self._round[-1][1]:
            return False
        self._finish_round()
        return True

    def _finish_round(self):
        offset, rtt = min(self._round, key=lambda p: p[1])
        self.offset_ns, self.rtt_ns = offset, rtt
        self.history.append({"t_ns": now_ns(), "offset_ns": offset, "rtt_ns": rtt})
        del self.history[:-1000]
        self._round = []
        self._next_ns = now_ns() + self.interval_ns

"""What the viewer computes, without sockets: page frames, signal quality, the measured rate, who may do what.

A page gets two kinds of WebSocket message (docs/viewer.md):

- binary: a data frame, the same shape as a bus block (a small metadata part plus a raw buffer)::

      uint32 LE   n, the length of the header (a multiple of 4)
      n bytes     header, UTF-8 JSON, padded with spaces: {"first_sample", "n", "channels", "fs", "t_ms", "envelope"}
      rest        float32 LE samples, C order (n, channels)

  ``t_ms`` is the acquisition time of the first row on the viewer host's wall clock (ms since the epoch,
  so a page on the same host can tell how old what it draws is). ``envelope``: the rows are the minimum
  and maximum of consecutive runs of samples, alternately (see :func:`envelope`), at rate ``fs``;
- text: JSON with a ``type`` (``hello``, ``stream``, ``markers``, ``status``, ``reply``, ``error``).
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import json
import secrets
import struct

import numpy as np

#: The most samples a second sent to a page per channel as they are; above, min/max envelopes of as much.
MAX_RAW_HZ = 5000.0
#: Seconds of frames kept for a page that opens (its longest time base).
RECENT_S = 30.0
#: Seconds of signal each quality verdict looks at.
QUALITY_S = 1.0
#: Roles of the page, as mushu's control-plane roles: a viewer looks, a controller also records and marks.
ROLES = ("viewer", "controller")

_LENGTH = struct.Struct("<I")


def envelope(data: np.ndarray, factor: int) -> np.ndarray:
    """Rows ``min, max`` of each run of ``factor`` samples of ``data`` (runs the length of ``data`` allows).

    Drawn as a trace at ``2 * fs / factor``, the envelope shows every spike the samples hold.
    """
    runs = len(data) // factor
    shaped = data[:runs * factor].reshape(runs, factor, data.shape[1])
    out = np.empty((2 * runs, data.shape[1]), dtype=np.float32)
    out[0::2] = shaped.min(axis=1)
    out[1::2] = shaped.max(axis=1)
    return out


def encode_frame(first_sample: int, fs: float, t_ms: float, data: np.ndarray, is_envelope: bool = False) -> bytes:
    """A binary data frame for a page (module docstring)."""
    rows = np.ascontiguousarray(data, dtype="<f4")
    header = json.dumps({"first_sample": int(first_sample), "n": int(rows.shape[0]), "channels": int(rows.shape[1]),
                         "fs": float(fs), "t_ms": float(t_ms), "envelope": bool(is_envelope)}).encode()
    header += b" " * (-len(header) % 4)  # the samples start on a 4-byte boundary (a Float32Array view needs it)
    return _LENGTH.pack(len(header)) + header + rows.tobytes()


def decode_frame(frame: bytes) -> tuple[dict, np.ndarray]:
    """The header and samples of a frame from :func:`encode_frame`."""
    (n,) = _LENGTH.unpack_from(frame)
    header = json.loads(frame[4:4 + n])
    data = np.frombuffer(frame, dtype="<f4", offset=4 + n).reshape(header["n"], header["channels"])
    return header, data


class Decimator:
    """Rows of a stream as a page gets them: as they are up to :data:`MAX_RAW_HZ`, else min/max envelopes.

    Keeps the samples of an unfinished run for the next call.
    """

    def __init__(self, fs: float, channels: int):
        self.fs_in = fs
        self.factor = 1 if fs <= MAX_RAW_HZ else int(np.ceil(2 * fs / MAX_RAW_HZ))
        self.fs = fs if self.factor == 1 else 2 * fs / self.factor
        self._held = np.empty((0, channels), dtype=np.float32)
        self._held_first = 0

    def feed(self, first_sample: int, data: np.ndarray) -> tuple[int, np.ndarray] | None:
        """``(index of the first row at the page's rate, rows)`` for ``data`` from ``first_sample``; None: held.

        Runs start at multiples of the factor; after a gap the samples before the next such start are not drawn.
        """
        if self.factor == 1:
            return first_sample, data
        k = self.factor
        if self._held_first + len(self._held) != first_sample:  # a gap (or the start): align the runs again
            skip = -first_sample % k
            data, first_sample = data[skip:], first_sample + skip
            self._held, self._held_first = data[:0], first_sample
        joined = np.concatenate([self._held, data]) if len(self._held) else data
        runs = len(joined) // k
        if not runs:
            self._held = joined
            return None
        first_row = 2 * (self._held_first // k)
        out = envelope(joined, k)
        self._held = joined[runs * k:]
        self._held_first += runs * k
        return first_row, out


class Recent:
    """The frames of the last :data:`RECENT_S` seconds, for a page that opens, and the last
    :data:`QUALITY_S` seconds of samples (a ring, written in place) for the quality verdicts."""

    def __init__(self, fs: float, channels: int, seconds: float = RECENT_S):
        self.frames: collections.deque = collections.deque()  # (first_sample, n, bytes)
        self.keep = max(1, int(seconds * fs))
        self.window = np.zeros((max(1, int(QUALITY_S * fs)), channels), dtype=np.float32)
        self.at = 0  # the window's next row to write: its oldest
        self.filled = 0

    def add(self, first_sample: int, frame: bytes, n: int, data: np.ndarray):
        self.frames.append((first_sample, n, frame))
        while self.frames and self.frames[0][0] + self.frames[0][1] <= first_sample + n - self.keep:
            self.frames.popleft()
        size = len(self.window)
        data = data[-size:]
        head = min(len(data), size - self.at)
        self.window[self.at:self.at + head] = data[:head]
        self.window[:len(data) - head] = data[head:]
        self.at = (self.at + len(data)) % size
        self.filled = min(size, self.filled + len(data))

    def quality(self, fs: float, line_hz: tuple = (50.0, 60.0)) -> list[str] | None:
        """Each channel's verdict over the last :data:`QUALITY_S` seconds; None before a full window."""
        if self.filled < len(self.window):
            return None
        return channel_quality(np.roll(self.window, -self.at, axis=0), fs, line_hz)


def channel_quality(window: np.ndarray, fs: float, line_hz: tuple = (50.0, 60.0)) -> list[str]:
    """``"flat"``, ``"railing"``, ``"line noise"`` or ``"ok"`` for each channel (column) of ``window``.

    - flat: the channel does not change (peak to peak below 1e-9 of its magnitude, or 0);
    - railing: at least 5 % of its samples repeat the one before on its minimum or maximum (a clipping
      input; a sinus touching its peak once a period is not);
    - line noise: more than half of its power (after the mean) lies within 1 Hz of a ``line_hz``.
    """
    x = np.asarray(window, dtype=np.float64)
    lo, hi = x.min(axis=0), x.max(axis=0)
    ptp = hi - lo
    scale = np.maximum(np.abs(hi), np.abs(lo))
    flat = ptp <= 1e-9 * scale
    held = x[1:] == x[:-1]  # a clipping input stays on its rail: runs of equal samples at the extreme
    at_rail = (held & ((x[1:] == lo) | (x[1:] == hi))).mean(axis=0) >= 0.05
    centred = x - x.mean(axis=0)
    power = np.abs(np.fft.rfft(centred, axis=0)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1.0 / fs)
    near = np.zeros(len(freqs), dtype=bool)
    for f in line_hz:
        near |= np.abs(freqs - f) <= 1.0
    total = power[1:].sum(axis=0)
    line = np.divide(power[near].sum(axis=0), total, out=np.zeros_like(total), where=total > 0) > 0.5
    return ["flat" if f else "railing" if r else "line noise" if n else "ok" for f, r, n in zip(flat, at_rail, line)]


class RateMeter:
    """The stream's measured rate: samples over acquisition time, across the last frames (``window_s``)."""

    def __init__(self, window_s: float = 5.0):
        self.window_ns = int(window_s * 1e9)
        self.points: collections.deque = collections.deque()  # (t_ns of a block's first sample, its sample index)

    def add(self, sample: int, t_ns: int):
        self.points.append((t_ns, sample))
        while len(self.points) > 2 and self.points[0][0] < t_ns - self.window_ns:
            self.points.popleft()

    def reset(self):
        self.points.clear()

    @property
    def hz(self) -> float | None:
        if len(self.points) < 2 or self.points[-1][0] == self.points[0][0]:
            return None
        (t0, s0), (t1, s1) = self.points[0], self.points[-1]
        return (s1 - s0) * 1e9 / (t1 - t0)


class Access:
    """Who may do what on the page: a token per role, given in the URL (``?token=``) or a cookie.

    On loopback a request without a token is a viewer's; beyond loopback (``bind`` is not a loopback
    address) one without a valid token is refused. A controller may also start and stop recordings and
    send markers.
    """

    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = tokens or {role: secrets.token_urlsafe(18) for role in ROLES}
        unknown = set(self.tokens) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown viewer role {sorted(unknown)}; roles are {', '.join(ROLES)}")

    def role(self, token: str | None, loopback_peer: bool) -> str | None:
        """The role ``token`` gives (compared in constant time); without one, a loopback peer's role; else None."""
        if token:
            for role, known in self.tokens.items():
                if hmac.compare_digest(token.encode(), known.encode()):
                    return role
            return None
        return "viewer" if loopback_peer else None

    @staticmethod
    def may(role: str | None, action: str) -> bool:
        """Whether ``role`` may do ``action`` (``look``, ``record``, ``marker``)."""
        if role == "controller":
            return True
        return role == "viewer" and action == "look"


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address, or ``localhost``) is a loopback address."""
    if host in ("localhost", "::1"):
        return True
    try:
        return ipaddress.ip_address((host or "").split("%")[0]).is_loopback
    except ValueError:
        return False

"""The g.USBamp's filter messages: Butterworth band-pass and notch coefficients.

The amplifier filters each channel itself with an IIR filter whose
coefficients the host sends (requests 0xc6 band-pass and 0xc7 notch), as
a 144-byte message of 18 little-endian doubles: the numerator ``b`` padded
with zeros to 9 values, then the denominator ``a`` likewise. The message
with ``b = [1]`` and everything else zero is the "null filter": no
filtering.

A filter is named ``(hp, lp, fs, order)``: band edges in Hz, the sampling
frequency, and the filter order. libmushu designed it as
``scipy.signal.iirfilter(order / 2, [hp, lp] / (fs / 2), ftype='butter')``
(band-pass, or band-stop for the notch); :func:`butterworth` computes the
same filter with numpy alone. The device runs the coefficients in
transfer-function form, where a high order at a low relative frequency is
numerically unsound (the poles crowd against z = 1). So only the
combinations below whose coefficients are sound are offered: stable, and
within 0.1 dB of -3 dB at both band edges (band-pass) or at least 20 dB
down at the centre (notch). :func:`choices` lists them for a sampling
frequency.
"""

from __future__ import annotations

import functools
import struct

import numpy as np

#: Candidate band-pass edges (Hz) and orders; lp must also be at most 0.4 * fs.
BANDPASS_HP = (0.01, 0.1, 0.5, 1, 2, 5)
BANDPASS_LP = (10, 15, 30, 60, 100, 200, 500, 1000, 2000, 5000, 10000)
BANDPASS_ORDERS = (2, 4, 8)
#: Candidate notch bands (Hz) around 50 and 60 Hz mains, and orders.
NOTCH_BANDS = ((48, 52), (58, 62))
NOTCH_ORDERS = (2, 4)

#: 18 doubles: up to 9 numerator and 9 denominator coefficients (order <= 8).
MESSAGE_BYTES = 144
NULL_FILTER = struct.pack("<18d", 1.0, *[0.0] * 17)


def butterworth(order: int, hp: float, lp: float, fs: float, stop: bool = False):
    """Digital Butterworth band-pass (band-stop if ``stop``) ``(b, a)`` of even ``order``.

    The analog prototype's poles are moved to the band by the low-pass to
    band-pass (band-stop) transformation and mapped to z by the bilinear
    transform with pre-warped edges, as scipy's ``iirfilter`` does.
    """
    n = order // 2
    proto = -np.exp(1j * np.pi * np.arange(-n + 1, n, 2) / (2 * n))  # left half-plane unit poles
    lo, hi = 4 * np.tan(np.pi * np.array([hp, lp], float) / fs)     # pre-warped, for a "sampling rate" of 2
    width, centre = hi - lo, np.sqrt(lo * hi)
    shifted = (width / 2) / proto if stop else proto * (width / 2)
    offset = np.sqrt(shifted ** 2 - centre ** 2)
    poles = np.concatenate([shifted + offset, shifted - offset])
    if stop:
        zeros = np.concatenate([np.full(n, 1j * centre), np.full(n, -1j * centre)])
        gain = np.real(1 / np.prod(-proto))
    else:
        zeros = np.zeros(n)
        gain = width ** n
    gain *= np.real(np.prod(4 - zeros) / np.prod(4 - poles))
    zd = np.concatenate([(4 + zeros) / (4 - zeros), -np.ones(len(poles) - len(zeros))])
    pd = (4 + poles) / (4 - poles)
    return gain * np.real(np.poly(zd)), np.real(np.poly(pd))


def response_db(b, a, f: float, fs: float) -> float:
    """Gain in dB of the filter ``(b, a)`` at ``f`` Hz."""
    z = np.exp(-2j * np.pi * f / fs)
    return 20 * np.log10(abs(np.polyval(b[::-1], z) / np.polyval(a[::-1], z)))


def _sound(b, a, fs: float, edges=(), centre=None) -> bool:
    if np.max(np.abs(np.roots(a))) >= 1:
        return False
    if centre is not None:
        return response_db(b, a, centre, fs) <= -20
    return all(abs(response_db(b, a, f, fs) + 3.0103) < 0.1 for f in edges)


@functools.lru_cache(maxsize=None)
def choices(fs: int) -> dict[str, tuple]:
    """The filters offered at ``fs``: ``{"bandpass": ((hp, lp, order), ...), "notch": (...)}``."""
    bandpass = tuple(
        (hp, lp, order)
        for order in BANDPASS_ORDERS for hp in BANDPASS_HP for lp in BANDPASS_LP
        if lp <= 0.4 * fs and hp < lp / 2 and _sound(*butterworth(order, hp, lp, fs), fs, edges=(hp, lp)))
    notch = tuple(
        (lo, hi, order)
        for order in NOTCH_ORDERS for lo, hi in NOTCH_BANDS
        if hi < 0.45 * fs and _sound(*butterworth(order, lo, hi, fs, stop=True), fs, centre=np.sqrt(lo * hi)))
    return {"bandpass": bandpass, "notch": notch}


def message(kind: str, hp: float, lp: float, fs: int, order: int) -> bytes:
    """The 144-byte message for filter ``(hp, lp, fs, order)`` of ``kind`` "bandpass" or "notch"."""
    b, a = butterworth(order, hp, lp, fs, stop=(kind == "notch"))
    padded = np.zeros(18)
    padded[:len(b)], padded[9:9 + len(a)] = b, a
    return struct.pack("<18d", *padded)

"""Convert a recording to EDF+, BDF+ (edfio) or FIF (MNE-Python).

The heavy libraries are imported inside the functions, so the client
package itself needs only numpy. Samples are read from the memory-mapped
``NAME.eeg`` in chunks of about :data:`~mushu_cli.writing.CHUNK_BYTES`. The start time (UTC,
from the meta's ``mushu.start_wall``) becomes the file's start date/time.

Markers become annotations of no duration at their sample. EDF+/BDF+ have
no escapes, so the text is :func:`~mushu_core.recordings.plain_label`
(newlines and other control characters as ``\\n``, ``\\xHH``...). FIF gets
the label itself; mne writes FIF strings as Latin-1 with other characters
as ``&#N;`` and (mne 1.13) turns those back into characters on reading
only if one of them has six digits. Lost samples (NaN) are spanned by an
annotation ``BAD_mushu_gap`` of their duration, so mne leaves them out of
epochs; FIF keeps them as NaN, EDF/BDF write them as the digital minimum,
which no real sample uses.

EDF/BDF scaling, per channel: the finite samples' ``[min, max]`` is mapped
onto digital ``[dmin + 1, dmax]`` (``dmin``, ``dmax`` the format's full
16- or 24-bit range), with the header's physical range the one that puts
``min - step`` at ``dmin``, ``step = (max - min) / (dmax - dmin - 1)``;
edfio rounds that range outwards to 8 characters, and the digital values
are computed with the rounded header, so a sample is off by at most half
the header's step. A constant channel is given a range of 1. The unit is
written as recorded (``µV`` as ``uV``, which mne reads as volts; others,
such as ``a.u.``, mne reads unscaled). EDF needs whole data records (1 s
for a whole-numbered fs), so the last one is padded with gap values and
spanned by ``BAD_mushu_padding``.

FIF: channels in ``V``, ``mV``, ``uV``/``µV`` or ``nV`` are ``eeg`` (mne
returns volts), others ``misc`` with no unit and no scaling; the samples
are stored as the float32 values recorded.

Memory: FIF is written by mne chunk by chunk from the mapped file, so it
needs little beyond the pages of ``NAME.eeg`` the system maps in. edfio
writes whole files only: it holds the digital samples of every channel
(2 bytes a value for EDF, 4 for BDF) and one more copy of the file while
writing, so EDF needs about the size of ``NAME.eeg`` in memory and BDF
about 1.75 times; the float conversion itself goes in chunks.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import warnings
from fractions import Fraction

import numpy as np

from mushu_core.recordings import Recording, base_name, load, plain_label, stream_recordings

from .writing import CHUNK_BYTES, GAP_ANNOTATION, chunks, progress_bar

FORMATS = ("edf", "bdf", "fif", "xdf", "bids")
PADDING_ANNOTATION = "BAD_mushu_padding"
#: Volt per unit, for the units mne treats as voltages.
VOLTS = {"V": 1.0, "mV": 1e-3, "uV": 1e-6, "µV": 1e-6, "nV": 1e-9}


def default_output(name: str, fmt: str) -> str:
    """``NAME.edf``, ``NAME.bdf``, ``NAME_raw.fif`` (mne's naming), ``NAME.xdf`` or the BIDS root ``NAME_bids``."""
    base = base_name(os.fspath(name))
    return base + {"fif": "_raw.fif", "bids": "_bids"}.get(fmt, "." + fmt)


def convert(name: str, fmt: str, out: str | None = None, progress: bool = True, **bids) -> str:
    """Convert recording ``name`` to ``fmt`` and return the output path.

    Parameters
    ----------
    name : str
        The recording (``NAME`` or one of its files).
    fmt : {"edf", "bdf", "fif", "xdf", "bids"}
    out : str, optional
        Output file (default :func:`default_output`); for ``bids`` the
        dataset's root directory, which may hold other recordings.
    progress : bool
        Show a tqdm progress bar on stderr when the conversion takes longer
        than a second.
    **bids
        For ``bids``: ``subject``, ``session``, ``task``, ``run``,
        ``line_freq`` (:func:`mushu_cli.bids.write_bids`).

    Raises
    ------
    FileNotFoundError
        The recording does not exist.
    FileExistsError
        The output file exists (it is never overwritten).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    base = base_name(os.fspath(name))
    for ext in (".meta", ".eeg"):
        if not os.path.exists(base + ext):
            raise FileNotFoundError(f"no recording {base!r}: {base + ext} does not exist")
    out = os.fspath(out) if out is not None else default_output(base, fmt)
    rec = load(base, mmap=True)
    if fmt == "bids":  # a dataset grows by recording: its root may exist, the recording's file may not
        from mushu_cli.bids import write_bids
        return write_bids(rec, base, out, **bids)
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists already; remove it or choose another output file")
    try:
        if fmt == "xdf":
            from mushu_cli.xdf import write_xdf
            others = list(stream_recordings(base).values())[1:]  # NAME-STREAM: its further streams
            write_xdf([rec, *(load(b, mmap=True) for b in others)], out, progress)
        elif fmt == "fif":
            write_fif(rec, out, progress)
        else:
            write_edf(rec, out, bdf=fmt == "bdf", progress=progress)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(out)
        raise
    return out


# -- shared -----------------------------------------------------------------


def _start(rec: Recording) -> datetime.datetime | None:
    wall = rec.meta.get("mushu", {}).get("start_wall")
    return None if wall is None else datetime.datetime.fromtimestamp(wall, datetime.timezone.utc)


def _annotations(rec: Recording, label=lambda s: s) -> list:
    """``(onset s, duration s or None, text)`` of the markers and gaps, by onset."""
    fs = rec.fs
    anns = [(sample / fs, None, label(text)) for sample, text in rec.marker_samples()]
    anns += [(g["sample"] / fs, g["count"] / fs, GAP_ANNOTATION) for g in rec.gaps]
    return sorted(anns, key=lambda a: a[0])


# -- EDF+ / BDF+ --------------------------------------------------------------


def _header_text(text: str, length: int, what: str) -> str:
    """``text`` as printable ASCII of at most ``length`` characters (EDF headers)."""
    fitted = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text)[:length]
    if fitted != text:
        warnings.warn(f"{what} {text!r} written as {fitted!r} (EDF allows {length} ASCII characters)", stacklevel=3)
    return fitted


def _finite_range(data: np.ndarray, bar) -> tuple[np.ndarray, np.ndarray]:
    lo = np.full(data.shape[1], np.inf)
    hi = np.full(data.shape[1], -np.inf)
    for a, b in chunks(len(data), data.shape[1]):
        x = np.asarray(data[a:b], np.float64)
        finite = np.isfinite(x)
        lo = np.minimum(lo, np.where(finite, x, np.inf).min(axis=0))
        hi = np.maximum(hi, np.where(finite, x, -np.inf).max(axis=0))
        bar.update(b - a)
    empty = ~np.isfinite(lo)
    lo[empty], hi[empty] = 0.0, 1.0
    hi[hi == lo] += 1.0
    return lo, hi


def _record_samples(fs: float) -> tuple[float, int]:
    """Data record duration (s) and samples per record: 1 s, or what makes whole samples."""
    duration = Fraction(fs).limit_denominator(99_999_999).denominator
    return float(duration), round(fs * duration)


def write_edf(rec: Recording, out: str, bdf: bool = False, progress: bool = True):
    """Write ``rec`` as EDF+C (16 bit) or BDF+C (24 bit) with edfio; see the module docstring."""
    import edfio

    signal_class = edfio.BdfSignal if bdf else edfio.EdfSignal
    dtype = np.int32 if bdf else np.int16
    dmin, dmax = (-(1 << 23), (1 << 23) - 1) if bdf else (-(1 << 15), (1 << 15) - 1)
    data, fs = rec.data, rec.fs
    n, n_ch = data.shape
    record_s, per_record = _record_samples(fs)
    n_records = max(1, math.ceil(n / per_record))
    units = rec.meta.get("mushu", {}).get("units") or ["uV"] * n_ch
    with progress_bar(2 * n, "EDF" if not bdf else "BDF", progress) as bar:
        lo, hi = _finite_range(data, bar)
        step = (hi - lo) / (dmax - dmin - 1)
        signals, gains, offsets = [], [], []
        for c in range(n_ch):
            kw = {"label": _header_text(rec.channels[c], 16, "channel name"),
                  "physical_dimension": _header_text("uV" if units[c] == "µV" else units[c], 8, "unit"),
                  "physical_range": (float(lo[c] - step[c]), float(hi[c])), "digital_range": (dmin, dmax)}
            probe = signal_class.from_digital(np.array([dmin], dtype), fs, **kw)  # the header as edfio rounds it
            gain = (probe.physical_max - probe.physical_min) / (dmax - dmin)
            signals.append(kw)
            gains.append(gain)
            offsets.append(probe.physical_max / gain - dmax)
        gains, offsets = np.array(gains), np.array(offsets)
        digital = np.full((n_ch, n_records * per_record), dmin, dtype)
        for a, b in chunks(n, n_ch):
            x = np.asarray(data[a:b], np.float64)
            d = np.clip(np.round(x / gains - offsets), dmin + 1, dmax)
            d[~np.isfinite(x)] = dmin
            digital[:, a:b] = d.T
            bar.update(b - a)
    signals = [signal_class.from_digital(digital[c], fs, **kw) for c, kw in enumerate(signals)]
    anns = [edfio.EdfAnnotation(onset, duration, text) for onset, duration, text in _annotations(rec, plain_label)]
    if n_records * per_record > n:
        anns.append(edfio.EdfAnnotation(n / fs, (n_records * per_record - n) / fs, PADDING_ANNOTATION))
    start = _start(rec)
    header = {}
    if start is not None:
        header = {"starttime": start.time(), "recording": edfio.Recording(startdate=start.date())}
    cls = edfio.Bdf if bdf else edfio.Edf
    cls(signals, data_record_duration=record_s, annotations=anns, **header).write(out)


# -- FIF ----------------------------------------------------------------------


def _raw_class():
    """A lazy mne Raw over a (mapped) sample array (defined on first use: mne is imported then)."""
    import mne

    class MushuRaw(mne.io.BaseRaw):
        def __init__(self, info, data, bar):
            super().__init__(info, preload=False, last_samps=[len(data) - 1],
                             filenames=[getattr(data, "filename", None)], raw_extras=[{"data": data, "bar": bar}],
                             orig_format="single", verbose="error")

        def _read_segment_file(self, data, idx, fi, start, stop, cals, mult):
            extras = self._raw_extras[fi]
            block = np.asarray(extras["data"][start:stop].T, np.float64)
            if mult is not None:
                data[:] = mult @ block[idx]
            else:
                data[:] = block[idx] * cals.reshape(-1, 1)
            bar = extras["bar"]
            bar.update(max(0, stop - bar.n))  # the furthest sample read (mne reads some twice)

    return MushuRaw


def write_fif(rec: Recording, out: str, progress: bool = True):
    """Write ``rec`` as a FIF raw file with mne, chunk by chunk; see the module docstring."""
    import mne
    from mne.io.constants import FIFF

    n, n_ch = rec.data.shape
    if n == 0:
        raise ValueError("the recording holds no samples; FIF needs at least one")
    units = rec.meta.get("mushu", {}).get("units") or ["uV"] * n_ch
    types = ["eeg" if u in VOLTS else "misc" for u in units]
    info = mne.create_info(list(rec.channels), rec.fs, types, verbose="error")
    for ch, unit in zip(info["chs"], units):
        ch["cal"] = VOLTS.get(unit, 1.0)
        ch["unit"] = FIFF.FIFF_UNIT_V if unit in VOLTS else FIFF.FIFF_UNIT_NONE
    start = _start(rec)
    if start is not None:
        info.set_meas_date(start)
    chunk_s = max(1, CHUNK_BYTES // (8 * n_ch)) / rec.fs
    with progress_bar(n, "FIF", progress) as bar:
        raw = _raw_class()(info, rec.data, bar)
        anns = _annotations(rec)
        raw.set_annotations(mne.Annotations([a[0] for a in anns], [a[1] or 0.0 for a in anns],
                                            [a[2] for a in anns]))
        raw.save(out, fmt="single", buffer_size_sec=chunk_s, overwrite=False, verbose="error")

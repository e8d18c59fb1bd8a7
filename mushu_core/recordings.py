r"""mushu's recording files: names, label escaping and the reader (numpy only).

A recording ``NAME`` is six files that describe one sample file:

- ``NAME.eeg``: float32, little-endian, sample-major (sample 0 channel
  0..N-1, sample 1, ...), no header: libmushu's layout, and byte for byte
  BrainVision's ``IEEE_FLOAT_32`` ``MULTIPLEXED`` binary.
- ``NAME.marker``: one line per marker, ``"%f %s\n" % (ms, label)`` with ms
  since the first sample of the recording (libmushu's format; wyrm reads it).
- ``NAME.meta``: JSON with libmushu's ``Channels``, ``Sampling Frequency`` and
  ``Amp``, and mushu's additions under ``"mushu"`` (see the recorder).
- ``NAME.vhdr`` and ``NAME.vmrk``: BrainVision header and markers for the
  same ``NAME.eeg``, so MNE-Python and EEGLAB open the recording as it is.
- ``NAME.times``: when each block of samples was acquired, one text line per
  block, ``<sample> <n_samples> <t_ns> <t_read_ns>``: the block starts at
  ``sample`` of ``NAME.eeg``, ``t_ns`` is its first sample's acquisition
  time as the amp's clock model stamped it and ``t_read_ns`` the raw time
  the driver's read that delivered it returned (``-`` if the amp did not
  say), both in integer ns of the amp host's monotonic clock. Blocks of one
  read share ``t_read_ns``; offline analysis can refit the sample clock from
  these pairs. Lines starting with ``#`` are comments. Older recordings
  have no such file. See :meth:`Recording.block_times`.

Samples that were lost (and could not be refetched) are written as NaN, so
every sample stays at its true position, and listed in the meta's
``mushu.gaps``; a marker ``mushu:gap <count>`` marks the start of each.

Labels in ``.marker`` are escaped so that :func:`load` reads every label
back exactly: a backslash becomes ``\\``, newline ``\n``, carriage return
``\r``, any other control character but tab ``\xHH``, and a whitespace
character at the start or end of a label ``\xHH`` or ``\uHHHH`` (wyrm strips
whitespace around a label). A tab inside a label stays as it is.
:func:`unescape_label` reverses this. Recordings of the original libmushu
(no ``"mushu"`` key in the meta) hold raw labels and are read as they are.

BrainVision knows one escape only, a comma written ``\1``. In ``.vmrk`` (and
in ``.vhdr`` channel names) a label is therefore written as it is but for
commas and control characters (:func:`plain_label`); the converted EDF+/BDF+
annotations use the same plain form without the comma rule. What the
readers see of a label (mne shows a ``.vmrk`` marker as ``"Stimulus/" +
label``):

- ``a,b``, ``tab<TAB>inside``, ``ünï ✓``: wyrm and mne see them exactly;
- ``C:\stim``: wyrm sees ``C:\\stim``, mne ``C:\stim``;
- `` pad `` (spaces around): wyrm sees ``\x20pad\x20``, mne `` pad ``;
- ``two<LF>lines``: both see the text ``two\nlines``;
- a label holding the text ``\1``: mne sees a comma there (BrainVision
  cannot tell them apart), wyrm ``\\1``.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

EXTENSIONS = (".eeg", ".marker", ".meta", ".vhdr", ".vmrk", ".times")
SAMPLE_DTYPE = np.dtype("<f4")
GAP_LABEL = "mushu:gap"

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
_ESCAPE_RE = re.compile(r"\\(\\|n|r|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})")
# Labels with none of these characters (nearly all) are their own escape: no loop over their characters.
_TO_ESCAPE = re.compile(r"[\\\x00-\x1f\x7f]")
_TO_REPLACE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _control(ch: str) -> bool:
    return (ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F


def _hex(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def escape_label(label: str) -> str:
    """Escape ``label`` for a ``.marker`` line (see the module docstring)."""
    if _TO_ESCAPE.search(label) is None and label == label.strip():
        return label
    out = []
    last = len(label) - 1
    for i, ch in enumerate(label):
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif _control(ch) or (ch.isspace() and (i == 0 or i == last)):
            out.append(_hex(ch))
        else:
            out.append(ch)
    return "".join(out)


def plain_label(label: str) -> str:
    r"""``label`` for formats without escapes of their own (EDF+ annotations).

    Only newline (``\n``), carriage return (``\r``) and other control
    characters but tab (``\xHH``) are replaced by text; a backslash stays
    as it is, so this cannot be reversed in general.
    """
    return "".join(_ESCAPES.get(ch, _hex(ch)) if ch in "\n\r" or _control(ch) else ch for ch in label)


def escape_vmrk(label: str) -> str:
    r"""``label`` for a BrainVision marker description or channel name.

    :func:`plain_label` with commas written ``\1``, BrainVision's one escape.
    """
    return plain_label(label).replace(",", "\\1")


def unescape_label(text: str) -> str:
    """Reverse :func:`escape_label`."""
    def one(m):
        s = m.group(1)
        if s == "\\":
            return "\\"
        if s == "n":
            return "\n"
        if s == "r":
            return "\r"
        return chr(int(s[1:], 16))
    return _ESCAPE_RE.sub(one, text)


def recording_paths(name: str) -> dict[str, str]:
    """The six file paths of recording ``name`` (a path without extension)."""
    return {ext: name + ext for ext in EXTENSIONS}


def base_name(path: str) -> str:
    """``path`` without one of the recording extensions."""
    root, ext = os.path.splitext(path)
    return root if ext in EXTENSIONS else path


@dataclass
class Recording:
    """A recording as :func:`load` returns it.

    Attributes
    ----------
    data : ndarray, shape (n_samples, n_channels), float32
        Lost samples are NaN (see ``gaps``).
    markers : list of (float, str)
        ``(ms since the first sample, label)``; gap markers included.
    fs : float
    channels : list of str
    meta : dict
        The whole ``.meta`` JSON.
    """

    data: np.ndarray
    markers: list
    fs: float
    channels: list
    meta: dict = field(default_factory=dict)
    _times_path: str = field(default="", repr=False, compare=False)

    @property
    def gaps(self) -> list:
        """``[{"sample", "count", ...}]``: where samples were lost."""
        return list(self.meta.get("mushu", {}).get("gaps", []))

    def marker_samples(self) -> list:
        """``[(sample index, label)]``: each marker on the sample it was written for."""
        return [(round(ms * self.fs / 1000.0), label) for ms, label in self.markers]

    def block_times(self) -> np.ndarray:
        """When each block of samples was acquired, from ``NAME.times``.

        Returns
        -------
        ndarray
            One row per block, a structured array with integer fields
            ``sample`` (its first sample in ``data``), ``n`` (its samples),
            ``t_ns`` (its first sample's stamped acquisition time) and
            ``t_read_ns`` (when the driver's read that delivered it returned,
            0 where the amp did not say), in ns of the amp host's monotonic
            clock. Empty for recordings without a ``NAME.times``.

        Raises
        ------
        ValueError
            If a line is not four integers (the last may be ``-``).
        """
        return read_block_times(self._times_path) if self._times_path else np.zeros(0, BLOCK_TIMES_DTYPE)

    def sample_times(self) -> np.ndarray:
        """Every sample's acquisition time, in ns of the amp host's monotonic clock.

        Sample ``i`` of a block of ``NAME.times`` is at its block's ``t_ns + round(i * 1e9 / fs)``
        (protocol 7.4); a lost sample (a gap, which no block covers) is put on the line of the block
        before it at the nominal rate (of the first block if none is before it).

        Returns
        -------
        ndarray of int64, shape (n_samples,)

        Raises
        ------
        ValueError
            If the recording has no ``NAME.times`` (a libmushu recording) or it is malformed.
        """
        blocks = self.block_times()
        if not len(blocks):
            raise ValueError("the recording has no block times (NAME.times): it was not made by mushu's recorder")
        k = np.arange(len(self.data), dtype=np.int64)
        i = np.maximum(np.searchsorted(blocks["sample"], k, side="right") - 1, 0)
        return blocks["t_ns"][i] + np.rint((k - blocks["sample"][i]) * 1e9 / self.fs).astype(np.int64)

    def __iter__(self):  # data, markers, fs, channels = load(path)
        return iter((self.data, self.markers, self.fs, self.channels))


def stream_recordings(path: str) -> dict[str, str]:
    """The recordings of one recording's streams, ``{stream: base path}``, its own first.

    ``mushu_client.Streams.start(NAME)`` records the first stream as
    ``NAME`` and every other one as ``NAME-STREAM`` beside it; those whose
    meta names that stream belong to ``NAME``.
    """
    base = base_name(os.fspath(path))
    found = {_read_meta(base + ".meta").get("mushu", {}).get("stream") or "eeg": base}
    for meta_path in sorted(glob.glob(glob.escape(base) + "-*.meta")):
        other = meta_path[:-len(".meta")]
        stream = other[len(base) + 1:]
        try:
            named = _read_meta(meta_path).get("mushu", {}).get("stream")
        except (OSError, ValueError):
            continue  # not a recording of this one's: its own name says nothing
        if named == stream and stream not in found and os.path.exists(other + ".eeg"):
            found[stream] = other
    return found


def load(path: str, mmap: bool = False) -> Recording:
    """Read a mushu (or libmushu) recording.

    Parameters
    ----------
    path : str
        ``NAME`` or any of its files (``NAME.meta``, ``NAME.eeg``, ...).
    mmap : bool
        Map ``NAME.eeg`` read-only instead of reading it into memory, for
        recordings larger than memory (``data`` is then a ``numpy.memmap``
        of dtype ``<f4``).

    Returns
    -------
    Recording
        Unpacks as ``data, markers, fs, channels``.

    Raises
    ------
    OSError
        If ``NAME.meta`` or ``NAME.eeg`` is missing or unreadable.
    ValueError
        If a file is malformed; the message names the file and the field or line.
    """
    paths = recording_paths(base_name(os.fspath(path)))
    meta = _read_meta(paths[".meta"])
    channels, fs = meta["Channels"], float(meta["Sampling Frequency"])
    n = os.path.getsize(paths[".eeg"]) // (SAMPLE_DTYPE.itemsize * len(channels))  # a torn last sample is not one
    if mmap and n:
        data = np.memmap(paths[".eeg"], SAMPLE_DTYPE, "r", shape=(n, len(channels)))
    else:
        data = np.fromfile(paths[".eeg"], SAMPLE_DTYPE, n * len(channels)).reshape(n, len(channels))
        data = data.astype(np.float32)
    unescape = unescape_label if "mushu" in meta else str  # libmushu wrote labels raw
    markers = []
    if os.path.exists(paths[".marker"]):
        with open(paths[".marker"], "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    break  # torn last line
                ms, _, label = line[:-1].partition(b" ")
                try:
                    markers.append((float(ms), unescape(label.decode("utf-8"))))
                except ValueError:  # UnicodeDecodeError included
                    raise ValueError(f"{paths['.marker']} line {number}: {line[:80]!r} is not "
                                     f"'<ms> <UTF-8 label>'") from None
    times = paths[".times"] if os.path.exists(paths[".times"]) else ""
    return Recording(data, markers, fs, channels, meta, times)


BLOCK_TIMES_DTYPE = np.dtype([("sample", "<i8"), ("n", "<i8"), ("t_ns", "<i8"), ("t_read_ns", "<i8")])


def read_block_times(path: str) -> np.ndarray:
    """The rows of a ``NAME.times`` file (see :meth:`Recording.block_times`); a torn last line is left out."""
    rows = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break  # torn last line
            if line.startswith(b"#") or not line.strip():
                continue
            fields = line.split()
            try:
                if len(fields) != 4:
                    raise ValueError
                rows.append((int(fields[0]), int(fields[1]), int(fields[2]),
                             0 if fields[3] == b"-" else int(fields[3])))
            except ValueError:
                raise ValueError(f"{path} line {number}: {line[:80]!r} is not "
                                 f"'<sample> <n_samples> <t_ns> <t_read_ns or ->'") from None
    return np.array(rows, BLOCK_TIMES_DTYPE)


def _read_meta(path: str) -> dict:
    """The ``.meta`` JSON, checked for what :func:`load` and :class:`Recording` use."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise ValueError(f"{path} is not JSON: {str(exc)[:200]}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(meta).__name__}")
    channels = meta.get("Channels")
    if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
        raise ValueError(f"{path}: 'Channels' must be a non-empty list of names, not {str(channels)[:80]}")
    fs = meta.get("Sampling Frequency")
    if type(fs) not in (int, float) or not 0 < fs < math.inf:
        raise ValueError(f"{path}: 'Sampling Frequency' must be a positive number, not {str(fs)[:80]}")
    mushu = meta.get("mushu", {})
    if not isinstance(mushu, dict) or not isinstance(mushu.get("gaps", []), list):
        raise ValueError(f"{path}: 'mushu' must be an object whose 'gaps' is a list")
    return meta

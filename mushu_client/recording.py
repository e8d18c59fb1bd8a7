"""mushu's recording files: names, label escaping and the reader (numpy only).

A recording ``NAME`` is five files that describe one sample file:

- ``NAME.eeg``: float32, little-endian, sample-major (sample 0 channel
  0..N-1, sample 1, ...), no header: libmushu's layout, and byte for byte
  BrainVision's ``IEEE_FLOAT_32`` ``MULTIPLEXED`` binary.
- ``NAME.marker``: one line per marker, ``"%f %s\\n" % (ms, label)`` with ms
  since the first sample of the recording (libmushu's format; wyrm reads it).
- ``NAME.meta``: JSON with libmushu's ``Channels``, ``Sampling Frequency`` and
  ``Amp``, and mushu's additions under ``"mushu"`` (see the recorder).
- ``NAME.vhdr`` and ``NAME.vmrk``: BrainVision header and markers for the
  same ``NAME.eeg``, so MNE-Python and EEGLAB open the recording as it is.

Samples that were lost (and could not be refetched) are written as NaN, so
every sample stays at its true position, and listed in the meta's
``mushu.gaps``; a marker ``mushu:gap <count>`` marks the start of each.

Labels are escaped so every line format can hold them: a backslash becomes
``\\\\``, newline ``\\n``, carriage return ``\\r``, other control characters
and leading or trailing whitespace ``\\xHH`` (wyrm strips whitespace around
a label); in ``.vmrk`` a comma is additionally written ``\\1`` as
BrainVision prescribes. :func:`unescape_label` reverses it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

EXTENSIONS = (".eeg", ".marker", ".meta", ".vhdr", ".vmrk")
SAMPLE_DTYPE = np.dtype("<f4")
GAP_LABEL = "mushu:gap"

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
_ESCAPE_RE = re.compile(r"\\(\\|n|r|1|x[0-9a-fA-F]{2})")


def escape_label(label: str) -> str:
    """Escape ``label`` for a ``.marker`` line (see the module docstring)."""
    out = []
    last = len(label) - 1
    for i, ch in enumerate(label):
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or (ch.isspace() and (i == 0 or i == last)):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else ch)
        else:
            out.append(ch)
    return "".join(out)


def escape_vmrk(label: str) -> str:
    """Escape ``label`` for a BrainVision marker description (commas as ``\\1``)."""
    return escape_label(label).replace(",", "\\1")


def unescape_label(text: str) -> str:
    """Reverse :func:`escape_label` and :func:`escape_vmrk`."""
    def one(m):
        s = m.group(1)
        if s == "\\":
            return "\\"
        if s == "n":
            return "\n"
        if s == "r":
            return "\r"
        if s == "1":
            return ","
        return chr(int(s[1:], 16))
    return _ESCAPE_RE.sub(one, text)


def recording_paths(name: str) -> dict[str, str]:
    """The five file paths of recording ``name`` (a path without extension)."""
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

    @property
    def gaps(self) -> list:
        """``[{"sample", "count", ...}]``: where samples were lost."""
        return list(self.meta.get("mushu", {}).get("gaps", []))

    def __iter__(self):  # data, markers, fs, channels = load(path)
        return iter((self.data, self.markers, self.fs, self.channels))


def load(path: str) -> Recording:
    """Read a mushu (or libmushu) recording.

    Parameters
    ----------
    path : str
        ``NAME`` or any of its files (``NAME.meta``, ``NAME.eeg``, ...).

    Returns
    -------
    Recording
        Unpacks as ``data, markers, fs, channels``.
    """
    paths = recording_paths(base_name(os.fspath(path)))
    with open(paths[".meta"], encoding="utf-8") as f:
        meta = json.load(f)
    channels = list(meta["Channels"])
    fs = float(meta["Sampling Frequency"])
    raw = np.fromfile(paths[".eeg"], dtype=SAMPLE_DTYPE)
    usable = len(raw) - len(raw) % len(channels)  # a torn last sample is not a sample
    data = raw[:usable].reshape(-1, len(channels)).astype(np.float32)
    markers = []
    if os.path.exists(paths[".marker"]):
        with open(paths[".marker"], encoding="utf-8", newline="\n") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn last line
                ms, _, label = line[:-1].partition(" ")
                markers.append((float(ms), unescape_label(label)))
    return Recording(data, markers, fs, channels, meta)

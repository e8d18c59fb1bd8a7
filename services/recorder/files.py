"""Writing one recording so that every file is readable at every moment.

The format is described in :mod:`mushu_core.recordings`. Besides the five
recording files, a journal ``NAME.journal`` (JSON lines, one per marker
placed, with its sample, sequence number and session) lets a restarted
recorder resume the recording exactly; it is removed when the recording is
finished. ``NAME.eeg`` is append-only, its length is the truth about how
many samples were written; a torn last sample (a crash mid-write) is cut
off on resume.
"""

from __future__ import annotations

import datetime
import json
import os

import numpy as np

from mushu_core.recordings import GAP_LABEL, SAMPLE_DTYPE, escape_label, escape_vmrk, recording_paths

JOURNAL = ".journal"
VMRK_HEADER = """Brain Vision Data Exchange Marker File, Version 1.0

[Common Infos]
Codepage=UTF-8
DataFile={eeg}

[Marker Infos]
; Each entry: Mk<Marker number>=<Type>,<Description>,<Position in data points>,
; <Size in data points>, <Channel number (0 = marker is related to all channels)>
; Descriptions are escaped as in mushu_core.recordings (a comma is \\1).
Mk1=New Segment,,1,1,0,{date}
"""


def _unit(unit: str) -> str:
    return "µV" if unit in ("uV", "µV") else unit


def vhdr_text(base: str, channels: list, fs: float, units: list) -> str:
    name = os.path.basename(base)
    lines = [
        "Brain Vision Data Exchange Header File Version 1.0",
        "; Data written by mushu (libmushu's NAME.eeg, described for BrainVision readers)",
        "",
        "[Common Infos]",
        "Codepage=UTF-8",
        f"DataFile={name}.eeg",
        f"MarkerFile={name}.vmrk",
        "DataFormat=BINARY",
        "DataOrientation=MULTIPLEXED",
        f"NumberOfChannels={len(channels)}",
        f"SamplingInterval={1e6 / fs:.10g}",
        "",
        "[Binary Infos]",
        "BinaryFormat=IEEE_FLOAT_32",
        "",
        "[Channel Infos]",
        "; Each entry: Ch<Channel number>=<Name>,<Reference channel name>,<Resolution in unit>,<Unit>",
    ]
    lines += [f"Ch{i + 1}={escape_vmrk(ch)},,1,{_unit(u)}" for i, (ch, u) in enumerate(zip(channels, units))]
    return "\n".join(lines) + "\n"


class RecordingWriter:
    """The files of one recording, open for appending.

    Use :meth:`create` for a new recording and :meth:`resume` to continue
    one a killed recorder left behind.

    Attributes
    ----------
    base : str
        Path of the recording without extension.
    n_samples : int
        Samples written (gap samples included).
    meta : dict
        The ``.meta`` content; ``meta["mushu"]`` holds mushu's additions.
    """

    def __init__(self, base: str, meta: dict, n_samples: int, markers: list):
        self.base = base
        self.paths = recording_paths(base)
        self.meta = meta
        self.n_channels = len(meta["Channels"])
        self.fs = float(meta["Sampling Frequency"])
        self.n_samples = n_samples
        self.markers = markers  # journal entries, in the order written
        self._eeg = open(self.paths[".eeg"], "ab")
        self._marker = open(self.paths[".marker"], "a", encoding="utf-8", newline="\n")
        self._vmrk = open(self.paths[".vmrk"], "a", encoding="utf-8", newline="\n")
        self._journal = open(base + JOURNAL, "a", encoding="utf-8", newline="\n")
        self._files = (self._eeg, self._marker, self._vmrk, self._journal)

    # -- opening ----------------------------------------------------------

    @classmethod
    def create(cls, base: str, channels: list, fs: float, amp: str, units: list, mushu: dict):
        """Create the files of a new recording; refuse if any of them exists."""
        paths = recording_paths(base)
        existing = [p for p in [*paths.values(), base + JOURNAL] if os.path.exists(p)]
        if existing:
            raise FileExistsError(f"recording {base!r} exists already ({', '.join(existing)})")
        directory = os.path.dirname(base) or "."
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"directory {directory!r} of recording {base!r} does not exist")
        meta = {"Channels": list(channels), "Sampling Frequency": fs, "Amp": amp,
                "mushu": {**mushu, "state": "recording", "gaps": [], "units": list(units),
                          "dtype": SAMPLE_DTYPE.str, "byte_order": "little", "layout": "sample-major"}}
        # exclusive creation: two recorders cannot both win a name
        with open(paths[".eeg"], "xb"):
            pass
        for ext in (".marker", ".vmrk"):
            open(paths[ext], "x").close()
        with open(paths[".vhdr"], "w", encoding="utf-8", newline="\n") as f:
            f.write(vhdr_text(base, channels, fs, units))
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S%f")
        with open(paths[".vmrk"], "w", encoding="utf-8", newline="\n") as f:
            f.write(VMRK_HEADER.format(eeg=os.path.basename(base) + ".eeg", date=date))
        writer = cls(base, meta, 0, [])
        writer.write_meta()
        writer.sync()
        return writer

    @classmethod
    def resume(cls, base: str):
        """Reopen a recording a killed recorder left; repair torn tails.

        Returns the writer; ``n_samples`` and ``markers`` say where it stood.
        """
        paths = recording_paths(base)
        with open(paths[".meta"], encoding="utf-8") as f:
            meta = json.load(f)
        frame = len(meta["Channels"]) * SAMPLE_DTYPE.itemsize
        size = os.path.getsize(paths[".eeg"])
        if size % frame:
            with open(paths[".eeg"], "r+b") as f:
                f.truncate(size - size % frame)
        markers = _read_journal(base + JOURNAL)
        writer = cls(base, meta, size // frame, markers)
        writer.rewrite_markers()  # the marker files may hold a torn line
        return writer

    # -- writing ----------------------------------------------------------

    def append(self, data: np.ndarray):
        """Append samples, converted to little-endian float32."""
        self._eeg.write(np.ascontiguousarray(data, SAMPLE_DTYPE).tobytes())
        self.n_samples += len(data)

    def append_gap(self, count: int, reason: str, **details):
        """Write ``count`` NaN samples for samples that are lost, and record the gap."""
        gap = {"sample": self.n_samples, "count": count, "reason": reason, **details}
        self.meta["mushu"]["gaps"].append(gap)
        self.add_marker(self.n_samples, f"{GAP_LABEL} {count}", seq=-1, session="", t_ns=0)
        row = np.full((1, self.n_channels), np.nan, SAMPLE_DTYPE).tobytes()
        for i in range(0, count, 4096):
            self._eeg.write(row * min(4096, count - i))
        self.n_samples += count
        self.write_meta()

    def add_marker(self, sample: int, label: str, seq: int, session: str, t_ns: int):
        """Write a marker placed on ``sample`` (an index into this recording)."""
        entry = {"sample": sample, "seq": seq, "session": session, "t_ns": t_ns, "label": label}
        self._journal.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._write_marker_lines(entry, len(self.markers))
        self.markers.append(entry)

    def _write_marker_lines(self, entry: dict, index: int):
        self._marker.write("%f %s\n" % (entry["sample"] * 1000.0 / self.fs, escape_label(entry["label"])))
        kind = "Comment" if entry["seq"] < 0 else "Stimulus"
        self._vmrk.write(f"Mk{index + 2}={kind},{escape_vmrk(entry['label'])},{entry['sample'] + 1},1,0\n")

    def rewrite_markers(self):
        """Write ``.marker`` and ``.vmrk`` anew from the journal, in sample order."""
        self._marker.truncate(0)
        with open(self.paths[".vmrk"], encoding="utf-8") as f:
            header = f.read().split("\nMk2=", 1)[0].rstrip("\n") + "\n"
        self._vmrk.truncate(0)
        self._vmrk.write(header)
        self.markers.sort(key=lambda m: m["sample"])
        for i, entry in enumerate(self.markers):
            self._write_marker_lines(entry, i)

    def write_meta(self):
        """Replace ``.meta`` atomically."""
        tmp = self.paths[".meta"] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.meta, f, indent=1, ensure_ascii=False, allow_nan=False, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.paths[".meta"])

    def flush(self):
        for f in self._files:
            f.flush()

    def sync(self):
        self.flush()
        for f in self._files:
            os.fsync(f.fileno())

    def finish(self, **mushu):
        """Finish the recording: sorted markers, final meta, journal removed."""
        self.rewrite_markers()
        self.meta["mushu"].update(mushu, state="complete", n_samples=self.n_samples)
        self.sync()
        self.write_meta()
        self.close()
        os.remove(self.base + JOURNAL)

    def fail(self, error: str):
        """Leave the files readable after an error; record it in the meta if possible."""
        self.meta["mushu"].update(state="failed", error=error, n_samples=self.n_samples)
        for f in self._files:
            try:
                f.flush()
            except OSError:
                pass
        try:
            self.write_meta()
        except OSError:
            pass
        self.close()

    def close(self):
        for f in self._files:
            try:
                f.close()
            except OSError:
                pass


def _read_journal(path: str) -> list:
    entries, good = [], 0
    if not os.path.exists(path):
        return entries
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                entry = json.loads(line)
            except ValueError:
                break
            entries.append(entry)
            good += len(line)
    with open(path, "r+b") as f:
        f.truncate(good)
    return entries


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


__all__ = ["RecordingWriter", "vhdr_text"]

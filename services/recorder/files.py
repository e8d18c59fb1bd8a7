"""Writing one recording so that every file is readable at every moment.

The format is described in :mod:`mushu_core.recordings`. Besides the six
recording files, a journal ``NAME.journal`` (JSON lines, one per marker
placed, with its sample, sequence number and session) lets a restarted
recorder resume the recording exactly; it is removed when the recording is
finished. ``NAME.eeg`` is append-only, its length is the truth about how
many samples were written; a torn last sample (a crash mid-write) is cut
off on resume.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import threading
import time

import numpy as np

from mushu_core.recordings import GAP_LABEL, SAMPLE_DTYPE, escape_label, escape_vmrk, recording_paths

log = logging.getLogger("mushu.recorder")

JOURNAL = ".journal"
TIMES_HEADER = ("# sample n_samples t_ns t_read_ns: each block's first sample in NAME.eeg, its sample count, "
                "its stamped acquisition time and its driver read's return time, in ns of the amp host's "
                "monotonic clock\n")
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
        self._in_order = not markers  # the marker files hold self.markers sorted by sample
        self._eeg = open(self.paths[".eeg"], "ab")
        self._marker = open(self.paths[".marker"], "a", encoding="utf-8", newline="\n")
        self._vmrk = open(self.paths[".vmrk"], "a", encoding="utf-8", newline="\n")
        self._journal = open(base + JOURNAL, "a", encoding="utf-8", newline="\n")
        # line-buffered: a block's line reaches the file before its samples do (add_block_times)
        self._times = open(self.paths[".times"], "a", encoding="ascii", newline="\n", buffering=1)
        self._files = (self._eeg, self._marker, self._vmrk, self._journal, self._times)

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
        with open(paths[".times"], "x", encoding="ascii", newline="\n") as f:
            f.write(TIMES_HEADER)
        with open(paths[".vhdr"], "w", encoding="utf-8", newline="\n") as f:
            f.write(vhdr_text(base, channels, fs, units))
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S%f")
        with open(paths[".vmrk"], "w", encoding="utf-8", newline="\n") as f:
            f.write(VMRK_HEADER.format(eeg=os.path.basename(base) + ".eeg", date=date))
        writer = cls(base, meta, 0, [])
        writer.write_meta()
        writer.flush()
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
        _repair_times(paths[".times"], size // frame)
        writer = cls(base, meta, size // frame, markers)
        writer.rewrite_markers()  # the marker files may hold a torn line
        return writer

    # -- writing ----------------------------------------------------------

    def append(self, data: np.ndarray):
        """Append samples, converted to little-endian float32."""
        self._eeg.write(np.ascontiguousarray(data, SAMPLE_DTYPE).tobytes())
        self.n_samples += len(data)

    def add_block_times(self, sample: int, n: int, t_ns: int, t_read_ns: int | None):
        """Record when the ``n`` samples from ``sample`` on were acquired (a line of ``NAME.times``).

        Called before their samples are appended, and written through at once: whatever a killed
        process left in ``NAME.eeg`` (the truth) has its line, and a line beyond it is cut on resume.
        """
        self._times.write(f"{sample} {n} {t_ns} {'-' if t_read_ns is None else t_read_ns}\n")

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
        if self.markers and sample < self.markers[-1]["sample"]:
            self._in_order = False
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
        self._in_order = True

    def write_meta(self):
        """Replace ``.meta`` atomically (to the disk with the next :func:`sync_paths`)."""
        tmp = self.paths[".meta"] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.meta, f, indent=1, ensure_ascii=False, allow_nan=False, default=_json_default)
        os.replace(tmp, self.paths[".meta"])

    def flush(self):
        for f in self._files:
            f.flush()

    def sync(self):
        """Flush, and wait until the disk holds every file."""
        self.flush()
        sync_paths(self.sync_paths())

    def sync_paths(self) -> list:
        """The files to sync to the disk: every file of the recording and its journal."""
        return [*self.paths.values(), self.base + JOURNAL]

    def finish(self, **mushu):
        """Finish the recording: sorted markers, final meta, journal removed (sync its files after)."""
        if not self._in_order:  # tens of thousands of markers take the recorder's thread for a second
            self.rewrite_markers()
        self.meta["mushu"].update(mushu, state="complete", n_samples=self.n_samples)
        self.flush()
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


#: A session of several streams: ``NAME.session.json`` beside the first stream's recording ``NAME``.
SESSION = ".session.json"


def add_to_session(base: str, stream: str, entry: dict):
    """Put stream ``stream``'s ``entry`` into the session file of recording ``base`` (written and synced).

    The recorders of a session's streams may share a data directory and
    finish at the same moment: each takes an exclusive lock on the directory
    for the read, change and atomic rewrite.
    """
    path = base + SESSION
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        try:
            with open(path, encoding="utf-8") as f:
                session = json.load(f)
        except FileNotFoundError:
            session = {"session": os.path.basename(base), "streams": {}}
        session["streams"][stream] = entry
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(session, f, indent=1, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        os.fsync(directory)
    finally:
        os.close(directory)  # and with it the lock


def sync_paths(paths):
    """Wait until the disk holds each existing file of ``paths``.

    By path, not by an open file: ``.meta`` is replaced by each write, and
    a finished recording's files are closed.
    """
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class BackgroundSync:
    """Syncs files to the disk in a thread of its own: ``sync(paths)`` returns at once.

    An fsync waits for the disk, and on a busy one (another recording,
    another program's writes) that takes seconds, while the recorder must
    go on writing and answering. Everything is flushed to the kernel before
    (a killed recorder loses nothing); after a power cut the disk is at most
    one sync interval behind.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._paths: set = set()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="fsync", daemon=True)
        self._thread.start()

    def __call__(self, paths):
        with self._cond:
            self._paths.update(paths)
            self._cond.notify()

    def close(self, timeout: float = 30.0):
        """Sync what is pending, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self):
        while True:
            with self._cond:
                while not self._paths and not self._closed:
                    self._cond.wait()
                if not self._paths:
                    return
                paths, self._paths = sorted(self._paths), set()
            t = time.monotonic()
            try:
                sync_paths(paths)
            except OSError as exc:  # a full disk fails the writes first, which the recorder reports
                log.error("cannot sync %s to the disk: %s", os.path.dirname(paths[0]), exc)
            took = time.monotonic() - t
            if took > 1.0:
                log.warning("the disk took %.1f s to sync %d files in %s", took, len(paths),
                            os.path.dirname(paths[0]))


def _repair_times(path: str, n_samples: int):
    """Make ``NAME.times`` describe exactly the ``n_samples`` written: lines beyond them cut, a line of a
    block only partly written shortened, a torn last line removed."""
    if not os.path.exists(path):
        return  # a recording from a version without it: appending creates it
    good, tail = 0, b""
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            if not line.startswith(b"#"):
                fields = line.split()
                try:
                    sample, n = int(fields[0]), int(fields[1])
                except (ValueError, IndexError):
                    break
                if sample >= n_samples:
                    break
                if sample + n > n_samples:  # the process died while appending this block's samples
                    tail = b" ".join([fields[0], str(n_samples - sample).encode(), *fields[2:]]) + b"\n"
                    break
            good += len(line)
    with open(path, "r+b") as f:
        f.truncate(good)
        f.seek(good)
        f.write(tail)


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


__all__ = ["BackgroundSync", "RecordingWriter", "sync_paths", "vhdr_text"]

"""A finished recording as the viewer's source: the page asks for windows of it, with a time scrollbar."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np

from mushu_core.recordings import load

from .core import encode_frame, envelope

#: Values sent in one window at most; a longer window goes as min/max envelopes (no spike hidden).
MAX_WINDOW_VALUES = 2_000_000


class RecordingSource:
    """Serve windows of the recording at ``path`` (a base path, as ``mushu_core.recordings.load`` takes)."""

    mode = "recording"

    def __init__(self, path: str):
        self.rec = load(path, mmap=True)
        self.path = path
        self.publish = None
        self._stop = threading.Event()
        rec = self.rec
        mushu = rec.meta.get("mushu", {})
        self.info = {"type": "stream", "stream": mushu.get("stream", "eeg"), "session": None,
                     "channels": list(rec.channels), "fs": float(rec.fs), "page_fs": float(rec.fs),
                     "unit": (mushu.get("units") or [""])[0], "amp": rec.meta.get("Amp") or "", "recording": path,
                     "n_samples": int(len(rec.data))}

    def snapshot(self) -> list:
        markers = [{"label": label, "row": int(sample), "t_ms": None, "seq": i, "source": "recording"}
                   for i, (sample, label) in enumerate(self.rec.marker_samples())]
        gaps = self.rec.gaps
        return [self.info, {"type": "markers", "markers": markers},
                {"type": "status", "services": {}, "driver": self.info["amp"], "fs": self.info["fs"],
                 "measured_hz": self.rec.meta.get("mushu", {}).get("fs_measured"), "state": "recorded", "samples": len(self.rec.data), "lost_samples": 0,
                 "n_gaps": len(gaps), "gaps": gaps[-5:], "recording": {"name": self.path,
                 "n_samples": len(self.rec.data), "bytes": int(self.rec.data.nbytes), "markers": len(markers)}}]

    def run(self):
        self._stop.wait()

    def shutdown(self):
        self._stop.set()

    def call(self, command: str, start=None, n=None, **_args) -> Future:
        done: Future = Future()
        try:
            if command != "window":
                raise ValueError(f"a recording is only looked at: {command!r} needs a live viewer")
            done.set_result(self.window(start, n))
        except (TypeError, ValueError) as exc:
            done.set_exception(exc)
        return done

    def window(self, start, n) -> bytes:
        """A frame of samples ``start`` to ``start + n`` (clipped to the recording)."""
        if type(start) is not int or type(n) is not int or n <= 0:
            raise TypeError(f"a window is whole numbers start >= 0 and n > 0, not {start!r}, {n!r}")
        total = len(self.rec.data)
        start = min(max(0, start), max(0, total - 1))
        channels = max(1, self.rec.data.shape[1])
        factor = int(np.ceil(min(n, total - start) * channels / MAX_WINDOW_VALUES))
        if factor > 1:  # runs aligned on multiples of the factor, as the live envelopes are
            first = start - start % factor
            data = np.asarray(self.rec.data[first:start + n], dtype=np.float32)
            return encode_frame(2 * (first // factor), 2 * self.rec.fs / factor, 0.0, envelope(data, factor), True)
        return encode_frame(start, self.rec.fs, 0.0, np.asarray(self.rec.data[start:start + n], dtype=np.float32))

"""The markers service's journal: the published markers on disk, so a restarted service goes on in the same session.

A marker is published to every subscriber at once, but a process killed
while its messages are queued leaves some subscribers with it and others
without, and a new service would start a new session whose history knows
nothing of the old one: the loss could not even be seen. With a journal,
every marker is written to the file (one ``write``, in the kernel's page
cache the moment it returns, so a killed process loses nothing) before it
is published; a restarted service reads it back and continues the same
session with the same history and sequence numbers. A consumer that missed a
marker then sees the gap in ``seq`` and fetches it from the history, like
any other lost marker.

The file is a header record then one record per marker, each record a
4-byte little-endian length and a msgpack frame: the header is
``{"journal": 1, "stream", "session", "clock"}``, a marker record is frame 1
of the marker's message (protocol section 6.1). It is rewritten with the
markers still in the history when it has grown to twice the history's
bytes. A journal of another boot (its monotonic times are another clock's),
another stream, or a damaged header starts a new session and a new journal; a
torn or damaged record ends what is read, and the file is cut there.
"""

from __future__ import annotations

import logging
import os
import struct

import msgpack

from mushu_core.wire import ProtocolError, decode_marker

log = logging.getLogger("mushu.markers")

VERSION = 1
_LENGTH = struct.Struct("<I")


def _record(frame: bytes) -> bytes:
    return _LENGTH.pack(len(frame)) + frame


class MarkerJournal:
    """Append-only file of the markers published in one session.

    Parameters
    ----------
    path : str
        The journal file.
    stream : str
        The marker stream's name.
    clock : str or None
        The host clock id (``mushu_core.clock.host_clock_id``): a journal
        written under another clock is not resumed.
    """

    def __init__(self, path: str, stream: str, clock: str | None):
        self.path, self.stream, self.clock = path, stream, clock
        self._fd: int | None = None
        self.size = 0

    def restore(self, keep) -> str | None:
        """The session the journal holds, each of its markers' frames handed to ``keep`` in seq order; None
        to start afresh.

        Read record by record, so that it takes no more memory than the
        history ``keep`` fills. Cuts a torn or damaged tail off the file.
        """
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return None
        with f:
            header = _header(_read_record(f))
            if header is None or header.get("stream") != self.stream or header.get("clock") != self.clock \
                    or header.get("journal") != VERSION or not isinstance(header.get("session"), str):
                log.warning("marker journal %s is empty, of another boot, stream or version, or damaged: "
                            "starting a new session", self.path)
                return None
            session, seq, kept = header["session"], None, f.tell()
            while (frame := _read_record(f)) is not None:
                try:
                    m = decode_marker(frame, self.stream)
                except ProtocolError:
                    break
                if m.session != session or (seq is not None and m.seq != seq + 1):
                    break
                seq = m.seq
                keep(m.seq, frame)
                kept = f.tell()
            size = os.fstat(f.fileno()).st_size
        if kept < size:
            log.warning("marker journal %s: %d damaged or torn bytes at its end cut off", self.path, size - kept)
            with open(self.path, "r+b") as f:
                f.truncate(kept)
        self.size = kept
        return session

    def begin(self, session: str, frames):
        """Write the journal anew: ``session``'s header, then ``frames``; keep it open for appending.

        Record by record through a buffered file: no copy of the history is made.
        """
        header = msgpack.packb({"journal": VERSION, "stream": self.stream, "session": session, "clock": self.clock})
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(_record(header))
            for frame in frames:
                f.write(_LENGTH.pack(len(frame)))
                f.write(frame)
            size = f.tell()
        os.replace(tmp, self.path)
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.size = size

    def open(self):
        """Append to the journal :meth:`restore` read."""
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def append(self, frame: bytes):
        """Write one marker's frame (before it is published). Raises OSError if the disk refuses."""
        record = _record(frame)
        os.write(self._fd, record)
        self.size += len(record)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_record(f) -> bytes | None:
    """The next record's frame, or None at the end (a torn record included)."""
    prefix = f.read(4)
    if len(prefix) < 4:
        return None
    (n,) = _LENGTH.unpack(prefix)
    frame = f.read(n)
    return frame if len(frame) == n else None


def _header(frame: bytes | None) -> dict | None:
    if frame is None:
        return None
    try:
        header = msgpack.unpackb(frame)
    except (ValueError, msgpack.UnpackException):
        return None
    return header if isinstance(header, dict) else None

"""Several amps read together: :class:`Streams`, each stream's new samples and markers on one clock."""

from __future__ import annotations

import time
import warnings
from typing import NamedTuple

import numpy as np
import zmq

from .amp import Amp


class StreamData(NamedTuple):
    """What :meth:`Streams.get_data` returns of one stream."""

    #: (n_samples, n_channels): every sample since the previous call, as :meth:`Amp.get_data` returns it.
    data: np.ndarray
    #: ``(ms relative to this stream's first returned sample, label)``, each on this stream's sample.
    markers: list
    #: int64, one per row: each sample's acquisition time in ns on this host's monotonic clock.
    times_ns: np.ndarray


class Streams:
    """Several amp streams (one per device, on this host or others), read as one.

    Each stream is an :class:`Amp` (``get_amp(..., stream=NAME)``), which
    keeps its own guarantees: every sample once and in order, gaps
    reported, every marker on its exact sample of that stream. What this
    class adds is one wait for all of them and one clock:
    :meth:`get_data` returns each stream's new samples with their
    acquisition times on this host's monotonic clock, each amp host's clock
    offset estimated and taken out, so that a sample of one stream can be
    set beside the sample of another acquired at the same moment.

    Parameters
    ----------
    amps : list of Amp
        One per stream; each is known by its stream's name (``Amp.stream``),
        and the names must differ.
    timeout : float
        Seconds :meth:`get_data` waits when no stream has new data.

    Examples
    --------
    >>> eeg, emg = mushu_client.get_amp("sinusamp"), mushu_client.get_amp("rampamp", stream="emg")
    >>> streams = mushu_client.Streams([eeg, emg])
    >>> streams.start()
    >>> got = streams.get_data()            # {"eeg": StreamData, "emg": StreamData}
    >>> got["emg"].times_ns[0] - got["eeg"].times_ns[0]   # ns between their first samples
    """

    def __init__(self, amps: list[Amp], timeout: float = 2.0):
        self.amps: dict[str, Amp] = {}
        for amp in amps:
            if amp.stream in self.amps:
                raise ValueError(f"two amps of stream {amp.stream!r}: give each device its own stream "
                                 "([amp.NAME] in mushu.toml)")
            self.amps[amp.stream] = amp
        self.timeout = timeout

    def start(self, filename: str | None = None):
        """Start (or join) every amp; a stream's samples from its start on are returned.

        Parameters
        ----------
        filename : str, optional
            Record every stream as well, each by its own recorder: the
            first stream as ``filename``, each other one as
            ``filename-STREAM`` (``mushu convert filename --to xdf`` puts
            them together). Each recording holds exactly what
            :meth:`get_data` returns of its stream, as :meth:`Amp.start`'s.
            When they finish, ``filename.session.json`` beside the first
            says, for every stream, its recording, its first sample's
            time on its recorder's clock, its nominal and measured rate
            and the raw clock-offset estimates (docs/recordings.md).

        Raises
        ------
        ValueError
            Two streams share a recorder.
        """
        if filename is not None:
            by_recorder = {}
            for stream, amp in self.amps.items():
                by_recorder.setdefault(amp._recorder.ctl.endpoint, []).append(stream)
            for endpoint, streams in by_recorder.items():
                if len(streams) > 1:
                    raise ValueError(f"streams {' and '.join(streams)} share the recorder at {endpoint}: give each "
                                     "stream a recorder of its own ([amp.NAME] recorder in the configuration file)")
        started = []
        try:
            for i, (stream, amp) in enumerate(self.amps.items()):
                amp._recorder.part_of = filename  # each stream's entry goes into the session file
                try:
                    amp.start(None if filename is None else filename if i == 0 else f"{filename}-{stream}")
                finally:
                    amp._recorder.part_of = None
                started.append(amp)
        except BaseException:
            for amp in started:  # all or none: no stream left running, or recording, alone
                try:
                    amp.stop()
                except Exception as exc:  # the first error is the one to raise
                    warnings.warn(f"stopping stream {amp.stream} after a failed start: {exc}", stacklevel=2)
            raise

    def stop(self):
        """Stop every amp (and its recording); the next calls of :meth:`get_data` return every sample up to
        each stop.

        Raises
        ------
        RecordingError
            A stream's recording failed (as :meth:`Amp.stop`); every stream is stopped first.
        """
        error = None
        for amp in self.amps.values():
            try:
                amp.stop()
            except Exception as exc:  # the others stop all the same; the first error is raised
                error = error or exc
        if error is not None:
            raise error

    def get_data(self, timeout: float | None = None) -> dict[str, StreamData]:
        """Every stream's samples since the previous call, their markers and their times.

        Returns at once with what has arrived; waits up to ``timeout``
        (default: :attr:`timeout`) only while no stream has anything new
        (and not once every stream stopped and returned all its samples).
        Each stream raises and warns as :meth:`Amp.get_data` does.

        Returns
        -------
        dict of str to StreamData
            By stream name, every stream, possibly with no rows.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            got = {name: self._read(amp) for name, amp in self.amps.items()}
            remaining = deadline - time.monotonic()
            if remaining <= 0 or any(len(d.data) for d in got.values()) or \
                    all(amp._reader.finished for amp in self.amps.values()):
                return got
            self._wait(min(remaining, 0.1))

    @staticmethod
    def _read(amp: Amp) -> StreamData:
        # What is there now: the waiting for data is done in _wait. A stopped stream's last call
        # waits, as Amp.get_data does, for markers stamped before its last sample and not yet in.
        data, markers = amp._get_data(amp.timeout if amp._reader.stopping else 0.0, stacklevel=5)
        return StreamData(data, markers, amp.sample_times())

    def _wait(self, timeout: float):
        """Until a message reaches any stream's bus (the sockets are this thread's: only polled here)."""
        poller = zmq.Poller()
        for amp in self.amps.values():
            for sock in amp._reader.bus.sockets:
                poller.register(sock, zmq.POLLIN)
        poller.poll(timeout * 1000)

    def close(self):
        """Close every amp's sockets (the services keep running)."""
        for amp in self.amps.values():
            amp.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["StreamData", "Streams"]

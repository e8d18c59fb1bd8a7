"""Write a recording as XDF, the Lab Streaming Layer's interchange format (``mushu convert --to xdf``).

No well-kept Python library writes XDF (pyxdf only reads it), so this
module writes the chunks of the specification
(https://github.com/sccn/xdf/wiki/Specifications) itself; the tests read
every file it writes back with pyxdf.

The file holds, on each amp host's monotonic clock, in seconds:

- one stream of samples per recorded stream (``float32``, the
  recording's channels, labels and units), each sample with its
  acquisition time (:meth:`Recording.sample_times`); lost samples are
  written as NaN, as in the recording. A recording of several streams
  (``mushu_client.Streams.start(NAME)``: ``NAME`` and ``NAME-STREAM``)
  gives one stream each;
- the markers (one ``string`` channel), each at the time of the sample the
  first stream's recording put it on, so a reader that aligns by time
  finds the marker on that sample.

The recorders' estimates of each amp host's clock against their own (each
meta's ``clock_offsets_ns``) become ClockOffset chunks of that stream, as
LabRecorder writes them: ``pyxdf.load_xdf(..., synchronize_clocks=True)``
then gives every stream's times on the recorders' clock (one clock where
the recorders share a host, as under ``mushu up``). Samples are written in
chunks of :data:`SAMPLES_PER_CHUNK`, read from the memory-mapped ``.eeg``.
"""

from __future__ import annotations

import datetime
import socket
import struct
from xml.sax.saxutils import escape

import numpy as np

from mushu_core.recordings import Recording

from .writing import chunks, progress_bar

MAGIC = b"XDF:"
#: Chunk tags of the specification.
FILE_HEADER, STREAM_HEADER, SAMPLES, CLOCK_OFFSET, STREAM_FOOTER = 1, 2, 3, 4, 6
SAMPLES_PER_CHUNK = 4096


def write_xdf(recs: list[Recording], out: str, progress: bool = True):
    """Write recordings ``recs`` (as :func:`~mushu_core.recordings.load` returns them) to XDF file ``out``.

    Each recording is one stream; the markers are those of the first.

    Raises
    ------
    ValueError
        If a recording has no block times (a libmushu recording).
    """

    seconds = [rec.sample_times() / 1e9 for rec in recs]
    offsets = [rec.meta.get("mushu", {}).get("clock_offsets_ns", {}).get("amp", []) for rec in recs]
    markers = sorted(recs[0].marker_samples(), key=lambda m: m[0])
    n0 = len(recs[0].data)
    marker_times = [seconds[0][min(s, n0 - 1)] for s, _ in markers] if n0 else []
    markers_id = len(recs) + 1
    with open(out, "xb") as f:
        f.write(MAGIC)
        f.write(_chunk(FILE_HEADER, _xml(f"<info><version>1.0</version><datetime>{_iso(recs[0])}</datetime>"
                                         f"<writer>mushu</writer></info>")))
        for sid, rec in enumerate(recs, 1):
            f.write(_chunk(STREAM_HEADER, struct.pack("<I", sid) + _xml(_samples_info(rec))))
        f.write(_chunk(STREAM_HEADER, struct.pack("<I", markers_id) + _xml(_markers_info(recs[0]))))
        with progress_bar(sum(len(rec.data) for rec in recs), "XDF", progress) as bar:
            for sid, (rec, t) in enumerate(zip(recs, seconds), 1):
                n, n_ch = rec.data.shape
                for a, b in chunks(n, n_ch):
                    for c in range(a, b, SAMPLES_PER_CHUNK):
                        d = min(b, c + SAMPLES_PER_CHUNK)
                        f.write(_chunk(SAMPLES, _numeric_samples(sid, t[c:d], rec.data[c:d])))
                    bar.update(b - a)
        if markers:
            f.write(_chunk(SAMPLES, _string_samples(markers_id, list(zip(marker_times, (m[1] for m in markers))))))
        clocks = [*offsets, offsets[0]]  # the markers are placed on the first stream's samples: its clock
        for sid, stream_offsets in enumerate(clocks, 1):
            for o in stream_offsets:  # remote = local + offset_ns: LabRecorder's (remote time, local - remote)
                f.write(_chunk(CLOCK_OFFSET, struct.pack("<Idd", sid, (o["t_ns"] + o["offset_ns"]) / 1e9,
                                                         -o["offset_ns"] / 1e9)))
        for sid, (rec, t) in enumerate(zip(recs, seconds), 1):
            f.write(_chunk(STREAM_FOOTER, struct.pack("<I", sid) + _xml(_footer(t[:1], t[-1:], len(rec.data),
                                                                                 offsets[sid - 1]))))
        f.write(_chunk(STREAM_FOOTER, struct.pack("<I", markers_id) + _xml(_footer(
            marker_times[:1], marker_times[-1:], len(markers), offsets[0]))))


# -- the chunks ----------------------------------------------------------------------


def _varlen(value: int) -> bytes:
    """The specification's variable-length integer: 1 byte saying 1, 4 or 8, then the value."""
    if value < 1 << 8:
        return struct.pack("<BB", 1, value)
    if value < 1 << 32:
        return struct.pack("<BI", 4, value)
    return struct.pack("<BQ", 8, value)


def _chunk(tag: int, content: bytes) -> bytes:
    return _varlen(2 + len(content)) + struct.pack("<H", tag) + content


def _xml(body: str) -> bytes:
    return ('<?xml version="1.0"?>' + body).encode("utf-8")


def _numeric_samples(sid: int, seconds: np.ndarray, data: np.ndarray) -> bytes:
    """Samples of a float32 stream, each with its timestamp (8 bytes)."""
    n, n_ch = data.shape
    rows = np.empty(n, np.dtype([("size", "u1"), ("t", "<f8"), ("v", "<f4", (n_ch,))]))
    rows["size"], rows["t"], rows["v"] = 8, seconds, data
    return struct.pack("<I", sid) + _varlen(n) + rows.tobytes()


def _string_samples(sid: int, samples: list) -> bytes:
    """Samples of a one-channel string stream: ``[(seconds, text)]``."""
    parts = [struct.pack("<I", sid), _varlen(len(samples))]
    for t, text in samples:
        raw = text.encode("utf-8")
        parts += [struct.pack("<Bd", 8, t), _varlen(len(raw)), raw]
    return b"".join(parts)


# -- the XML ---------------------------------------------------------------------------


def _iso(rec: Recording) -> str:
    wall = rec.meta.get("mushu", {}).get("start_wall")
    when = datetime.datetime.now(datetime.timezone.utc) if wall is None else \
        datetime.datetime.fromtimestamp(wall, datetime.timezone.utc)
    return when.isoformat()


def _common(rec: Recording, kind: str) -> str:
    session = escape(str(rec.meta.get("mushu", {}).get("amp_session") or ""))
    return (f"<source_id>mushu:{session}:{kind}</source_id><version>1.1</version><created_at>0</created_at>"
            f"<uid>{session}-{kind}</uid><session_id>{session}</session_id>"
            f"<hostname>{escape(socket.gethostname())}</hostname>")


def _samples_info(rec: Recording) -> str:
    mushu = rec.meta.get("mushu", {})
    stream = str(mushu.get("stream") or "eeg")
    units = mushu.get("units") or ["uV"] * len(rec.channels)
    channels = "".join(f"<channel><label>{escape(str(c))}</label><unit>{escape(_unit(u))}</unit>"
                       f"<type>EEG</type></channel>" for c, u in zip(rec.channels, units))
    measured = mushu.get("fs_measured")
    return (f"<info><name>{escape(stream)}</name>"
            f"<type>EEG</type><channel_count>{len(rec.channels)}</channel_count>"
            f"<nominal_srate>{rec.fs!r}</nominal_srate><channel_format>float32</channel_format>"
            f"{_common(rec, stream)}<desc><channels>{channels}</channels>"
            f"<acquisition><manufacturer>mushu</manufacturer><model>{escape(str(rec.meta.get('Amp', '')))}"
            f"</model></acquisition>"
            + (f"<mushu><fs_measured>{measured!r}</fs_measured><drift_ppm>{mushu.get('drift_ppm')!r}"
               f"</drift_ppm></mushu>" if measured else "")
            + "</desc></info>")


def _markers_info(rec: Recording) -> str:
    return ("<info><name>mushu markers</name><type>Markers</type><channel_count>1</channel_count>"
            "<nominal_srate>0</nominal_srate><channel_format>string</channel_format>"
            f"{_common(rec, 'markers')}<desc/></info>")


def _unit(unit: str) -> str:
    """The unit as LSL's conventions name it (``microvolts``); others as recorded."""
    return {"uV": "microvolts", "µV": "microvolts", "mV": "millivolts", "V": "volts"}.get(unit, unit)


def _footer(first: list, last: list, count: int, offsets: list) -> str:
    clock = "".join(f"<offset><time>{(o['t_ns'] + o['offset_ns']) / 1e9!r}</time>"
                    f"<value>{-o['offset_ns'] / 1e9!r}</value></offset>" for o in offsets)
    first_t = repr(float(first[0])) if len(first) else "0"
    last_t = repr(float(last[0])) if len(last) else "0"
    return (f"<info><first_timestamp>{first_t}</first_timestamp><last_timestamp>{last_t}</last_timestamp>"
            f"<sample_count>{count}</sample_count><clock_offsets>{clock}</clock_offsets></info>")

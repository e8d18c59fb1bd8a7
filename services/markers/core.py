"""The markers service's core: framing, label rules, numbering and history.

No sockets here. The service (``service.py``) reads bytes, stamps them and
hands them to :class:`MarkersCore`, which turns them into numbered
:class:`~mushu_core.wire.Marker` messages, keeps the recent ones for
late consumers and counts (and logs) everything it refuses.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import re
import uuid

from mushu_core import __version__, clock
from mushu_core.clock import host_clock_id, now_ns
from mushu_core.process import ThrottledLog
from mushu_core.wire import (MAX_LABEL_LENGTH, PROTOCOL_VERSION, Marker, MarkerStreamInfo, ProtocolError, ReplyFrames,
                             dispatch, encode_marker, encode_marker_info, info_topic, marker_topic, split_topic,
                             unpack_map)

from .journal import MarkerJournal
from .senders import IPAddress, SenderPolicy

log = logging.getLogger("mushu.markers")

#: A label of MAX_LABEL_LENGTH characters takes at most this many UTF-8
#: bytes; and any byte string longer than this decodes (even with
#: replacement characters) to more than MAX_LABEL_LENGTH characters.
MAX_LABEL_BYTES = 4 * MAX_LABEL_LENGTH
#: Longest line a TCP connection may buffer: a label plus a ``\r``.
MAX_LINE_BYTES = MAX_LABEL_BYTES + 1
DEFAULT_HISTORY_MARKERS = 100_000
DEFAULT_HISTORY_BYTES = 32 << 20
#: The journal is rewritten with the history when it is larger than twice the history and this.
JOURNAL_SLACK_BYTES = 1 << 20
#: Most markers one ``history`` reply carries; the consumer asks again for more.
MAX_HISTORY_REPLY = 20_000

# C0 and C1 control characters and DEL, except tab.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# First bytes of a msgpack map (fixmap, map16, map32).
_MAP_START = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}

#: Counters reported by ``status``; the ones after "other_stream_subscriptions" count problems.
COUNTERS = (
    "markers", "tcp_markers", "udp_markers", "zmq_markers", "other_stream_subscriptions",
    "empty_lines", "empty_datagrams", "too_long", "invalid_utf8", "control_chars",
    "bad_zmq_messages", "partial_lines_dropped", "read_errors",
    "connections_accepted", "connections_closed", "connections_refused", "connections_idle_closed",
    "connections_refused_sender", "refused_address", "rate_limited", "bad_requests", "bad_subscriptions",
    "journal_errors",
)


class LineFramer:
    """Split one TCP connection's byte stream into lines stamped at their first byte.

    Feed it every read with the time the read returned; it returns the lines
    the read completed, each with the stamp of the read that delivered the
    line's first byte. A line that grows past ``max_bytes`` without a newline
    is returned at once, cut to ``max_bytes + 1`` bytes (so it is still too
    long for :func:`decode_label`), and the rest of it up to the next newline
    is discarded: the buffer never holds more than ``max_bytes`` bytes.

    Parameters
    ----------
    max_bytes : int
        Longest line kept whole, without its ``\\n``.
    """

    def __init__(self, max_bytes: int = MAX_LINE_BYTES):
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._t_first = 0
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held back."""
        return len(self._buf)

    def feed(self, data: bytes, t_ns: int) -> list[tuple[int, bytes]]:
        """Add one read; return the completed ``(t_ns_of_first_byte, line)`` pairs.

        Lines are returned without their ``\\n`` (a ``\\r`` before it is
        left for :func:`decode_label`).
        """
        lines = []
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            if self._discarding:
                self._discarding = False
            elif self._buf:
                lines.append(self._cut(self._t_first, bytes(self._buf) + data[start:nl]))
                self._buf.clear()
            else:
                lines.append(self._cut(t_ns, data[start:nl]))
            start = nl + 1
        if start < len(data) and not self._discarding:
            if not self._buf:
                self._t_first = t_ns
            self._buf += data[start:start + self.max_bytes + 1 - len(self._buf)]
            if len(self._buf) > self.max_bytes:
                lines.append((self._t_first, bytes(self._buf)))
                self._buf.clear()
                self._discarding = True
        return lines

    def finish(self) -> list[tuple[int, bytes]]:
        """The unfinished line at the end of the stream, as a line (or nothing)."""
        if not self._buf:
            return []
        line = (self._t_first, bytes(self._buf))
        self._buf.clear()
        return [line]

    def _cut(self, t_ns: int, line: bytes) -> tuple[int, bytes]:
        return t_ns, line[:self.max_bytes + 1]


def split_datagram(data: bytes) -> list[bytes]:
    """The lines of one UDP datagram: the datagram ends its last line."""
    lines = data.split(b"\n")
    if len(lines) > 1 and not lines[-1]:
        lines.pop()
    return lines


class LabelError(ValueError):
    """A label that is refused; ``kind`` names the counter it goes to."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def decode_label(raw: bytes, max_bytes: int = MAX_LABEL_BYTES) -> tuple[str, list[str]]:
    """Decode one line of ingress bytes into ``(label, flags)``.

    One trailing ``\\r`` is a line ending and is dropped. Bytes that are not
    UTF-8 become U+FFFD (flag ``"invalid_utf8"``); see :func:`check_label`
    for the rest.

    Raises
    ------
    LabelError
        For an empty line (kind ``"empty_lines"``) or a label over
        ``max_bytes`` bytes or MAX_LABEL_LENGTH characters (kind ``"too_long"``).
    """
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if len(raw) > max_bytes:
        raise LabelError("too_long", f"label of {len(raw)} bytes refused (limit {max_bytes} bytes)")
    try:
        return check_label(raw.decode("utf-8"), [])
    except UnicodeDecodeError:
        return check_label(raw.decode("utf-8", "replace"), ["invalid_utf8"])


def check_label(label: str, flags: list[str]) -> tuple[str, list[str]]:
    """Apply the label rules to a decoded label; return ``(label, flags)``.

    Control characters other than tab (C0, DEL, C1) are replaced by U+FFFD
    and flagged ``"control_chars"``, so a label is always one printable line.
    """
    if not label:
        raise LabelError("empty_lines", "empty line ignored")
    if len(label) > MAX_LABEL_LENGTH:
        raise LabelError("too_long", f"label of {len(label)} characters refused (limit {MAX_LABEL_LENGTH})")
    label, n = _CONTROL.subn("\ufffd", label)
    if n:
        flags.append("control_chars")
    return label, flags


class MarkerLog:
    """Header frames of the most recent markers, numbered from 0 without gaps.

    Bounded both in markers and in bytes; the oldest go first.
    """

    def __init__(self, max_markers: int = DEFAULT_HISTORY_MARKERS, max_bytes: int = DEFAULT_HISTORY_BYTES):
        self.max_markers = max(1, max_markers)
        self.max_bytes = max_bytes
        self.next_seq = 0
        self.nbytes = 0
        self._frames: collections.deque[bytes] = collections.deque()

    def __len__(self):
        return len(self._frames)

    @property
    def oldest_seq(self) -> int:
        """Sequence number of the oldest marker kept (``next_seq`` if none)."""
        return self.next_seq - len(self._frames)

    def append(self, frame: bytes):
        """Keep ``frame`` as marker number ``next_seq``."""
        self._frames.append(frame)
        self.nbytes += len(frame)
        self.next_seq += 1
        while len(self._frames) > self.max_markers or (self.nbytes > self.max_bytes and len(self._frames) > 1):
            self.nbytes -= len(self._frames.popleft())

    def since(self, seq: int, limit: int = MAX_HISTORY_REPLY) -> list[bytes]:
        """Frames of the markers from ``seq`` (or the oldest kept) on, at most ``limit``."""
        start = min(max(0, seq - self.oldest_seq), len(self._frames))
        return list(itertools.islice(self._frames, start, start + limit))


class _ProblemLog:
    """Count problems by kind and log them, throttled (:class:`mushu_core.process.ThrottledLog`)."""

    def __init__(self, counts: dict):
        self.counts = counts
        self._log = ThrottledLog(log)

    def __call__(self, kind: str, fmt: str, *args):
        self.counts[kind] += 1
        self._log(kind, fmt, *args)


#: Commands any listed client may send: all of them, the markers service has
#: nothing to control (docs/security.md). Sending markers is the ingress's.
READ_ONLY = frozenset({"ping", "status", "time", "history"})


class MarkersCore:
    """State of the markers service and the rules of its control commands.

    Parameters
    ----------
    stream : str
        Name of the published marker stream.
    history_markers, history_bytes : int
        Bounds of the history kept for late consumers.
    policy : SenderPolicy
        Who may send over TCP and UDP, with how many connections and how fast.
    max_label_bytes : int
        Longest label in UTF-8 bytes (at most MAX_LABEL_BYTES); longer ones are refused.
    journal : MarkerJournal, optional
        Where every marker is written before it is published; the session and
        history it holds are resumed (:mod:`mushu_markers.journal`).
    """

    def __init__(self, stream: str = "markers", history_markers: int = DEFAULT_HISTORY_MARKERS,
                 history_bytes: int = DEFAULT_HISTORY_BYTES, policy: SenderPolicy | None = None,
                 max_label_bytes: int = MAX_LABEL_BYTES, journal: MarkerJournal | None = None):
        if not 1 <= max_label_bytes <= MAX_LABEL_BYTES:
            raise ValueError(f"the label limit must be 1 to {MAX_LABEL_BYTES} bytes, not {max_label_bytes}")
        self.policy = policy if policy is not None else SenderPolicy()
        self.max_label_bytes = max_label_bytes
        self.stream = stream
        self.session = uuid.uuid4().hex
        self.log = MarkerLog(history_markers, history_bytes)
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.problem = _ProblemLog(self.counts)
        #: Markers of a session a journal resumed (0: a new session).
        self.resumed = 0
        self.journal = journal
        if journal is not None:
            self._resume(journal)
        self.started_ns = now_ns()
        #: The latest heartbeat's time: every marker stamped up to it is published.
        self.promised_ns: int | None = None
        #: Set by the service: what it is bound to.
        self.endpoints: dict = {}
        self.commands = {"ping": self.cmd_ping, "status": self.cmd_status,
                         "time": self.cmd_time, "history": self.cmd_history}

    # -- ingress ----------------------------------------------------------

    def admit_connection(self, sender: IPAddress, source: str) -> bool:
        """Whether to keep a new TCP connection from ``sender``; a refusal is counted and logged."""
        refusal = self.policy.refuse_connection(sender)
        if refusal is None:
            self.policy.opened(sender)
            self.counts["connections_accepted"] += 1
            return True
        why = {"refused_address": "address not in the allowlist",
               "connections_refused": f"{self.policy.connections} connections open (limit)",
               "connections_refused_sender": f"{self.policy.open[sender]} connections open from this sender "
                                             f"(limit per sender)"}[refusal]
        self.problem(refusal, "%s: connection refused: %s", source, why)
        return False

    def connection_closed(self, sender: IPAddress):
        self.policy.closed(sender)
        self.counts["connections_closed"] += 1

    def ingest_lines(self, lines, source: str, counter: str, sender: IPAddress | None = None) -> list[list]:
        """Turn ``(t_ns, raw_line)`` pairs from ``source`` into marker messages to publish.

        With a ``sender`` address, each non-empty line takes one token of the
        sender's rate limit; a line without one is refused (``rate_limited``).
        """
        out = []
        for t_ns, raw in lines:
            if sender is not None and raw not in (b"", b"\r") and not self.policy.take(sender, t_ns):
                self.problem("rate_limited", "%s: over %g markers/s (burst %d), marker refused: %.60r",
                             source, self.policy.buckets.rate, self.policy.buckets.burst, raw[:60])
                continue
            try:
                label, flags = decode_label(raw, self.max_label_bytes)
            except LabelError as exc:
                self._refused(exc, source, raw)
                continue
            out.append(self._publish(t_ns, label, source, flags, counter))
        return out

    def ingest_datagram(self, data: bytes, t_ns: int, source: str, sender: IPAddress | None = None) -> list[list]:
        """Marker messages from one UDP datagram received at ``t_ns`` from ``sender``."""
        if sender is not None and not self.policy.allowed(sender):
            self.problem("refused_address", "%s: datagram dropped: address not in the allowlist", source)
            return []
        if not data:
            self.problem("empty_datagrams", "%s: empty datagram ignored", source)
            return []
        return self.ingest_lines([(t_ns, line) for line in split_datagram(data)], source, "udp_markers", sender)

    def ingest_zmq(self, frames: list[bytes], t_ns: int) -> list[list]:
        """Marker messages from one message of the ZeroMQ ingress received at ``t_ns``.

        The message is one frame: a msgpack map ``{"label": str, "t_ns":
        int or nil}`` (``t_ns`` is the sender's monotonic clock; given, it
        replaces the receive time and the marker is flagged
        ``"sender_time"``), or else a plain UTF-8 label.
        """
        if len(frames) != 1:
            self.problem("bad_zmq_messages", "zmq: message of %d frames refused (expected 1)", len(frames))
            return []
        frame = frames[0]
        flags = []
        m = self._as_map(frame)
        if m is None:
            try:
                label, flags = decode_label(frame, self.max_label_bytes)
            except LabelError as exc:
                self._refused(exc, "zmq", frame)
                return []
        else:
            label, sender_t = m.get("label"), m.get("t_ns")
            if type(label) is not str or not (sender_t is None or type(sender_t) is int and
                                              -(2**63) <= sender_t < 2**63):
                self.problem("bad_zmq_messages", "zmq: map refused: needs 'label' (string) and optionally "
                             "'t_ns' (64-bit integer), got label=%.80r t_ns=%.40r", label, sender_t)
                return []
            if sender_t is not None:
                # the sender's monotonic clock, plus any artificial offset of this service
                t_ns, flags = sender_t + clock.offset_ns(), ["sender_time"]
            try:
                if len(label.encode("utf-8", "replace")) > self.max_label_bytes:
                    raise LabelError("too_long", f"label over {self.max_label_bytes} bytes refused")
                label, flags = check_label(label, flags)
            except LabelError as exc:
                self._refused(exc, "zmq", label.encode("utf-8", "replace"))
                return []
        return [self._publish(t_ns, label, "zmq", flags, "zmq_markers")]

    @staticmethod
    def _as_map(frame: bytes) -> dict | None:
        if not frame or frame[0] not in _MAP_START:
            return None
        try:
            return unpack_map(frame, "marker ingress")
        except ProtocolError:
            return None

    def _refused(self, exc: LabelError, source: str, raw: bytes):
        if exc.kind == "empty_lines":
            self.counts["empty_lines"] += 1
        else:
            self.problem(exc.kind, "%s: %s: %.60r...", source, exc, raw[:60])

    def _publish(self, t_ns: int, label: str, source: str, flags: list[str], counter: str) -> list:
        for flag in flags:
            if flag in self.counts:
                self.problem(flag, "%s: marker %d published with flag %s: %.80r",
                             source, self.log.next_seq, flag, label)
        marker = Marker(self.stream, self.session, self.log.next_seq, t_ns, label, source, tuple(flags))
        frames = encode_marker(marker)
        if self.journal is not None:
            self._journal(frames[1])
        self.log.append(frames[1])
        self.counts["markers"] += 1
        self.counts[counter] += 1
        return frames

    def _resume(self, journal: MarkerJournal):
        def keep(seq: int, frame: bytes):
            if not self.resumed:
                self.log.next_seq = seq  # the journal's first marker is the history's oldest
            self.log.append(frame)
            self.resumed += 1

        session = journal.restore(keep)
        if session is None:
            journal.begin(self.session, [])
            return
        self.session = session
        journal.open()
        log.warning("resumed marker session %s from %s: %d markers, next seq %d",
                    self.session, journal.path, self.resumed, self.log.next_seq)

    def _journal(self, frame: bytes):
        """Write the marker to the journal before it goes out; a full disk costs the journal, not the marker."""
        j = self.journal
        try:
            j.append(frame)
            if j.size > 2 * (self.log.nbytes + 4 * len(self.log)) + JOURNAL_SLACK_BYTES:
                j.begin(self.session, itertools.chain(self.log.since(self.log.oldest_seq, len(self.log)), (frame,)))
        except OSError as exc:
            self.problem("journal_errors", "marker journal %s: %s (markers are published, but a restarted "
                         "service will start a new session; free the disk)", j.path, exc)

    def subscription(self, message: bytes) -> tuple[bool, bytes] | None:
        """``(subscribe, topic)`` of a message a subscriber sent the publisher, or None if it is bad.

        A bad one (``bad_subscriptions``) is not a (un)subscription, or names
        a topic that is no prefix of this service's topics: it matches nothing
        published, yet ZeroMQ keeps each such topic for the subscriber's
        connection until it closes. A topic of another stream (``data/eeg/``)
        is None too, but no problem: one SUB socket that follows the amp and
        the markers (the client's, the recorder's) sends both their topics to
        both; it is counted in ``other_stream_subscriptions``.
        """
        topic = message[1:]
        if message[:1] in (b"\x00", b"\x01"):
            if any(t.startswith(topic) for t in (marker_topic(self.stream), info_topic(self.stream))):
                return message[:1] == b"\x01", topic
            try:
                split_topic(topic)
            except ProtocolError:
                pass
            else:
                self.counts["other_stream_subscriptions"] += 1
                return None
        self.problem("bad_subscriptions", "publisher: subscription message %.40r refused (not a prefix of "
                     "this stream's topics)", message[:40])
        return None

    def heartbeat(self, t_ns: int | None = None) -> list:
        """The marker stream-info message: every marker stamped up to ``t_ns`` (default now) is published."""
        t_ns = now_ns() if t_ns is None else t_ns
        if self.promised_ns is None or t_ns > self.promised_ns:
            self.promised_ns = t_ns
        return encode_marker_info(MarkerStreamInfo(self.stream, self.session, self.log.next_seq - 1, t_ns))

    # -- control commands -------------------------------------------------

    def handle(self, cmd: str, args: dict):
        """Run control command ``cmd``; return its result or raise."""
        return dispatch(self.commands, cmd, args)

    def cmd_ping(self):
        return {"service": "markers", "version": __version__, "protocol": PROTOCOL_VERSION,
                "stream": self.stream, "session": self.session}

    def cmd_time(self):
        return {"t_ns": now_ns(), "clock": host_clock_id()}

    def cmd_status(self):
        return {
            "service": "markers", "stream": self.stream, "session": self.session,
            "pid": os.getpid(), "version": __version__, "protocol": PROTOCOL_VERSION,
            "uptime_s": (now_ns() - self.started_ns) / 1e9,
            "last_seq": self.log.next_seq - 1, "promised_ns": self.promised_ns,
            "endpoints": dict(self.endpoints),
            "connections": self.policy.connections, "max_connections": self.policy.max_connections,
            "limits": {**self.policy.describe(), "max_label_bytes": self.max_label_bytes},
            "counts": dict(self.counts),
            "history": {"markers": len(self.log), "bytes": self.log.nbytes, "oldest_seq": self.log.oldest_seq,
                        "limit_markers": self.log.max_markers, "limit_bytes": self.log.max_bytes},
            "journal": None if self.journal is None else
            {"path": self.journal.path, "bytes": self.journal.size, "resumed_markers": self.resumed},
        }

    def cmd_history(self, session: str, from_seq: int = 0):
        """Markers of ``session`` from ``from_seq`` on (at most MAX_HISTORY_REPLY).

        The reply's extra frames are the markers' header frames, each one a
        :func:`~mushu_core.wire.decode_marker` input.
        """
        if session != self.session:
            raise ValueError(f"session {session!r} is not in the history (current session {self.session!r})")
        if type(from_seq) is not int or not 0 <= from_seq < 2**63:
            raise TypeError(f"from_seq must be a non-negative 64-bit integer, not {from_seq!r:.80}")
        frames = self.log.since(from_seq)
        result = {"session": self.session, "markers": len(frames), "oldest_seq": self.log.oldest_seq,
                  "last_seq": self.log.next_seq - 1}
        return ReplyFrames(result, frames)

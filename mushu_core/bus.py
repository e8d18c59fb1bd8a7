"""Reading the bus: decoded messages from a connected SUB socket.

Every consumer of the bus (the client, the recorder, the LSL bridge) drains
its SUB sockets the same way: take what is waiting, decode it with
:mod:`mushu_core.wire`, count and log what does not decode, and wait
when nothing is waiting. :class:`BusReader` is that loop's one step.

It runs once per block (a thousand times a second at 1 ms blocks), so it
avoids what costs there: a ``zmq.Again`` exception per empty read (a poll
with timeout 0 is four times cheaper), a new ``zmq.Poller`` per wait, and
``getsockopt(RCVMORE)`` (pyzmq converts the option to an enum on every
call; a frame says it for itself). A block's payload stays in its zmq frame,
without a copy: the consumer copies it once, as it hands samples out.

A consumer that follows several streams (the client: data and markers)
reads them from one SUB socket connected to every publisher: one poll per
wait, not one per stream, and messages in the order they arrived.
:meth:`BusReader.poll` notes whether a message is waiting, so that
:meth:`BusReader.receive` need not ask again.

A publisher also binds a local IPC endpoint (:func:`local_endpoint`) and
offers it in its status; a consumer on the same host and network namespace
subscribes there instead of over TCP (:func:`choose_endpoint`): a Unix
socket instead of the loopback TCP stack costs the amp a quarter less CPU
and a block about 30 us less latency.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import time

import zmq

from mushu_core import security
from mushu_core.clock import host_clock_id
from mushu_core.config import setting_flag
from mushu_core.wire import DATA, Block, ProtocolError, decode_block_frames, decode_message, split_topic

log = logging.getLogger("mushu.bus")

#: Messages a subscriber queues per publisher, at most, before the bus drops
#: for it (then its owner refetches from the publisher's history).
RCVHWM = 100_000
#: Bytes of messages a subscriber queues per publisher, at most. ZeroMQ counts
#: messages, not bytes: 100,000 one-MiB blocks would be 100 GB, so the
#: high-water mark is the budget in messages of the largest block
#: (:func:`queue_hwm`).
QUEUE_BYTES = 256 * 2**20
#: The lowest high-water mark a byte budget sets, in messages.
MIN_HWM = 16
# Plain ints: pyzmq's enum constants cost an enum lookup on every use.
_POLLIN, _RCVMORE = int(zmq.POLLIN), int(zmq.RCVMORE)


def queue_hwm(budget: int, most: int, message_bytes: int) -> int:
    """The high-water mark that queues at most ``budget`` bytes of ``message_bytes`` messages.

    Parameters
    ----------
    budget : int
        Bytes one connection may queue.
    most : int
        The mark for small messages, in messages.
    message_bytes : int
        The largest message the queue holds.

    Returns
    -------
    int
        ``budget // message_bytes`` messages, within ``[MIN_HWM, most]``.

    Notes
    -----
    A socket's high-water mark is set before it binds or connects and never
    changed after: libzmq 4.3 sends a new mark to the peer of every pipe
    the socket has, including pipes whose peer is being torn down after a
    disconnection, and that command can reach freed memory in libzmq's I/O
    thread (a segmentation fault; ``docs/architecture.md``, "Threads and
    buffers").
    """
    if budget <= 0 or most <= 0:
        raise ValueError(f"a queue needs a positive size: {budget} bytes, {most} messages")
    return max(MIN_HWM, min(most, budget // max(1, message_bytes)))


def size_class(nbytes: int) -> int:
    """``nbytes`` rounded up to a power of two: block sizes that differ a little share a class."""
    return 1 << max(0, nbytes - 1).bit_length()


class BusReader:
    """Decoded messages from a SUB socket of its own, without waiting unless asked to.

    Use :func:`subscribe` to make one.

    The reader keeps the socket's queue within a byte budget without
    changing its high-water mark on the live socket (see :func:`queue_hwm`):
    when a block of a new, larger size class arrives, it opens a new socket
    with the lower mark, connected and subscribed as the old one, reads what
    the old one still holds and then closes it. The new socket's first
    messages may repeat the old one's last, and messages published while it
    connects may be missing; consumers drop repeats by sample index or
    sequence number and fetch what is missing from the history, as they do
    for any drop on the bus.

    Parameters
    ----------
    endpoints : list of str
        Publishers to connect to.
    topics : list of bytes
        Topic prefixes to subscribe to.
    keys : mushu_core.security.Keys, optional
        This process's CURVE certificate (None: no encryption).
    rcvhwm : int
        Messages queued per publisher, at most.
    queue_bytes : int
        Bytes of messages queued per publisher, at most.
    watch : bool
        Watch the socket's handshakes (:attr:`watch`).
    message_bytes : int
        The largest message other than a block the socket may receive (a
        marker): the high-water mark leaves room for the budget of those.

    Attributes
    ----------
    sock : zmq.Socket
        The socket being read; another one after a reopening (poll it
        afresh each time, e.g. with ``zmq.zmq_poll``).
    bad_messages : int
        Messages that did not decode (logged and skipped).
    hwm : int
        The socket's high-water mark, messages.
    reopened : int
        How many times the socket was replaced by one with a lower mark.
    watch : mushu_core.security.HandshakeWatch or None
        The socket's handshake watch (``watch=True``), from before it connects,
        so that a refused handshake can be told apart from silence.
    """

    def __init__(self, endpoints: list[str], topics: list[bytes], keys: security.Keys | None = None,
                 rcvhwm: int = RCVHWM, queue_bytes: int = QUEUE_BYTES, watch: bool = False,
                 message_bytes: int = 0):
        self.endpoints = list(endpoints)
        self.topics = list(topics)
        self.keys = keys
        self.budget, self.most = queue_bytes, rcvhwm
        self.source = " and ".join(self.endpoints)
        self.bad_messages = 0
        self.reopened = 0
        #: The largest block received, bytes.
        self.largest = 0
        self.hwm = queue_hwm(queue_bytes, rcvhwm, size_class(message_bytes) if message_bytes else 1)
        #: What the last :meth:`poll` found: True (a message is waiting),
        #: False (none was), None (not known: :meth:`receive` polls).
        self.ready: bool | None = None
        #: ``time.monotonic_ns()`` when :meth:`poll` last returned.
        self.polled_ns = 0
        self._watching = watch
        self.watch: security.HandshakeWatch | None = None
        self._old: zmq.Socket | None = None  # the socket replaced, until it has been read empty
        self._old_watch: security.HandshakeWatch | None = None
        self._open()

    def _open(self):
        """A new socket with the mark :attr:`hwm`, connected and subscribed; it becomes :attr:`sock`."""
        sock = zmq.Context.instance().socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self.hwm)  # before connect(): never changed after
            security.curve_client(sock, self.keys)
            watch = security.HandshakeWatch(sock, self.source, self.keys) if self._watching else None
            for endpoint in self.endpoints:
                sock.connect(endpoint)
            for topic in self.topics:
                sock.setsockopt(zmq.SUBSCRIBE, topic)
        except BaseException:
            sock.close(linger=0)
            raise
        self.sock, self.watch = sock, watch
        self._items = [(sock, _POLLIN)]

    @property
    def sockets(self) -> list:
        """The sockets to poll for this reader: :attr:`sock`, and the replaced one while it holds messages."""
        return [self.sock] if self._old is None else [self._old, self.sock]

    def unsubscribe(self, topic: bytes):
        """Stop receiving ``topic`` (a prefix given to :func:`subscribe`)."""
        self.topics.remove(topic)
        self.sock.setsockopt(zmq.UNSUBSCRIBE, topic)

    def connect(self, endpoint: str):
        """Also read the publisher at ``endpoint``."""
        self.sock.connect(endpoint)
        self.endpoints.append(endpoint)
        self.source = " and ".join(self.endpoints)

    def disconnect(self, endpoint: str):
        """Stop reading the publisher at ``endpoint``."""
        self.endpoints.remove(endpoint)
        self.source = " and ".join(self.endpoints)
        self.sock.disconnect(endpoint)

    def poll(self, timeout: float = 0.0) -> bool:
        """Wait up to ``timeout`` s for a message; True if one is waiting (:attr:`ready`)."""
        if self._old is not None:
            if zmq.zmq_poll([(self._old, _POLLIN)], 0):
                self.ready = None  # it waits on the old socket, which receive() reads first
                self.polled_ns = time.monotonic_ns()
                return True
            self._close_old()
        self.ready = bool(zmq.zmq_poll(self._items, max(0, math.ceil(timeout * 1000))))
        self.polled_ns = time.monotonic_ns()
        return self.ready

    def receive(self):
        """Return the next decoded message, or None if none is waiting.

        A malformed message is counted in :attr:`bad_messages`, logged and
        skipped; the message after it is returned.
        """
        if self._old is not None:
            msg = self._receive_old()
            if msg is not None:
                return msg
        sock, items, poll = self.sock, self._items, zmq.zmq_poll
        known, self.ready = self.ready, (False if self.ready is False else None)
        if known is False:  # the last poll found nothing; only a new poll or wait can tell more
            return None
        while known or poll(items, 0):
            known = False
            msg = self._read(sock)
            if msg is not None:
                return msg
        return None

    def _read(self, sock: zmq.Socket):
        """The message waiting on ``sock``, decoded; None if it is malformed (counted and logged)."""
        first = sock.recv(copy=False)
        try:
            topic = first.bytes
            if topic.startswith(DATA):
                return self._block(sock, topic, first.more)
            frames = [topic]
            if first.more:
                frames.append(sock.recv())
                while sock.get(_RCVMORE):
                    frames.append(sock.recv())
            return decode_message(frames)
        except ProtocolError as exc:
            while sock.get(_RCVMORE):  # the rest of a malformed message
                sock.recv(copy=False)
            self.bad_messages += 1
            log.warning("dropped a malformed message from %s: %s", self.source, exc)
            return None

    def _receive_old(self):
        """The next message the replaced socket still holds; None once it is empty (then it is closed)."""
        old = self._old
        while zmq.zmq_poll([(old, _POLLIN)], 0):
            msg = self._read(old)
            if msg is not None:
                return msg
        self._close_old()
        return None

    def _close_old(self):
        if self._old_watch is not None:
            self._old_watch.close()
        self._old.close(linger=0)
        self._old = self._old_watch = None

    def forget(self):
        """Forget what a poll found: the next :meth:`receive` asks the socket itself."""
        self.ready = None

    def forget_older_than(self, age_ns: int):
        """Forget what the last poll found if it is more than ``age_ns`` old."""
        if time.monotonic_ns() - self.polled_ns > age_ns:
            self.ready = None

    def close(self):
        if self._old is not None:
            self._close_old()
        if self.watch is not None:
            self.watch.close()
        self.sock.close(linger=0)

    def _block(self, sock: zmq.Socket, topic: bytes, more: bool) -> Block:
        """The rest of a data message: ``[header, payload]``."""
        _prefix, stream = split_topic(topic)
        if not more:
            raise ProtocolError("data message has 1 frame, expected 3")
        header = sock.recv(copy=False)
        if not header.more:
            raise ProtocolError("data message has 2 frames, expected 3")
        payload = sock.recv(copy=False)
        block = decode_block_frames(header.bytes, payload, stream)
        if payload.more:
            raise ProtocolError("data message has more than 3 frames")
        if block.data.nbytes > self.largest:
            self._grew(block.data.nbytes)
        return block

    def _grew(self, nbytes: int):
        """A block of ``nbytes``, the largest yet: reopen with a lower mark if the budget needs one."""
        self.largest = nbytes
        hwm = queue_hwm(self.budget, self.most, size_class(nbytes))
        if hwm >= self.hwm:
            return
        if self._old is not None:  # still reading the one before: what it holds comes from the history
            self._close_old()
        self._old, self._old_watch = self.sock, self.watch
        self.hwm = hwm
        self._open()
        self.ready = None
        self.reopened += 1
        log.info("blocks of %d bytes from %s: reading with a queue of %d messages (%d MiB at most)",
                 nbytes, self.source, hwm, self.budget >> 20)


def subscribe(endpoints: str | list[str], topics: list[bytes], keys: security.Keys | None = None,
              rcvhwm: int = RCVHWM, watch: bool = False, queue_bytes: int = QUEUE_BYTES,
              message_bytes: int = 0) -> BusReader:
    """A :class:`BusReader` on a new SUB socket, connected and subscribed.

    Parameters
    ----------
    endpoints : str or list of str
        Publishers to connect to.
    topics : list of bytes
        Topic prefixes to subscribe to (:func:`mushu_core.wire.data_topic` and the like).
    keys : mushu_core.security.Keys, optional
        This process's CURVE certificate (None: no encryption).
    rcvhwm : int
        Messages queued per publisher before the bus drops for this subscriber.
    watch : bool
        Also watch the socket's handshakes (``reader.watch``), from before it
        connects, so that a refused one can be told apart from silence.
    queue_bytes : int
        Bytes of messages queued per publisher before the bus drops: fewer
        messages than ``rcvhwm`` when blocks are large (:func:`queue_hwm`).
    message_bytes : int
        The largest message other than a block expected (a marker's).
    """
    endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    return BusReader(endpoints, topics, keys, rcvhwm, queue_bytes, watch, message_bytes)


def host_key() -> str | None:
    """Names this host and network namespace; None where unknown (not Linux).

    Processes with equal keys reach each other's loopback, so they may use
    a local endpoint instead. An artificial clock offset (a simulated other
    host) makes another key.
    """
    clock = host_clock_id()
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None
    return f"{clock}/{netns}" if clock else None


def local_endpoint(endpoint: str, stream: str, key: str) -> str:
    """The IPC endpoint a publisher bound to ``endpoint`` offers on this host.

    The same for a restarted publisher, so that its subscribers reconnect;
    in a directory only this user can enter (``$XDG_RUNTIME_DIR/mushu-ipc``,
    or ``mushu-ipc-<uid>`` in the temporary directory).
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = (os.path.join(runtime, "mushu-ipc") if runtime
              else os.path.join(tempfile.gettempdir(), f"mushu-ipc-{os.getuid()}"))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    name = hashlib.sha256(f"{key} {endpoint} {stream}".encode()).hexdigest()[:20]
    return f"ipc://{os.path.join(folder, name)}.data"


def choose_endpoint(endpoint: str, offer: dict | None, enabled: bool | None = None) -> str:
    """``offer``'s local endpoint if this process is on its host and can open it, else ``endpoint``.

    Parameters
    ----------
    endpoint : str
        The publisher's network endpoint.
    offer : dict or None
        What the publisher's status says of its local endpoint:
        ``{"endpoint": "ipc://...", "host": key}`` (see :func:`host_key`).
    enabled : bool, optional
        False: always ``endpoint``. Default: the ``MUSHU_AMP_LOCAL_IPC``
        setting of this process.
    """
    if enabled is None:
        enabled = setting_flag("MUSHU_AMP_LOCAL_IPC")
    if not enabled or not isinstance(offer, dict) or offer.get("host") != host_key() or offer.get("host") is None:
        return endpoint
    local = offer.get("endpoint")
    if not isinstance(local, str) or not local.startswith("ipc://") or not os.path.exists(local[len("ipc://"):]):
        return endpoint  # another user's, or another filesystem's (a container)
    return local

"""Reading the bus: decoded messages from a connected SUB socket.

Every consumer of the bus (the client, the recorder, the LSL bridge) drains
its SUB sockets the same way: take what is waiting, decode it with
:mod:`mushu_client.protocol`, count and log what does not decode, and wait
when nothing is waiting. :class:`BusReader` is that loop's one step.

It runs once per block (a thousand times a second at 1 ms blocks), so it
avoids what costs there: a ``zmq.Again`` exception per empty read (a poll
with timeout 0 is four times cheaper), a new ``zmq.Poller`` per wait, and
``getsockopt(RCVMORE)`` where a frame can say it (pyzmq converts the option
to an enum on every call). A block's payload is received straight into the
array that the consumer gets (``recv_into``), sized by its header, which is
decoded first; payloads over ``RECV_INTO_MAX`` arrive as a frame without a
copy instead, so that a header cannot make the reader allocate more than
what actually arrived.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import zmq

from . import security
from .protocol import DATA, Block, ProtocolError, decode_block_frames, decode_block_header, decode_message, split_topic

log = logging.getLogger("mushu.bus")

#: Messages a subscriber queues before the bus drops for it (then its owner
#: refetches from the publisher's history).
RCVHWM = 100_000
#: Largest payload received into a freshly allocated array. Larger ones stay
#: in their zmq frame (no copy): the client copies a chunk once as it hands it
#: out, and a second copy would cost throughput at hundreds of MB/s.
RECV_INTO_MAX = 64 << 10

# Plain ints: pyzmq's enum constants cost an enum lookup on every use.
_POLLIN, _RCVMORE = int(zmq.POLLIN), int(zmq.RCVMORE)


class BusReader:
    """Decoded messages from one SUB socket, without waiting unless asked to.

    Parameters
    ----------
    sock : zmq.Socket
        A SUB socket, connected and subscribed.
    source : str
        What it is connected to, for log messages.

    Attributes
    ----------
    bad_messages : int
        Messages that did not decode (logged and skipped).
    """

    def __init__(self, sock: zmq.Socket, source: str):
        self.sock = sock
        self.source = source
        self.bad_messages = 0
        #: The socket's handshake watch (:func:`subscribe` with ``watch=True``), or None.
        self.watch: security.HandshakeWatch | None = None
        self._items = [(sock, _POLLIN)]
        self._more = sock.get

    def receive(self):
        """Return the next decoded message, or None if none is waiting.

        A malformed message is counted in :attr:`bad_messages`, logged and
        skipped; the message after it is returned.
        """
        sock, items, poll = self.sock, self._items, zmq.zmq_poll
        while poll(items, 0):
            first = sock.recv(copy=False)
            try:
                topic = first.bytes
                if topic.startswith(DATA):
                    return self._block(topic, first.more)
                frames = [topic]
                if first.more:
                    frames.append(sock.recv())
                    while self._more(_RCVMORE):
                        frames.append(sock.recv())
                return decode_message(frames)
            except ProtocolError as exc:
                while self._more(_RCVMORE):  # the rest of a malformed message
                    sock.recv(copy=False)
                self.bad_messages += 1
                log.warning("dropped a malformed message from %s: %s", self.source, exc)
        return None

    def close(self):
        if self.watch is not None:
            self.watch.close()
        self.sock.close(linger=0)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a message; True if one is waiting."""
        return bool(zmq.zmq_poll(self._items, max(0, math.ceil(timeout * 1000))))

    def _block(self, topic: bytes, more: bool) -> Block:
        """The rest of a data message: ``[header, payload]``."""
        sock = self.sock
        _prefix, stream = split_topic(topic)
        if not more:
            raise ProtocolError("data message has 1 frame, expected 3")
        frame = sock.recv(copy=False)
        if not frame.more:
            raise ProtocolError("data message has 2 frames, expected 3")
        header_frame = frame.bytes
        h = decode_block_header(header_frame, stream)
        if h.payload_bytes > RECV_INTO_MAX:
            block = decode_block_frames(header_frame, sock.recv(copy=False), stream)
        else:
            data = np.empty((h.n_samples, h.n_channels), h.dtype)
            received = sock.recv_into(data)
            if received != h.payload_bytes:
                raise ProtocolError(f"block payload is {received} bytes, header declares "
                                    f"{h.n_samples} x {h.n_channels} x {h.dtype} = {h.payload_bytes}")
            block = Block(h, data)
        if self._more(_RCVMORE):
            raise ProtocolError("data message has more than 3 frames")
        return block


def subscribe(endpoints: str | list[str], topics: list[bytes], keys: security.Keys | None = None,
              rcvhwm: int = RCVHWM, watch: bool = False) -> BusReader:
    """A :class:`BusReader` on a new SUB socket, connected and subscribed.

    Parameters
    ----------
    endpoints : str or list of str
        Publishers to connect to.
    topics : list of bytes
        Topic prefixes to subscribe to (:func:`mushu_client.protocol.data_topic` and the like).
    keys : mushu_client.security.Keys, optional
        This process's CURVE certificate (None: no encryption).
    rcvhwm : int
        Messages queued before the bus drops for this subscriber.
    watch : bool
        Also watch the socket's handshakes (``reader.watch``), from before it
        connects, so that a refused one can be told apart from silence.
    """
    endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    security.curve_client(sock, keys)
    handshakes = security.HandshakeWatch(sock, " and ".join(endpoints), keys) if watch else None
    for endpoint in endpoints:
        sock.connect(endpoint)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    reader = BusReader(sock, " and ".join(endpoints))
    reader.watch = handshakes
    return reader

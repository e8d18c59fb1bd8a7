"""Sending markers to the mushu markers service over TCP, UDP or ZeroMQ.

TCP and UDP need only the standard library; ZeroMQ (pyzmq, imported when
used) reaches the service's ingress socket, encrypted and authenticated with
CURVE when ``MUSHU_KEYS`` names this PC's key directory (``docs/security.md``).
All three run on any stimulus PC, Windows included.

>>> from mushu_client import send_marker, MarkerSender
>>> send_marker("S  1")                      # one TCP connection per call
>>> with MarkerSender() as markers:          # one connection for many markers
...     markers.send("trial start")
>>> send_marker("S  2", protocol="zmq")      # the ZeroMQ ingress (MUSHU_MARKERS_INGRESS)
"""

from __future__ import annotations

import select
import socket
import time

from mushu_core.config import setting
from mushu_core.errors import ServiceUnavailable
from mushu_core.wire import MAX_LABEL_LENGTH

PROTOCOLS = ("tcp", "udp", "zmq")


def encode_label(label: str) -> bytes:
    """The line that carries ``label``: its UTF-8 bytes and ``\\n``.

    Raises
    ------
    ValueError
        If ``label`` is empty, contains a line break or is longer than
        MAX_LABEL_LENGTH characters (the service would not publish it).
    """
    if not isinstance(label, str):
        raise TypeError(f"a marker label must be a string, not {type(label).__name__}")
    if not label:
        raise ValueError("a marker label must not be empty")
    if "\n" in label or "\r" in label:
        raise ValueError(f"a marker label must not contain a line break: {label[:80]!r}")
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(f"marker label of {len(label)} characters is over the limit of {MAX_LABEL_LENGTH}")
    return label.encode("utf-8") + b"\n"


class MarkerSender:
    """A connection to the markers service's ingress, reused for every marker.

    Over TCP the connection is opened on the first :meth:`send` and kept; if
    the service closed it meanwhile (restart, idle timeout) the next send
    opens a new one. Over UDP each marker is one datagram; UDP cannot tell
    whether anyone received it. Over ZeroMQ the markers go to the service's
    ingress socket (``ingress``), with CURVE if ``keys`` names a key
    directory (a client with the sender or controller role).

    Parameters
    ----------
    host : str, optional
        Host of the markers service (env MUSHU_MARKERS_HOST, default 127.0.0.1).
    port : int, optional
        Its TCP/UDP port (env MUSHU_MARKERS_PORT, default 12344).
    protocol : {"tcp", "udp", "zmq"}
    timeout : float
        Seconds a connect or send may take.
    ingress : str, optional
        ZeroMQ endpoint of the ingress (env MUSHU_MARKERS_INGRESS, default
        tcp://127.0.0.1:12349); only for ``protocol="zmq"``.
    keys : str, optional
        CURVE key directory (env MUSHU_KEYS; empty: none); only for ``"zmq"``.
    """

    def __init__(self, host: str | None = None, port: int | None = None, protocol: str = "tcp",
                 timeout: float = 1.0, ingress: str | None = None, keys: str | None = None):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        self.host = setting("MUSHU_MARKERS_HOST", host)
        self.port = int(setting("MUSHU_MARKERS_PORT", None if port is None else str(port)))
        self.protocol = protocol
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._zmq = _ZmqIngress(setting("MUSHU_MARKERS_INGRESS", ingress), keys, timeout) \
            if protocol == "zmq" else None

    @property
    def address(self) -> str:
        return self._zmq.endpoint if self._zmq is not None else f"{self.host}:{self.port}"

    def send(self, label: str):
        """Send one marker.

        Raises
        ------
        ValueError
            For a label the service would refuse (see :func:`encode_label`).
        ServiceUnavailable
            If no markers service accepts a TCP connection at host:port
            (over ZeroMQ: a connection at the ingress within ``timeout``).
        SecurityError
            Over ZeroMQ, if the CURVE handshake fails (a ServiceUnavailable).
        """
        line = encode_label(label)
        if self._zmq is not None:
            return self._zmq.send(line[:-1])
        if self.protocol == "udp":
            try:
                self._udp().sendto(line, (self.host, self.port))
            except OSError as exc:
                raise ServiceUnavailable(f"cannot send a marker datagram to {self.address}: {exc}") from None
            return
        if self._sock is not None and self._peer_closed():
            self.close()
        reused = self._sock is not None
        try:
            self._tcp().sendall(line)
        except ServiceUnavailable:
            raise
        except OSError as exc:
            self.close()
            if reused and isinstance(exc, ConnectionError):  # the kept connection broke before the send
                return self.send(label)
            raise ServiceUnavailable(f"cannot send a marker to the mushu markers service at "
                                     f"{self.address} over TCP: {exc}") from None

    def _udp(self) -> socket.socket:
        if self._sock is None:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0][0]
            self._sock = socket.socket(family, socket.SOCK_DGRAM)
        return self._sock

    def _tcp(self) -> socket.socket:
        if self._sock is None:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            except OSError as exc:
                raise ServiceUnavailable(f"no mushu markers service accepts TCP connections at "
                                         f"{self.address}: {exc}; is it running ('mushu up' starts it) and "
                                         "are MUSHU_MARKERS_HOST and MUSHU_MARKERS_PORT its address?") from None
            # Markers are small and urgent: no Nagle delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        return self._sock

    def _peer_closed(self) -> bool:
        # The service never sends anything, so a readable socket means it closed.
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self):
        """Close the connection (a later :meth:`send` opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._zmq is not None:
            self._zmq.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _ZmqIngress:
    """A PUSH socket to the markers service's ZeroMQ ingress that never queues blindly.

    It hands a marker over only to a connection whose handshake (CURVE
    included) completed, and waits for one at most ``timeout`` seconds, so
    an absent service or a refused key is an error, not a silent queue.
    """

    def __init__(self, endpoint: str, keys: str | None, timeout: float):
        from mushu_core import security  # pyzmq only for this transport
        self.endpoint, self.timeout = endpoint, timeout
        self.keys = security.configured(keys)
        self._sock = self._watch = None

    def _connect(self):
        import zmq

        from mushu_core import security
        self._sock = zmq.Context.instance().socket(zmq.PUSH)
        self._sock.setsockopt(zmq.LINGER, int(self.timeout * 1000))
        self._sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to a connection whose handshake completed
        security.curve_client(self._sock, self.keys)
        self._watch = security.HandshakeWatch(self._sock, self.endpoint, self.keys)
        self._sock.connect(self.endpoint)

    def send(self, label: bytes):
        import zmq
        if self._sock is None:
            self._connect()
        deadline = time.monotonic() + self.timeout
        while not self._sock.poll(10, zmq.POLLOUT):
            failure = self._watch.failure()
            if failure is not None or time.monotonic() > deadline:
                self.close()
                raise failure or ServiceUnavailable(f"no mushu markers service accepted a ZeroMQ connection at "
                                                    f"{self.endpoint} within {self.timeout:g} s")
        try:
            self._sock.send(label, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.close()
            raise ServiceUnavailable(f"cannot send a marker to {self.endpoint}: {exc}") from None

    def close(self):
        if self._sock is not None:
            self._watch.close()
            self._sock.close()
            self._sock = self._watch = None


def send_marker(label: str, host: str | None = None, port: int | None = None, protocol: str = "tcp",
                timeout: float = 1.0, ingress: str | None = None, keys: str | None = None):
    """Send one marker to the markers service, over its own connection.

    For many markers, keep a :class:`MarkerSender` instead.

    Parameters
    ----------
    label : str
        The marker text: at most MAX_LABEL_LENGTH characters, no line break.
    host, port, protocol, timeout, ingress, keys
        As for :class:`MarkerSender`.

    Raises
    ------
    ValueError
        For a label the service would refuse.
    ServiceUnavailable
        If no markers service accepts a TCP (or ZeroMQ) connection.
    SecurityError
        Over ZeroMQ, if the CURVE handshake fails (e.g. this PC's key is not
        listed with the sender or controller role).
    """
    with MarkerSender(host, port, protocol, timeout, ingress, keys) as sender:
        sender.send(label)

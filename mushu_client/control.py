"""Request/reply over a service's control socket, with timeouts that never hang."""

from __future__ import annotations

import itertools
import time

import zmq

from . import security
from .errors import RemoteError, SecurityError, ServiceUnavailable
from .protocol import BUILTIN_ERRORS, ProtocolError, decode_reply, encode_request


class ControlClient:
    """A DEALER socket that sends one request at a time and waits a bounded time.

    A request that gets no reply within ``timeout`` seconds raises
    :class:`ServiceUnavailable` naming the endpoint; the socket is then
    replaced so a late reply cannot be mistaken for the next one (the zguide's
    "lazy pirate"). Error replies are raised as the exception type the service
    named when it is one of a few builtins (``ValueError``, ``TypeError``,
    ...), else as :class:`RemoteError`.

    Parameters
    ----------
    endpoint : str
        ZeroMQ endpoint of the service's control socket.
    timeout : float
        Seconds to wait for each reply.
    service : str
        Name used in error messages.
    keys : str or Keys, optional
        The client's key directory (setting ``MUSHU_KEYS``; empty: no CURVE),
        or keys already loaded. A failed CURVE handshake raises
        :class:`~mushu_client.errors.SecurityError` at once, saying why.
    """

    _ids = itertools.count(1)

    def __init__(self, endpoint: str, timeout: float = 2.0, service: str = "service",
                 keys: str | security.Keys | None = None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.service = service
        self.keys = keys if isinstance(keys, security.Keys) else security.configured(keys)
        self._ctx = zmq.Context.instance()
        self._sock = None
        self._watch = None

    def _socket(self):
        if self._sock is None:
            self._sock = self._ctx.socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 0)
            security.curve_client(self._sock, self.keys)
            self._watch = security.HandshakeWatch(self._sock, self.endpoint, self.keys)
            self._sock.connect(self.endpoint)
        return self._sock

    def close(self):
        if self._sock is not None:
            self._watch.close()
            self._sock.close(linger=0)
            self._sock = None

    def request(self, cmd: str, timeout: float | None = None, **args):
        """Send ``cmd`` and return ``(result, extra_frames)``; raise on error."""
        rid = next(self._ids)
        sock = self._socket()
        sock.send_multipart([b"", encode_request(cmd, id=rid, **args)])
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._watch.monitor, zmq.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            events = dict(poller.poll(remaining * 1000)) if remaining > 0 else {}
            failure = self._watch.failure() if sock not in events else None
            if failure is not None or not events:
                self.close()
                raise failure or ServiceUnavailable(
                    f"no reply from the mushu {self.service} service at {self.endpoint} within "
                    f"{self.timeout if timeout is None else timeout:g} s (is it running?)")
            if sock not in events:
                continue
            frames = sock.recv_multipart(copy=False)
            if len(frames) < 2 or frames[0].bytes != b"":
                continue
            try:
                reply = decode_reply(frames[1].bytes)
            except ProtocolError as exc:
                raise ServiceUnavailable(f"{self.endpoint} answered with a malformed reply: {exc}") from None
            if reply.request_id == rid:
                break
        if not reply.ok:
            exc_type = BUILTIN_ERRORS.get(reply.error_type)
            if exc_type is not None:
                raise exc_type(reply.error_message)
            raise RemoteError(reply.error_type, reply.error_message)
        return reply.result, frames[2:]

    def call(self, cmd: str, **args):
        """Send ``cmd`` and return its result; raise on error."""
        return self.request(cmd, **args)[0]


def wait_for(endpoint: str, service: str = "service", timeout: float = 15.0, proc=None, keys=None) -> dict:
    """Ask ``ping`` until the service at ``endpoint`` answers; return its reply.

    Parameters
    ----------
    proc : subprocess.Popen, optional
        The service's process: if it exits meanwhile, RuntimeError at once.
    keys : str, optional
        The client's key directory, as for :class:`ControlClient`.

    Raises
    ------
    ServiceUnavailable
        No answer within ``timeout`` seconds.
    SecurityError
        At once, if the CURVE handshake fails.
    """
    deadline = time.monotonic() + timeout
    ctl = ControlClient(endpoint, 0.5, service, keys)
    try:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the {service} service exited with {proc.returncode}")
            try:
                return ctl.call("ping")
            except SecurityError:
                raise
            except ServiceUnavailable:
                if time.monotonic() > deadline:
                    raise
    finally:
        ctl.close()

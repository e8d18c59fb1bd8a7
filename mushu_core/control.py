"""Request/reply over a service's control socket: the server every service binds, and the client
with timeouts that never hang."""

from __future__ import annotations

import itertools
import logging
import time

import zmq

from mushu_core import security
from mushu_core.errors import RemoteError, SecurityError, ServiceUnavailable
from mushu_core.process import ThrottledLog
from mushu_core.wire import (BUILTIN_ERRORS, MAX_QUEUED_REQUESTS, MAX_REQUEST_BYTES, ProtocolError, decode_reply,
                             encode_request)


class ControlServer:
    """A service's control socket (ROUTER): one reply to every request, refusals counted and logged.

    Requests over ``MAX_REQUEST_BYTES`` are dropped by ZeroMQ and at most
    ``MAX_QUEUED_REQUESTS`` wait, so a flood of requests costs the service
    neither memory nor its other work. The ``status`` result gains the counters
    ``malformed_requests`` (not a valid control request at all) and
    ``refused_requests`` (valid, but refused: unknown command, bad arguments,
    a role that may not run it, an error of the service).

    Parameters
    ----------
    ctx : zmq.Context
    guard : mushu_core.security.Guard
        Makes the socket a CURVE server when keys are configured, and checks
        each requester's role.
    endpoint : str
        Where to bind.
    read_only : frozenset
        The commands a requester that is not a controller may run.
    log : logging.Logger
        Where refusals are logged (throttled per kind of error).
    service : str
        The service's name, for the error raised when ``endpoint`` cannot be bound.

    Raises
    ------
    OSError
        ``endpoint`` cannot be bound (in use, a bad address).
    """

    def __init__(self, ctx: zmq.Context, guard: security.Guard, endpoint: str, read_only: frozenset,
                 log: logging.Logger, service: str = "service"):
        self.guard = guard
        self.read_only = read_only
        self.counts = {"malformed_requests": 0, "refused_requests": 0}
        self._log = ThrottledLog(log)
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        guard.server(self.sock)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        self.sock.setsockopt(zmq.RCVHWM, MAX_QUEUED_REQUESTS)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.sock.close()
            raise OSError(f"cannot bind the {service}'s control socket to {endpoint}: {exc} "
                          f"(is another {service} running? see `mushu status`)") from None
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def serve(self, handle) -> tuple[str | None, Exception | None]:
        """Answer one waiting request with ``handle(cmd, args)``; return ``(cmd, error)``.

        ``cmd`` is None for a malformed request, ``error`` None when it was
        answered with a result. Call it when the socket is readable.
        """
        def counted(cmd, args):
            result = handle(cmd, args)
            if cmd == "status" and isinstance(result, dict):
                result = {**result, **self.counts}
            return result

        reply, cmd, error = self.guard.serve(self.sock, counted, self.read_only)
        if error is not None:
            self.counts["malformed_requests" if isinstance(error, ProtocolError) else "refused_requests"] += 1
            self._log(type(error).__name__, "control request %s refused: %s: %.300s", cmd or "(malformed)",
                      type(error).__name__, error)
        self.sock.send_multipart(reply, copy=False)
        return cmd, error

    def close(self):
        self.sock.close(linger=0)


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
        :class:`~mushu_core.errors.SecurityError` at once, saying why.
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
                    f"{self.timeout if timeout is None else timeout:g} s: is it running? Start it with 'mushu up' "
                    f"('mushu status' shows what runs), or set MUSHU_{self.service.upper()}_CONTROL to where it "
                    "runs")
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

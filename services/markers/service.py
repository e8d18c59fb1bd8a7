"""The markers service process: one thread, one poller, around :class:`MarkersCore`.

A single ``zmq.Poller`` watches the TCP listener, every TCP connection, the
UDP socket, the ZeroMQ ingress (PULL), the control socket (ROUTER) and the
publisher (XPUB, for new subscriptions). Every read is stamped with
``now_ns()`` the moment it returns, before any parsing, so a
marker's time is that of the read that delivered its first byte.

The publisher is an XPUB socket (a PUB to subscribers) so that a new
subscription is answered at once with a heartbeat: a consumer that has
received one knows that its subscription is live and which ``last_seq``
the history covers.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import struct
import sys

import zmq

from mushu_core import process
from mushu_core.bus import queue_hwm
from mushu_core.clock import WallToMonotonic, host_clock_id, now_ns
from mushu_core.config import setting, setting_float, setting_int, setting_mib
from mushu_core.control import ControlServer
from mushu_core.security import INGRESS_DOMAIN, Guard
from mushu_core.wire import MAX_MARKER_BYTES

from .core import DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_MARKERS, MAX_LABEL_BYTES, READ_ONLY, LineFramer, MarkersCore
from .journal import MarkerJournal
from .senders import AddressList, IPAddress, SenderPolicy, sender_address

log = logging.getLogger("mushu.markers")

HEARTBEAT_NS = 250_000_000  # a consumer notices a dead service within a second
SWEEP_NS = 500_000_000
READ_BYTES = 65536
#: Markers the publisher queues per subscriber, at most, in bytes (MUSHU_MARKERS_QUEUE_MB).
DEFAULT_QUEUE_BYTES = 64 * 2**20
#: Reads of one kind per poll round, so a flood on one socket cannot starve the others.
BURST = 64


# Linux's SO_TIMESTAMPNS (SO_TIMESTAMPNS_OLD: a struct timespec of two native
# longs); the socket module does not name it.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@ll")


#: The kernel's packet stamps onto the monotonic clock (this service's one thread uses it).
_WALL = WallToMonotonic()


def _enable_kernel_stamps(sock: socket.socket):
    """Ask the kernel to stamp each received packet (Linux); elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass


def _recv_stamped(sock: socket.socket) -> tuple[bytes, object, int]:
    """Read once; return the data, the sender's address and when it arrived.

    The arrival time is the kernel's receive stamp where there is one (so a
    busy service still stamps a marker when its packet arrived, not when the
    service got round to reading it), else the time of the read. The
    kernel's stamp is on the wall clock: :data:`_WALL` maps it onto
    :func:`now_ns`.
    """
    data, ancdata, _flags, addr = sock.recvmsg(READ_BYTES, 64)
    t_ns = now_ns()
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(payload)
            t_ns = _WALL.to_monotonic(sec * 1_000_000_000 + nsec, t_ns)
    return data, addr, t_ns


class _Connection:
    __slots__ = ("sock", "sender", "source", "framer", "last_ns")

    def __init__(self, sock: socket.socket, sender: IPAddress, source: str, now_ns: int, max_line_bytes: int):
        self.sock = sock
        self.sender = sender
        self.source = source
        self.framer = LineFramer(max_line_bytes)
        self.last_ns = now_ns


class MarkersService:
    """Bind the sockets and serve until :meth:`shutdown`.

    Parameters
    ----------
    core : MarkersCore
        Its ``policy`` holds the allowlist and the connection and rate limits.
    host : str
        Interface of the TCP and UDP ingress; anything but loopback without
        an allowlist is logged as a warning.
    port : int
        TCP and UDP port of the ingress (libmushu's is 12344).
    data_endpoint, control_endpoint, ingress_endpoint : str
        ZeroMQ endpoints to bind the publisher, the control socket and the
        ZeroMQ ingress (PULL) to.
    idle_timeout : float
        Seconds after which a TCP connection that sent nothing is closed.
    sndhwm : int
        Publisher high-water mark per subscriber, in messages, at most.
    queue_bytes : int
        Bytes of markers the publisher queues per subscriber, at most: the
        mark is ``queue_bytes`` in markers of the largest size
        (``MAX_MARKER_BYTES``) if that is lower than ``sndhwm``
        (:func:`mushu_core.bus.queue_hwm`).
    """

    def __init__(self, core: MarkersCore, host: str, port: int, data_endpoint: str, control_endpoint: str,
                 ingress_endpoint: str, idle_timeout: float = 300.0, sndhwm: int = 100_000,
                 queue_bytes: int = DEFAULT_QUEUE_BYTES):
        self.core = core
        self.idle_ns = int(idle_timeout * 1e9)
        self.quit = False
        self.conns: dict[int, _Connection] = {}
        self.ctx = zmq.Context()
        try:
            self.guard = Guard(self.ctx, {"data": data_endpoint, "control": control_endpoint,
                                          "ingress": ingress_endpoint})
        except Exception:
            self.ctx.destroy(linger=0)
            raise
        try:
            self._bind_zmq(data_endpoint, control_endpoint, ingress_endpoint,
                           queue_hwm(queue_bytes, sndhwm, MAX_MARKER_BYTES))
            self._bind_ingress(host, port)
        except (zmq.ZMQError, OSError) as exc:
            self.guard.close()
            self.ctx.destroy(linger=0)
            raise OSError(f"cannot bind markers service: {exc}") from None
        self.poller = zmq.Poller()
        self.handlers = {}
        for sock, handler in ((self.listener, self._accept), (self.udp, self._read_udp),
                              (self.pull, self._read_pull), (self.control.sock, self._serve),
                              (self.pub, self._subscribed)):
            self.poller.register(sock, zmq.POLLIN)
            self.handlers[sock if isinstance(sock, zmq.Socket) else sock.fileno()] = handler

    def _bind_zmq(self, data_endpoint, control_endpoint, ingress_endpoint, sndhwm):
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.pub.setsockopt(zmq.SNDHWM, sndhwm)  # before bind(): never changed after (bus.queue_hwm)
        self.sndhwm = sndhwm
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        self.guard.server(self.pub)
        self.guard.server(self.pull, INGRESS_DOMAIN)  # senders and controllers only
        for sock, endpoint, name in ((self.pub, data_endpoint, "data"), (self.pull, ingress_endpoint, "ingress")):
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(endpoint)
            self.core.endpoints[name] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.control = ControlServer(self.ctx, self.guard, control_endpoint, READ_ONLY, log, "markers service")
        self.core.endpoints["control"] = self.control.endpoint

    def _bind_ingress(self, host, port):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.udp = socket.socket(family, socket.SOCK_DGRAM)
        self.udp.bind((host, self.listener.getsockname()[1]))
        self.udp.setblocking(False)
        try:
            self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass
        for sock in (self.listener, self.udp):
            _enable_kernel_stamps(sock)
        self.core.endpoints["tcp"] = "%s:%d" % self.listener.getsockname()[:2]
        self.core.endpoints["udp"] = "%s:%d" % self.udp.getsockname()[:2]
        allow = self.core.policy.allow
        if allow:
            log.info("marker ingress accepts TCP/UDP senders in %s only", allow)
        elif not _is_loopback(host):
            log.warning("marker ingress bound to %s, beyond loopback, without an allowlist: any host that reaches "
                        "port %d can send markers (set MUSHU_MARKERS_ALLOW)", host, self.listener.getsockname()[1])

    def run(self):
        """Serve until :meth:`shutdown` is called (e.g. from a signal handler)."""
        e = self.core.endpoints
        log.info("markers service, session %s: TCP %s, UDP %s, ZeroMQ ingress %s, data %s, control %s",
                 self.core.session, e["tcp"], e["udp"], e["ingress"], e["data"], e["control"])
        next_beat = next_sweep = self._watermark_ns = now_ns()  # nothing was stamped before it
        try:
            while not self.quit:
                now = now_ns()
                if now >= next_beat:
                    self._heartbeat(now)
                    next_beat = now + HEARTBEAT_NS
                if now >= next_sweep:
                    self._close_idle(now)
                    next_sweep = now + SWEEP_NS
                self._handle_ready(min(max(0, min(next_beat, next_sweep) - now) / 1e6, 100))
        finally:
            for conn in list(self.conns.values()):
                conn.sock.close()
            self.listener.close()
            self.udp.close()
            self.guard.close()
            self.ctx.destroy(linger=0)

    def shutdown(self):
        self.quit = True

    def _handle_ready(self, timeout_ms: float) -> bool:
        """Wait up to ``timeout_ms`` for input, handle every socket that has some; False if none had."""
        ready = self.poller.poll(timeout_ms)
        for sock, _event in ready:
            handler = self.handlers.get(sock)
            if handler is not None:
                handler()
        return bool(ready)

    def _heartbeat(self, t_ns: int):
        """Publish that every marker stamped up to ``t_ns`` is out (clients release samples by it).

        A marker the kernel stamped before ``t_ns`` may still wait in a
        socket buffer: take in everything waiting first.
        """
        for _ in range(64):
            if not self._handle_ready(0):
                break
        self.pub.send_multipart(self.core.heartbeat(t_ns))
        self._watermark_ns = t_ns

    def _publish(self, messages):
        for frames in messages:
            self.pub.send_multipart(frames)

    # -- TCP --------------------------------------------------------------

    def _accept(self):
        for _ in range(BURST):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: keep serving the others
                self.core.problem("read_errors", "accept failed: %s", exc)
                return
            source, sender = _source("tcp", addr), sender_address(addr[0])
            if not self.core.admit_connection(sender, source):
                sock.close()
                continue
            sock.setblocking(False)
            _enable_kernel_stamps(sock)
            conn = _Connection(sock, sender, source, now_ns(), self.core.max_label_bytes + 1)
            self.conns[sock.fileno()] = conn
            self.handlers[sock.fileno()] = lambda conn=conn: self._read_conn(conn)
            self.poller.register(sock, zmq.POLLIN)
            log.debug("%s: connected", source)
            self._read_conn(conn)  # a sender that connects per marker has usually sent it already

    def _read_conn(self, conn: _Connection):
        try:
            data, _addr, t_ns = _recv_stamped(conn.sock)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.core.problem("read_errors", "%s: read failed, connection closed: %s", conn.source, exc)
            self._close(conn)
            return
        conn.last_ns = t_ns
        if data:
            self._publish(self.core.ingest_lines(conn.framer.feed(data, t_ns), conn.source, "tcp_markers",
                                                 conn.sender))
        else:  # the sender closed: its unfinished last line is its last marker
            self._publish(self.core.ingest_lines(conn.framer.finish(), conn.source, "tcp_markers", conn.sender))
            self._close(conn)

    def _close(self, conn: _Connection):
        fd = conn.sock.fileno()
        self.poller.unregister(conn.sock)
        del self.conns[fd], self.handlers[fd]
        conn.sock.close()
        self.core.connection_closed(conn.sender)
        log.debug("%s: closed", conn.source)

    def _close_idle(self, now: int):
        self.core.policy.buckets.sweep(now)
        for conn in [c for c in self.conns.values() if now - c.last_ns > self.idle_ns]:
            self.core.problem("connections_idle_closed", "%s: closed after %.0f s without data",
                              conn.source, self.idle_ns / 1e9)
            if conn.framer.pending:
                self.core.problem("partial_lines_dropped", "%s: unfinished line of %d bytes dropped",
                                  conn.source, conn.framer.pending)
            self._close(conn)

    # -- UDP, ZeroMQ ingress, control ----------------------------------------

    def _read_udp(self):
        for _ in range(BURST):
            try:
                data, addr, t_ns = _recv_stamped(self.udp)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error reported on the socket
                self.core.problem("read_errors", "udp: read failed: %s", exc)
                return
            self._publish(self.core.ingest_datagram(data, t_ns, _source("udp", addr), sender_address(addr[0])))

    def _read_pull(self):
        for _ in range(BURST):
            try:
                frames = self.pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            t_ns = now_ns()
            self._publish(self.core.ingest_zmq(frames, t_ns))

    def _serve(self):
        _cmd, error = self.control.serve(self.core.handle)
        if error is not None:  # logged by the control server
            self.core.counts["bad_requests"] += 1

    def _subscribed(self):
        change = self.core.subscription(self.pub.recv())
        if change is not None and change[0]:  # tell the new subscriber at once, what was promised last
            self.pub.send_multipart(self.core.heartbeat(self._watermark_ns))


def _source(kind: str, addr: tuple) -> str:
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"{kind}:{host}:{addr[1]}"


def _is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, ValueError):
        return False


def _none_is_empty(spec: str) -> str:
    """An empty setting means its default, so "none" spells an empty address list."""
    return "" if spec.strip().lower() == "none" else spec


def main(argv=None):
    """Console script ``mushu-markers``."""
    return process.main("mushu-markers", "mushu markers service: TCP/UDP/ZeroMQ marker ingress, published as a "
                        "numbered marker stream", _arguments, _build, argv)


def _arguments(p: argparse.ArgumentParser):
    # Every default comes from mushu_core.config: argument > environment > mushu.toml > default.
    p.add_argument("--host", help="interface of the TCP/UDP ingress (env MUSHU_MARKERS_HOST_BIND, else "
                   "MUSHU_MARKERS_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP and UDP port (env MUSHU_MARKERS_PORT, default 12344)")
    p.add_argument("--data", help="endpoint to bind the publisher to (env MUSHU_MARKERS_DATA_BIND, else "
                   "MUSHU_MARKERS_DATA)")
    p.add_argument("--control", help="endpoint to bind the control socket to (env MUSHU_MARKERS_CONTROL_BIND, "
                   "else MUSHU_MARKERS_CONTROL)")
    p.add_argument("--ingress", help="endpoint to bind the ZeroMQ PULL ingress to (env MUSHU_MARKERS_INGRESS_BIND, "
                   "else MUSHU_MARKERS_INGRESS)")
    p.add_argument("--stream", help="marker stream name (env MUSHU_MARKER_STREAM, default 'markers')")
    p.add_argument("--max-connections", type=int,
                   help="open TCP connections at most (env MUSHU_MARKERS_MAX_CONNECTIONS, default 256)")
    p.add_argument("--max-connections-per-sender", type=int, help="open TCP connections from one address at "
                   "most (env MUSHU_MARKERS_MAX_CONNECTIONS_PER_SENDER, default 64)")
    p.add_argument("--allow", help="TCP/UDP senders allowed: comma-separated addresses or CIDR networks; empty: "
                   "everyone (env MUSHU_MARKERS_ALLOW)")
    p.add_argument("--max-label-bytes", type=int, help="longest label in UTF-8 bytes "
                   f"(env MUSHU_MARKERS_MAX_LABEL_BYTES, default and most {MAX_LABEL_BYTES})")
    p.add_argument("--rate", type=float, help="markers per second per TCP/UDP sender address, 0: no limit "
                   "(env MUSHU_MARKERS_RATE, default 1000)")
    p.add_argument("--burst", type=int, help="markers a sender may send at once above the rate "
                   "(env MUSHU_MARKERS_BURST, default 1000)")
    p.add_argument("--rate-exempt", help="senders without a rate limit, addresses or CIDR networks "
                   "or 'none' (env MUSHU_MARKERS_RATE_EXEMPT, default this host: 127.0.0.0/8,::1)")
    p.add_argument("--idle-timeout", type=float, help="seconds before a silent TCP connection is closed "
                   "(env MUSHU_MARKERS_IDLE_TIMEOUT, default 300)")
    p.add_argument("--history-markers", type=int, help="markers kept for late consumers "
                   f"(env MUSHU_MARKERS_HISTORY_MARKERS, default {DEFAULT_HISTORY_MARKERS})")
    p.add_argument("--history-mb", type=float, help="bytes of history kept at most, in MiB "
                   f"(env MUSHU_MARKERS_HISTORY_MB, default {DEFAULT_HISTORY_BYTES / 2**20:g})")
    p.add_argument("--sndhwm", type=int,
                   help="publisher high-water mark in messages (env MUSHU_MARKERS_SNDHWM, default 100000)")
    p.add_argument("--journal", help="file to write every marker to before publishing it; a restarted service "
                   "resumes its session from it (env MUSHU_MARKERS_JOURNAL; none by default)")
    p.add_argument("--queue-mb", type=float, help="markers the publisher queues per subscriber, at most, in MiB "
                   f"(env MUSHU_MARKERS_QUEUE_MB, default {DEFAULT_QUEUE_BYTES / 2**20:g})")


def _build(a: argparse.Namespace):
    policy = SenderPolicy(
        AddressList(setting("MUSHU_MARKERS_ALLOW", a.allow), "MUSHU_MARKERS_ALLOW"),
        setting_int("MUSHU_MARKERS_MAX_CONNECTIONS", a.max_connections),
        setting_int("MUSHU_MARKERS_MAX_CONNECTIONS_PER_SENDER", a.max_connections_per_sender),
        setting_float("MUSHU_MARKERS_RATE", a.rate), setting_int("MUSHU_MARKERS_BURST", a.burst),
        AddressList(_none_is_empty(setting("MUSHU_MARKERS_RATE_EXEMPT", a.rate_exempt)),
                    "MUSHU_MARKERS_RATE_EXEMPT"))
    stream = setting("MUSHU_MARKER_STREAM", a.stream)
    journal = setting("MUSHU_MARKERS_JOURNAL", a.journal)
    core = MarkersCore(stream, setting_int("MUSHU_MARKERS_HISTORY_MARKERS", a.history_markers),
                       setting_mib("MUSHU_MARKERS_HISTORY_MB", a.history_mb),
                       policy, setting_int("MUSHU_MARKERS_MAX_LABEL_BYTES", a.max_label_bytes),
                       MarkerJournal(journal, stream, host_clock_id()) if journal else None)
    return MarkersService(
     core, setting("MUSHU_MARKERS_HOST_BIND", a.host), setting_int("MUSHU_MARKERS_PORT", a.port),
     setting("MUSHU_MARKERS_DATA_BIND", a.data), setting("MUSHU_MARKERS_CONTROL_BIND", a.control),
     setting("MUSHU_MARKERS_INGRESS_BIND", a.ingress),
     idle_timeout=setting_float("MUSHU_MARKERS_IDLE_TIMEOUT", a.idle_timeout),
     sndhwm=setting_int("MUSHU_MARKERS_SNDHWM", a.sndhwm),
     queue_bytes=setting_mib("MUSHU_MARKERS_QUEUE_MB", a.queue_mb))


if __name__ == "__main__":
    sys.exit(main())

"""CURVE encryption, client keys and control-plane roles (``docs/security.md``).

Off unless the setting ``MUSHU_KEYS`` names a key directory. With one, every
ZeroMQ socket of mushu runs CURVE: the services are CURVE servers that accept
only the clients listed in the key directory, and every client carries its
own certificate. Each listed client has a role:

``viewer``
    subscribes to the data and markers, asks read-only questions (ping,
    status, time, histories, ...);
``sender``
    a viewer that may also send markers to the markers service's ZeroMQ
    ingress (a stimulus PC);
``controller``
    everything: configure, start and stop the amp, start and finish
    recordings.

The key directory made by ``mushu keys init DIR``::

    DIR/server.key, DIR/server.key_secret      the services' key pair
    DIR/authorized/<role>s/NAME.key            the clients' public keys
    DIR/clients/NAME/server.key                what client NAME is handed:
    DIR/clients/NAME/client.key_secret         point its MUSHU_KEYS here

A service needs ``DIR`` itself (it holds the server's secret key); a client
needs ``DIR/clients/NAME``. A process that has the server's pair but no client
pair (a service subscribing to another one) uses the server pair as its client
identity, which counts as a controller.

Only pyzmq and the standard library: the client side runs on any stimulus PC.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import struct
import threading
from dataclasses import dataclass

import zmq
from zmq.auth.certs import create_certificates, load_certificate
from zmq.utils import z85

from mushu_core.config import setting
from mushu_core.errors import Forbidden, MushuError, SecurityError
from mushu_core.wire import serve_request

log = logging.getLogger("mushu.security")

#: Roles, from the least to the most allowed.
ROLES = ("viewer", "sender", "controller")
#: The ZAP domain of every service socket, and the one of the marker ingress,
#: which only senders and controllers may connect to.
DOMAIN = "mushu"
INGRESS_DOMAIN = "mushu-ingress"
INGRESS_ROLES = ("sender", "controller")

SERVER_PUBLIC = "server.key"
SERVER_SECRET = "server.key_secret"
CLIENT_SECRET = "client.key_secret"
AUTHORIZED = "authorized"
CLIENTS = "clients"

#: The ZAP handler's endpoint, fixed by the ZAP specification (RFC 27).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


class KeyDirError(MushuError, ValueError):
    """The key directory is missing, incomplete or holds a file that is not a key."""


# ---------------------------------------------------------------------------
# the key directory


@dataclass(frozen=True)
class Keys:
    """The keys of one process, loaded from a key directory.

    Attributes
    ----------
    directory : str
    server_public : bytes
        The services' public key (z85), which clients check the server against.
    server_secret : bytes or None
        The services' secret key; None in a client's directory.
    public, secret : bytes
        This process's own pair as a client (z85).
    """

    directory: str
    server_public: bytes
    server_secret: bytes | None
    public: bytes
    secret: bytes

    @property
    def can_serve(self) -> bool:
        return self.server_secret is not None


def _read_key(path: str, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyDirError(f"cannot read the key file {path}: {exc}") from None
    for key in (public, secret_key) if secret else (public,):
        if key is None or len(key) != 40:
            raise KeyDirError(f"{path} holds no valid {'secret' if secret else 'public'} key "
                              "(40 characters of z85)")
        try:
            z85.decode(key)
        except (ValueError, KeyError):
            raise KeyDirError(f"{path}: {key[:40]!r} is not a z85 key") from None
    return public, secret_key


def load(directory: str) -> Keys:
    """The keys in ``directory`` (a service's or a client's key directory).

    Raises
    ------
    KeyDirError
        Naming the file that is missing or not a key.
    """
    if not os.path.isdir(directory):
        raise KeyDirError(f"MUSHU_KEYS={directory!r} is not a directory (make one with 'mushu keys init DIR')")
    server_public, _ = _read_key(os.path.join(directory, SERVER_PUBLIC), secret=False)
    server_secret = None
    if os.path.exists(os.path.join(directory, SERVER_SECRET)):
        public, server_secret = _read_key(os.path.join(directory, SERVER_SECRET), secret=True)
        if public != server_public:
            raise KeyDirError(f"{directory}: {SERVER_SECRET} does not belong to {SERVER_PUBLIC}")
    client = os.path.join(directory, CLIENT_SECRET)
    if os.path.exists(client):
        public, secret = _read_key(client, secret=True)
    elif server_secret is not None:
        public, secret = server_public, server_secret
    else:
        raise KeyDirError(f"{directory} has neither {CLIENT_SECRET} (a client's keys) nor {SERVER_SECRET} "
                          "(the services' keys)")
    return Keys(os.path.abspath(directory), server_public, server_secret, public, secret)


def configured(directory: str | None = None) -> Keys | None:
    """The keys the setting ``MUSHU_KEYS`` (or ``directory``) names, None if CURVE is off."""
    path = setting("MUSHU_KEYS", directory)
    return load(path) if path else None


def service_keys(directory: str | None = None) -> Keys | None:
    """As :func:`configured`, for a service: the directory must hold the services' secret key.

    Raises
    ------
    KeyDirError
        The directory is missing or broken, or it is a client's.
    """
    keys = configured(directory)
    if keys is not None and not keys.can_serve:
        raise KeyDirError(f"MUSHU_KEYS={keys.directory!r} is a client's key directory; a service needs "
                          f"the directory 'mushu keys init' made (with {SERVER_SECRET})")
    return keys


def authorised_clients(directory: str) -> dict[bytes, tuple[str, str]]:
    """Public key (z85) -> ``(role, name)`` of every client listed in ``directory/authorized``.

    Raises
    ------
    KeyDirError
        A listed file is not a public key.
    """
    clients = {}
    for role in ROLES:
        folder = os.path.join(directory, AUTHORIZED, role + "s")
        if not os.path.isdir(folder):
            continue
        for entry in sorted(os.listdir(folder)):
            if entry.endswith(".key"):
                public, _ = _read_key(os.path.join(folder, entry), secret=False)
                clients[public] = (role, entry[:-len(".key")])
    return clients


def init_directory(directory: str) -> list[str]:
    """Make a key directory: the services' pair and one client per role, named after it.

    Returns the client directories made. Raises FileExistsError if
    ``directory`` already has a server key.
    """
    if os.path.exists(os.path.join(directory, SERVER_PUBLIC)):
        raise FileExistsError(f"{directory} already has keys ({SERVER_PUBLIC}); add clients with 'mushu keys add'")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    _create_pair(directory, "server")
    return [add_client(directory, role, role) for role in reversed(ROLES)]


def _create_pair(directory: str, name: str) -> str:
    """Write ``name.key`` and ``name.key_secret`` (mode 0600 from the start); return the public one's path."""
    mask = os.umask(0o077)
    try:
        public, _secret = create_certificates(directory, name)
    finally:
        os.umask(mask)
    os.chmod(public, 0o644)
    return public


def add_client(directory: str, name: str, role: str) -> str:
    """Make client ``name`` with ``role``: list its public key and write its own key directory.

    Returns the client's directory (``directory/clients/NAME``), which holds
    the server's public key and the client's pair.
    """
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"client name {name!r} must be letters, digits, '-', '_' or '.'")
    load(directory)  # a complete server directory, or a clear error
    if not os.path.exists(os.path.join(directory, SERVER_SECRET)):
        raise KeyDirError(f"{directory} is a client's key directory; add clients to the one 'mushu keys init' made")
    listed = {n for _role, n in authorised_clients(directory).values()}
    if name in listed:
        raise FileExistsError(f"client {name!r} is already listed in {os.path.join(directory, AUTHORIZED)}")
    client_dir = os.path.join(directory, CLIENTS, name)
    os.makedirs(client_dir, mode=0o700, exist_ok=False)
    public = _create_pair(client_dir, "client")
    with open(os.path.join(directory, SERVER_PUBLIC), "rb") as f:
        server_public = f.read()
    with open(os.path.join(client_dir, SERVER_PUBLIC), "wb") as f:
        f.write(server_public)
    folder = os.path.join(directory, AUTHORIZED, role + "s")
    os.makedirs(folder, exist_ok=True)
    os.replace(public, os.path.join(folder, name + ".key"))
    return client_dir


# ---------------------------------------------------------------------------
# sockets


def curve_server(sock: zmq.Socket, keys: Keys, domain: str = DOMAIN):
    """Make ``sock`` a CURVE server under ZAP ``domain``; call before ``bind``."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.server_secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())


def curve_client(sock: zmq.Socket, keys: Keys | None):
    """Give ``sock`` this process's certificate and the server's key (no-op without keys); before ``connect``."""
    if keys is None:
        return
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


_monitors = itertools.count()
_EVENT = struct.Struct("=Hi")
_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | \
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
#: Handshakes that end without a reason (the peer closed the connection) in a row, with no
#: handshake succeeding between them, before they count as a refusal (a wrong server key).
REPEATED_FAILURES = 3


class HandshakeWatch:
    """Watches a connecting socket's handshakes, so that a refusal is an error, not a silence.

    A refusal is certain at once when the peer names it (an authentication
    failure, or one side using CURVE and the other not). A handshake that
    just ends (the peer closed the connection: a wrong server key, but also a
    service killed or restarting mid-handshake) counts only with CURVE on,
    and only once it happened :data:`REPEATED_FAILURES` times in a row with
    no handshake succeeding between them.

    Parameters
    ----------
    sock : zmq.Socket
        The socket, before it connects.
    endpoint : str
        Named in the error.
    keys : Keys or None
        The socket's keys (None: plaintext), to explain a failure.
    """

    def __init__(self, sock: zmq.Socket, endpoint: str, keys: Keys | None):
        self.endpoint = endpoint
        self.curve = keys is not None
        addr = f"inproc://mushu-handshakes-{os.getpid()}-{next(_monitors)}"
        sock.monitor(addr, _FAILURES | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._sock = sock
        self._ended: dict[str, int] = {}  # endpoint -> handshakes ended without a reason, in a row
        self.monitor = sock.context.socket(zmq.PAIR)
        self.monitor.setsockopt(zmq.LINGER, 0)
        self.monitor.connect(addr)

    def failure(self, ignore: str | None = None) -> SecurityError | None:
        """The handshake refusal seen since the last call, as an error, or None.

        A failure with endpoint ``ignore`` is passed over (a socket connected
        to several publishers, one of which does not matter here). libzmq
        names a TCP peer by its address, so one named by host name is not
        recognised: its failures count.
        """
        error = None
        while self.monitor.poll(0):
            # frame 0: event (16 bits) and value (32 bits), native byte order; frame 1: the endpoint
            frames = self.monitor.recv_multipart()
            event, value = _EVENT.unpack_from(frames[0])
            where = frames[1].decode(errors="replace") if len(frames) > 1 else self.endpoint
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._ended.pop(where, None)
                continue
            if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self._ended[where] = self._ended.get(where, 0) + 1
                if not self.curve or self._ended[where] < REPEATED_FAILURES:
                    continue  # a connection lost mid-handshake, not a refusal
            if where == ignore:
                continue
            error = error or SecurityError(f"CURVE handshake with {where} failed: "
                                           f"{self._explain(event, value, self._ended.get(where, 0))}")
        return error

    def _explain(self, event: int, value: int, ended: int) -> str:
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            if not self.curve:
                return "the service expects encryption (set MUSHU_KEYS to this client's key directory)"
            return "the service does not use CURVE (is MUSHU_KEYS set for the service?)"
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (f"not authorised (status {value}; is this client's key listed in the service's key "
                    "directory, with a role that may use this socket?)")
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            return (f"the service ended the handshake {ended} times in a row: wrong server key (this client's "
                    "server.key is not the services'), or the service does not use CURVE?")
        return f"protocol error {value:#x} (a service of another mushu version, or not a mushu service?)"

    def close(self):
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)


# ---------------------------------------------------------------------------
# the service side


def zap_reply(request: list[bytes], clients: dict[bytes, tuple[str, str]]) -> tuple[list[bytes], str | None, str]:
    """Answer one ZAP request (RFC 27) from the listed ``clients``.

    Returns
    -------
    reply : list of bytes
        The frames to send back.
    role : str or None
        The client's role (its User-Id), None if refused.
    why : str
        Who was allowed or why not, for the log.
    """
    request_id = request[1] if len(request) > 1 else b""

    def reply(code: bytes, text: str, role: str = "", name: str = "") -> list[bytes]:
        metadata = b"\x06Client" + len(name.encode()).to_bytes(4, "big") + name.encode() if name else b""
        return [b"1.0", request_id, code, text.encode(), role.encode(), metadata]

    if len(request) < 6:
        return reply(b"500", "malformed ZAP request"), None, f"malformed ZAP request of {len(request)} frames"
    version, _, domain, address, _identity, mechanism = request[:6]

    peer = address.decode("ascii", "replace")
    if version != b"1.0":
        return reply(b"400", "unsupported ZAP version"), None, f"{peer}: ZAP version {version[:8]!r}"
    if mechanism != b"CURVE" or len(request) != 7 or len(request[6]) != 32:
        return reply(b"400", "CURVE required"), None, f"{peer}: mechanism {mechanism[:16]!r} refused"
    key = z85.encode(request[6])
    listed = clients.get(key)
    if listed is None:
        return reply(b"400", "client key not listed"), None, f"{peer}: client key {key.decode()} is not listed"
    role, name = listed
    if domain.decode("ascii", "replace") == INGRESS_DOMAIN and role not in INGRESS_ROLES:
        return (reply(b"400", f"role {role} may not send markers"), None,
                f"{peer}: client {name!r}, role {role}, may not send markers")
    return reply(b"200", "OK", role, name), role, f"{peer}: client {name!r}, role {role}"


class Guard:
    """A service's security: its CURVE keys, its ZAP handler, the roles of its control requests.

    Without keys every method is a no-op and every requester is a controller.
    Make it before any socket binds: it starts the ZAP handler of ``ctx``,
    and a CURVE server without a ZAP handler would accept anyone.

    Parameters
    ----------
    ctx : zmq.Context
        The service's context.
    binds : dict
        What the service binds, ``{name: endpoint}``: any beyond loopback
        without keys is logged as a warning.
    directory : str, optional
        The key directory (default: setting ``MUSHU_KEYS``).

    Raises
    ------
    KeyDirError
        The key directory is missing, broken, or a client's.
    """

    def __init__(self, ctx: zmq.Context, binds: dict[str, str], directory: str | None = None):
        self.keys = service_keys(directory)
        self.counts = {"handshakes_allowed": 0, "handshakes_refused": 0, "forbidden_requests": 0}
        self._thread = None
        if self.keys is None:
            exposed = [f"{name} {ep}" for name, ep in binds.items() if not is_local_endpoint(ep)]
            if exposed:
                log.warning("bound beyond loopback without encryption (%s): anyone on the network can read "
                            "and control this service; set MUSHU_KEYS (docs/security.md)", ", ".join(exposed))
            return
        self.clients = self._clients()
        self._logged: set[str] = set()
        self._quit = threading.Event()
        self._zap = ctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind(ZAP_ENDPOINT)
        self._thread = threading.Thread(target=self._authenticate, name="zap", daemon=True)
        self._thread.start()
        log.info("CURVE on: %d listed clients in %s", len(self.clients) - 1, self.keys.directory)

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def _clients(self) -> dict[bytes, tuple[str, str]]:
        # the services' own pair is how they subscribe to each other
        return {**authorised_clients(self.keys.directory), self.keys.server_public: ("controller", "mushu service")}

    def _authenticate(self):
        while not self._quit.is_set():
            if not self._zap.poll(100):
                continue
            request = self._zap.recv_multipart()
            try:  # listed keys are read again at each handshake: adding or removing a file takes effect
                self.clients = self._clients()
            except KeyDirError as exc:
                log.error("%s; keeping the keys read before", exc)
            reply, role, why = zap_reply(request, self.clients)
            if role is None:
                self.counts["handshakes_refused"] += 1
                self._refused(why)
            else:
                self.counts["handshakes_allowed"] += 1
                log.debug("CURVE handshake: %s", why)
            self._zap.send_multipart(reply)

    def _refused(self, why: str):
        # A refused client reconnects ten times a second: log each reason once, count them all.
        if why in self._logged:
            log.debug("CURVE handshake refused again: %s", why)
            return
        if len(self._logged) >= 1024:
            self._logged.clear()
        self._logged.add(why)
        log.warning("CURVE handshake refused: %s (repeats are counted in status, not logged)", why)

    def server(self, sock: zmq.Socket, domain: str = DOMAIN):
        """Make ``sock`` a CURVE server (before it binds)."""
        if self.keys is not None:
            curve_server(sock, self.keys, domain)

    def serve(self, sock: zmq.Socket, handle, read_only: frozenset) -> tuple[list, str | None, Exception | None]:
        """Receive one control request on ROUTER ``sock`` and answer it as :func:`serve_request` does.

        A requester whose role is not controller may run only the commands
        in ``read_only``; anything else is refused with :class:`Forbidden`.
        A ``status`` result gains this guard's counters and the requester's
        role under ``security``.
        Returns what :func:`serve_request` returns; the caller sends the reply.
        """
        frames = sock.recv_multipart(copy=False)
        role = _user_id(frames[-1]) if self.keys is not None else None
        client = _property(frames[-1], "Client") if self.keys is not None else None

        def checked(cmd, args):
            if role not in (None, "controller") and cmd not in read_only:
                raise Forbidden(f"forbidden: role {role} may not {cmd!r} (client {client!r})")
            result = handle(cmd, args)
            if cmd == "status" and isinstance(result, dict):
                result = {**result, "security": {**self.status(), "role": role or "controller"}}
            return result

        reply, cmd, error = serve_request([f.bytes for f in frames], checked)
        if isinstance(error, Forbidden):  # the service logs it with every refused request
            self.counts["forbidden_requests"] += 1
        return reply, cmd, error

    def status(self) -> dict:
        return {"curve": self.enabled, **self.counts}

    def close(self):
        """Stop the ZAP handler (before the context is destroyed)."""
        if self._thread is not None:
            self._quit.set()
            self._thread.join()
            self._zap.close(linger=0)
            self._thread = None


def _property(frame: zmq.Frame, name: str) -> str | None:
    try:
        return frame.get(name)
    except zmq.ZMQError:  # a connection that did not pass ZAP has none
        return None


def _user_id(frame: zmq.Frame) -> str:
    # Every CURVE peer passed ZAP, which names its role; a frame without one
    # (an in-process peer) gets the least.
    role = _property(frame, "User-Id")
    return role if role in ROLES else "viewer"


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address or localhost."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if ";" in host:  # tcp://source;destination: the destination is what is bound to
        host = host.split(";", 1)[1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name


__all__ = ["ROLES", "Keys", "KeyDirError", "load", "configured", "service_keys", "authorised_clients", "init_directory",
           "add_client", "curve_server", "curve_client", "HandshakeWatch", "zap_reply", "Guard",
           "is_local_endpoint"]

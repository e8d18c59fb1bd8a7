"""supervisord for ``mushu up``, ``down`` and ``status``: run directory, configuration, XML-RPC.

The run directory (``MUSHU_RUN_DIR``; by default ``$XDG_RUNTIME_DIR/mushu``,
else ``mushu-<uid>`` in the temporary directory) holds the rendered
``supervisord.conf``, supervisord's unix socket, pid file and log, one log
per service, and each running service's start marker
(:class:`mushu_core.process.StartMarker`). supervisord's log also tells
how each service exited (:func:`restarts`, :func:`exit_of`).

Talking to supervisord needs only the standard library (XML-RPC over its
unix socket), so ``mushu status`` and ``mushu down`` work without the
``supervisor`` package; only ``mushu up`` needs it.
"""

from __future__ import annotations

import http.client
import os
import shlex
import socket
import string
import sys
import xmlrpc.client
from pathlib import Path

from mushu_core import config, process, security
from mushu_core.config import resolved

#: program name -> module run as ``python -m``; also the order of ``status``.
PROGRAMS = {"amp": "mushu_amp", "markers": "mushu_markers", "recorder": "mushu_recorder",
            "lslbridge": "mushu_lslbridge", "viewer": "mushu_viewer"}
#: Programs that run only where a setting asks for them.
OPTIONAL = {"lslbridge": "MUSHU_AMP_LSL", "viewer": "MUSHU_VIEWER_UP"}
#: program name -> the variable of its control endpoint (to connect to).
CONTROL = {"amp": "MUSHU_AMP_CONTROL", "markers": "MUSHU_MARKERS_CONTROL", "recorder": "MUSHU_RECORDER_CONTROL"}
#: The kinds of program a stream has beside the markers service: its amp service (always), its recorder
#: (the first stream always; an ``[amp.NAME]`` table if it names a ``recorder`` of its own), its LSL bridge
#: (where the stream's ``MUSHU_AMP_LSL`` is on). Each is ``KIND`` for the first stream, ``KIND-NAME`` for
#: ``[amp.NAME]``.
STREAM_KINDS = ("amp", "recorder", "lslbridge")
#: Programs without a control socket: supervisord's state is what says they run.
NO_CONTROL = frozenset({"lslbridge", "viewer"})
TEMPLATE = Path(__file__).with_name("supervisord.conf.template")
#: supervisord with a quicker main loop (see that file), run by path.
LAUNCHER = str(Path(__file__).with_name("supervisord_run.py"))
#: AF_UNIX path limit on Linux (108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 107


class RunDir:
    """The files of one supervised mushu: ``conf``, ``socket``, ``pidfile``, ``logfile``, ``log(name)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).absolute()
        self.conf = self.path / "supervisord.conf"
        self.socket = self.path / "supervisord.sock"
        self.pidfile = self.path / "supervisord.pid"
        self.logfile = self.path / "supervisord.log"

    def log(self, name: str) -> Path:
        """The log file of service ``name``."""
        return self.path / f"{name}.log"

    def create(self):
        """Make the directory (mode 0700); refuse one that belongs to someone else or a too long socket path."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if hasattr(os, "getuid") and self.path.stat().st_uid != os.getuid():
            raise PermissionError(f"the run directory {self.path} belongs to another user; set MUSHU_RUN_DIR")
        if len(os.fsencode(self.socket)) > MAX_SOCKET_PATH:
            raise ValueError(f"the run directory {self.path} is too long a path for a unix socket; "
                             "set MUSHU_RUN_DIR to a shorter one")

    def __str__(self):
        return str(self.path)


def programs() -> dict[str, str]:
    """:data:`PROGRAMS` that the settings ask for, each followed by those of the ``[amp.NAME]`` tables."""
    streams = {name: config.amp_stream_settings(name) for name in config.amp_streams()}
    found = {}
    for program, module in PROGRAMS.items():
        if program not in OPTIONAL or config.setting_flag(OPTIONAL[program]):
            found[program] = module
        if program in STREAM_KINDS:
            found.update((f"{program}-{name}", module) for name, own in streams.items() if _has(program, own))
    return found


def _has(kind: str, own: dict[str, str]) -> bool:
    """Whether a stream of settings ``own`` (an ``[amp.NAME]`` table's) has a program of ``kind``."""
    if kind == "recorder":
        return "MUSHU_RECORDER_CONTROL" in own
    if kind in OPTIONAL:
        return config.setting_flag(OPTIONAL[kind], own.get(OPTIONAL[kind]))
    return True


def _split(program: str) -> tuple[str, str | None]:
    kind, _, stream = program.partition("-")
    return kind, stream or None


def stream_of(program: str) -> str | None:
    """The stream of a program of an ``[amp.NAME]`` table (``amp-emg``, ``recorder-emg``: ``emg``); else None."""
    return _split(program)[1]


def kind(program: str) -> str:
    """What ``program`` is: ``amp``, ``markers``, ``recorder`` or ``lslbridge``."""
    return _split(program)[0]


def control_endpoint(program: str) -> str | None:
    """Where ``program``'s control socket is, as its clients connect to it (None: it has none)."""
    kind, stream = _split(program)
    if kind in NO_CONTROL:
        return None
    if stream is None:
        return config.setting(CONTROL[kind])
    return config.amp_stream_settings(stream)[CONTROL[kind]]


def control_setting(program: str) -> str:
    """Where the user sets ``program``'s control endpoint, for messages."""
    kind, stream = _split(program)
    if stream is None:
        return CONTROL[kind]
    return f"[amp.{stream}] {'control' if kind == 'amp' else 'recorder'}"


def viewer_tokens(rd: RunDir | None) -> str:
    """The viewer's tokens file under ``mushu up`` (``rd``: its run directory; None: the settings')."""
    return config.setting("MUSHU_VIEWER_TOKENS") or str((rd or run_dir()).path / "viewer-tokens.json")


def viewer_page() -> str:
    """The viewer's page, without a token."""
    host = config.setting("MUSHU_VIEWER_HOST")
    return f"http://{f'[{host}]' if ':' in host else host}:{config.setting('MUSHU_VIEWER_PORT')}/"


def run_dir() -> RunDir:
    """The run directory the settings name (:func:`mushu_core.process.run_dir_path`), not created."""
    return RunDir(process.run_dir_path())


# -- configuration ------------------------------------------------------------

def environment(rd: RunDir) -> dict[str, str]:
    """Every setting, resolved as this process sees it, for the services' environment.

    Relative paths (the data and key directories) are made absolute against the
    working directory, which is also the services' working directory.
    """
    env = resolved()
    passed_on = config.from_file()
    if passed_on:
        env[config.FROM_FILE_VARIABLE] = passed_on
    env["MUSHU_RUN_DIR"] = str(rd.path)
    env["MUSHU_DATA_DIR"] = os.path.abspath(env["MUSHU_DATA_DIR"])
    if env["MUSHU_KEYS"]:  # CURVE: the services' key directory (docs/security.md)
        env["MUSHU_KEYS"] = os.path.abspath(env["MUSHU_KEYS"])
        security.service_keys(env["MUSHU_KEYS"])  # broken: one error now, not three services that die
    # a restarted amp goes on with the driver, configuration and state it had
    env["MUSHU_AMP_STATE"] = env.get("MUSHU_AMP_STATE") or str(rd.path / "amp-state.json")
    # and a restarted markers service in the same marker session, with its history
    env["MUSHU_MARKERS_JOURNAL"] = env.get("MUSHU_MARKERS_JOURNAL") or str(rd.path / "markers-journal.bin")
    # and a restarted viewer with the same tokens: its pages' addresses stay good
    env["MUSHU_VIEWER_TOKENS"] = viewer_tokens(rd)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stream_environment(rd: RunDir, env: dict[str, str], stream: str) -> dict[str, str]:
    """The environment of stream ``stream``'s services: ``env`` with its ``[amp.NAME]`` settings."""
    own = config.amp_stream_settings(stream)
    keys = {"MUSHU_AMP_DATA": "data", "MUSHU_AMP_CONTROL": "control", "MUSHU_RECORDER_CONTROL": "recorder"}
    clash = {v: k for k, v in env.items() if k in keys}
    for key, name in keys.items():
        if own.get(key) in clash:
            raise ValueError(f"[amp.{stream}] {name} = {own[key]!r} is the first amp's {clash[own[key]]} as well; "
                             "give each amp endpoints of its own")
    stream_env = {**env, **own}
    stream_env["MUSHU_AMP_STATE"] = own.get("MUSHU_AMP_STATE") or str(rd.path / f"amp-{stream}-state.json")
    return stream_env


def _escape(value: str) -> str:
    """A value for supervisord's configuration: ``%`` is its interpolation character."""
    return str(value).replace("%", "%%")


def _env_option(env: dict[str, str]) -> str:
    """supervisord's ``environment=`` value: ``KEY="value",...``.

    Its parser does not unescape quotes, so a value with a double quote or a
    line break cannot be passed and is refused.
    """
    items = []
    for key, value in sorted(env.items()):
        if '"' in value or "\n" in value or "\r" in value:
            raise ValueError(f"{key}={value!r}: supervisord cannot pass a value with a double quote or line break")
        items.append(f'{key}="{_escape(value)}"')
    return ",".join(items)


def render(rd: RunDir, env: dict[str, str], foreground: bool = False, services=tuple(PROGRAMS)) -> str:
    """The supervisord configuration for ``rd`` from the packaged template.

    Only ``services`` start with supervisord; the others can be started
    later. In the foreground (containers, debugging) the services log to
    supervisord's standard output; else each to its file in the run directory.
    """
    fields = {
        "socket": _escape(rd.socket), "pidfile": _escape(rd.pidfile), "logfile": _escape(rd.logfile),
        "run_dir": _escape(rd.path), "cwd": _escape(os.getcwd()), "nodaemon": str(foreground).lower(),
        "python": _escape(shlex.quote(sys.executable)), "environment": _env_option(env),
        "log_maxbytes": "0" if foreground else "10MB",
    }
    for name in PROGRAMS:
        fields[f"{name}_log"] = "/dev/stdout" if foreground else _escape(rd.log(name))
        fields[f"{name}_autostart"] = str(name in services).lower()
    raw = TEMPLATE.read_text()
    text = string.Template(raw).substitute(fields).rstrip("\n") + "\n"
    # a program of an [amp.NAME] table: the first stream's program of that kind with a name, an
    # environment and a log of its own, after it
    order, streams = list(PROGRAMS), programs()
    for optional in OPTIONAL:
        if optional not in streams:  # not asked for: no such program
            text = _without(text, optional)
    for kind_ in STREAM_KINDS:
        block = raw.split(f"[program:{kind_}]\n", 1)[1].split("\n[program:", 1)[0].rstrip("\n") + "\n"
        more = "".join(
            f"[program:{program}]\n" + string.Template(block).substitute(
                fields, environment=_env_option(stream_environment(rd, env, stream_of(program))),
                **{f"{kind_}_log": "/dev/stdout" if foreground else _escape(rd.log(program)),
                   f"{kind_}_autostart": str(program in services).lower()}) + "\n"
            for program in streams if kind(program) == kind_ and stream_of(program) is not None)
        following = [p for p in order[order.index(kind_) + 1:] if f"[program:{p}]" in text]
        if following:
            text = text.replace(f"[program:{following[0]}]", more + f"[program:{following[0]}]", 1)
        elif more:
            text += "\n" + more.rstrip("\n") + "\n"
    return text


def _without(text: str, program: str) -> str:
    """The configuration ``text`` without the section ``[program:PROGRAM]``."""
    head, found, tail = text.partition(f"[program:{program}]\n")
    if not found:
        return text
    rest = tail.split("\n[program:", 1)
    return head.rstrip("\n") + "\n" + ("\n[program:" + rest[1] if len(rest) > 1 else "")


# -- talking to supervisord ------------------------------------------------------

class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float):
        super().__init__()
        self._path, self._timeout = path, timeout

    def make_connection(self, host):
        conn = _UnixConnection(self._path, self._timeout)
        self._connection = (host, conn)  # so that close() closes it
        return conn


def rpc(rd: RunDir, timeout: float = 5.0) -> xmlrpc.client.ServerProxy:
    """An XML-RPC proxy to the supervisord of ``rd`` (``proxy.supervisor.getState()``, ...)."""
    return xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(str(rd.socket), timeout))


def processes(rd: RunDir, timeout: float = 2.0) -> dict[str, dict] | None:
    """supervisord's process info by program name, or None if no supervisord answers at ``rd``."""
    if not rd.socket.exists():
        return None
    try:
        with rpc(rd, timeout) as proxy:
            infos = proxy.supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error, http.client.HTTPException):
        return None
    return {info["name"]: info for info in infos}


def supervisord_pid(rd: RunDir) -> int | None:
    """The pid in ``rd``'s pid file if that process is alive (and, where /proc tells, a supervisord)."""
    try:
        pid = int(rd.pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    cmdline = _cmdline(pid)
    if cmdline is not None and "supervisord" not in cmdline:
        return None  # the pid was reused
    return pid


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def leftovers(rd: RunDir) -> list[int]:
    """Processes of this run directory still alive: supervisord and the services it started.

    Found through ``/proc`` (Linux): the services carry ``MUSHU_RUN_DIR`` in
    their environment, supervisord its configuration file on its command
    line. Empty where there is no ``/proc``.
    """
    marker = f"MUSHU_RUN_DIR={rd.path}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else ():
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ours = str(rd.conf).encode() in cmdline or (marker in env and any(
            m.encode() in cmdline for m in PROGRAMS.values()))
        if ours and cmdline:  # a zombie has an empty command line: nothing to stop
            found.append(pid)
    return found



"""supervisord for ``mushu up``, ``down`` and ``status``: run directory, configuration, XML-RPC.

The run directory (``MUSHU_RUN_DIR``; by default ``$XDG_RUNTIME_DIR/mushu``,
else ``mushu-<uid>`` in the temporary directory) holds the rendered
``supervisord.conf``, supervisord's unix socket, pid file and log, one log
per service, and each running service's start marker
(:class:`mushu_client.process.StartMarker`). supervisord's log also tells
how each service exited (:func:`restarts`, :func:`exit_of`).

Talking to supervisord needs only the standard library (XML-RPC over its
unix socket), so ``mushu status`` and ``mushu down`` work without the
``supervisor`` package; only ``mushu up`` needs it.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import signal
import socket
import string
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from .. import process, security
from ..config import resolved

#: program name -> module run as ``python -m``; also the order of ``status``.
PROGRAMS = {"amp": "mushu_amp", "markers": "mushu_markers", "recorder": "mushu_recorder"}
#: program name -> the variable of its control endpoint (to connect to).
CONTROL = {"amp": "MUSHU_AMP_CONTROL", "markers": "MUSHU_MARKERS_CONTROL", "recorder": "MUSHU_RECORDER_CONTROL"}
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


def run_dir() -> RunDir:
    """The run directory the settings name (:func:`mushu_client.process.run_dir_path`), not created."""
    return RunDir(process.run_dir_path())


# -- configuration ------------------------------------------------------------

def environment(rd: RunDir) -> dict[str, str]:
    """Every setting, resolved as this process sees it, for the services' environment.

    Relative paths (the data and key directories) are made absolute against the
    working directory, which is also the services' working directory.
    """
    env = resolved()
    env["MUSHU_RUN_DIR"] = str(rd.path)
    env["MUSHU_DATA_DIR"] = os.path.abspath(env["MUSHU_DATA_DIR"])
    if env["MUSHU_KEYS"]:  # CURVE: the services' key directory (docs/security.md)
        env["MUSHU_KEYS"] = os.path.abspath(env["MUSHU_KEYS"])
        security.service_keys(env["MUSHU_KEYS"])  # broken: one error now, not three services that die
    # a restarted amp goes on with the driver, configuration and state it had
    env["MUSHU_AMP_STATE"] = env.get("MUSHU_AMP_STATE") or str(rd.path / "amp-state.json")
    env["PYTHONUNBUFFERED"] = "1"
    return env


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
    return string.Template(TEMPLATE.read_text()).substitute(fields)


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


# -- supervisord's record of exits ---------------------------------------------
#
# Restarts and their causes come from supervisord's main log: it is the one
# place where supervisord keeps every exit of a child, in order, with its time
# and its wait status decoded (Subprocess.finish in supervisor/process.py,
# decode_wait_status in supervisor/options.py): "spawned: 'amp' with pid N",
# then "exited: amp (terminated by SIGSEGV (core dumped); not expected)" or
# "exited: amp (exit status 2; not expected)", or "stopped: amp (...)" for a
# stop it was asked for. XML-RPC's getProcessInfo cannot tell: spawn() clears
# exitstatus (a restarted process shows 0), a signal is exitstatus -1 whatever
# it was, an exit within startsecs keeps none, and it counts nothing. The
# PROCESS_STATE_EXITED event carries only "expected" and the pid.

_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) [A-Z]+ (.*)$", re.M)
_LOG_EVENT = re.compile(r"spawned: '(?P<spawned>[^']+)' with pid (?P<pid>\d+)"
                        r"|(?P<how>exited|stopped): (?P<name>\S+) "
                        r"\((?P<what>.*?)(?:; (?P<expected>(?:not )?expected))?\)")
_SIGNALED = re.compile(r"terminated by (?:(SIG[A-Z0-9]+)|signal (\d+))( \(core dumped\))?")
_EXIT_STATUS = re.compile(r"exit status (\d+)")


@dataclass(frozen=True)
class Exit:
    """One exit of a supervised program, as supervisord's log records it.

    Attributes
    ----------
    program : str
        supervisord's program name (``amp``, ``markers``, ``recorder``).
    pid : int or None
        The process that exited (from supervisord's line that spawned it).
    time : float
        When supervisord saw it exit, seconds since the epoch.
    what : str
        supervisord's words: ``"terminated by SIGSEGV (core dumped)"``, ``"exit status 2"``.
    expected : bool
        Its exit status is one of the program's ``exitcodes``.
    requested : bool
        supervisord was asked to stop it (``mushu down``, ``supervisorctl stop``).
    restarted : bool
        supervisord started the program again afterwards.
    """

    program: str
    pid: int | None
    time: float
    what: str
    expected: bool
    requested: bool
    restarted: bool = False

    @property
    def signal(self) -> int | None:
        """The number of the signal that ended it, if one did."""
        m = _SIGNALED.match(self.what)
        if m is None:
            return None
        return int(m[2]) if m[2] else int(getattr(signal, m[1], 0)) or None

    @property
    def exit_status(self) -> int | None:
        """Its exit status, if it exited (rather than was ended by a signal)."""
        m = _EXIT_STATUS.match(self.what)
        return int(m[1]) if m else None

    @property
    def cause(self) -> str:
        """The signal's name (``"SIGSEGV"``), else ``"exit status N"``, else supervisord's words."""
        sig = self.signal
        if sig is not None:
            try:
                return signal.Signals(sig).name
            except ValueError:
                return f"signal {sig}"
        return f"exit status {self.exit_status}" if self.exit_status is not None else self.what

    def as_dict(self) -> dict:
        """``{"cause", "signal" or "exit_status", "core_dumped", "expected", "pid", "time"}`` (ISO 8601, local)."""
        d = {"cause": self.cause}
        if self.signal is not None:
            d.update(signal=self.signal, core_dumped="(core dumped)" in self.what)
        elif self.exit_status is not None:
            d["exit_status"] = self.exit_status
        d.update(expected=self.expected, pid=self.pid,
                 time=datetime.fromtimestamp(self.time).astimezone().isoformat(timespec="milliseconds"))
        return d


def restarts(rd: RunDir, supervisord_pid: int | None) -> dict[str, tuple[int, Exit]] | None:
    """What exited without being asked to since supervisord ``supervisord_pid`` of ``rd`` started.

    Parameters
    ----------
    supervisord_pid : int or None
        supervisord's pid (its pid file); None: the last supervisord the log names.

    Returns
    -------
    dict or None
        Program name -> (how many times supervisord started it again after
        such an exit, the last such :class:`Exit`), for the programs that
        had one; None if the log no longer reaches back to that start.
    """
    start = f"supervisord started with pid {supervisord_pid}\n" if supervisord_pid else "supervisord started with pid"
    text = _log_since(rd, start)
    if text is None:
        return None
    found: dict[str, tuple[int, Exit]] = {}
    for e in _exits(text):
        if not e.requested:
            found[e.program] = (found.get(e.program, (0,))[0] + e.restarted, e)
    return found


def exit_of(rd: RunDir, program: str, pid: int) -> Exit | None:
    """How process ``pid`` of ``program`` ended, as the supervisord of ``rd`` logged it; None if not there."""
    text = _log_since(rd, f"spawned: '{program}' with pid {pid}\n")
    return next((e for e in _exits(text or "") if e.program == program and e.pid == pid), None)


def _log_since(rd: RunDir, needle: str) -> str | None:
    """supervisord's main log (with its rotated backups as far as needed) from the last line holding ``needle``."""
    text = ""
    backups = [p for p in rd.path.glob(f"{rd.logfile.name}.*") if p.suffix[1:].isdigit()]
    paths = [rd.logfile, *sorted(backups, key=lambda p: int(p.suffix[1:]))]
    for path in paths:  # the current log, then .1 (the newest backup), .2, ...
        try:
            text = path.read_text(errors="replace") + text
        except (OSError, ValueError):
            continue
        at = text.rfind(needle)
        if at >= 0:
            return text[text.rfind("\n", 0, at) + 1:]
    return None


def _exits(text: str) -> list[Exit]:
    """The exits in a piece of supervisord's log, each with its pid and whether a start of its program followed."""
    pids: dict[str, int] = {}  # program -> the pid it was spawned with
    ended: dict[str, int] = {}  # program -> index of its exit that no spawn followed yet
    exits: list[Exit] = []
    for stamp, ms, message in _LOG_LINE.findall(text):
        m = _LOG_EVENT.fullmatch(message)
        if m is None:
            continue
        if m["spawned"]:
            pids[m["spawned"]] = int(m["pid"])
            if m["spawned"] in ended:
                i = ended.pop(m["spawned"])
                exits[i] = replace(exits[i], restarted=True)
            continue
        name = m["name"]
        try:
            t = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
        except (ValueError, OverflowError):  # a torn or foreign line
            continue
        ended[name] = len(exits)
        exits.append(Exit(name, pids.pop(name, None), t, m["what"], m["expected"] == "expected", m["how"] == "stopped"))
    return exits

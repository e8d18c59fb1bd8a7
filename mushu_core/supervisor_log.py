"""supervisord's record of the exits of the programs it runs, read from its main log.

``mushu status`` shows each service's restarts and the last exit's cause
from it, and a service started again after an unclean exit names the cause
in its own log (:mod:`mushu_core.process`).
"""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

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


def restarts(logfile: Path, supervisord_pid: int | None) -> dict[str, tuple[int, Exit]] | None:
    """What exited without being asked to since supervisord ``supervisord_pid`` started (its log ``logfile``).

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
    text = _log_since(logfile, start)
    if text is None:
        return None
    found: dict[str, tuple[int, Exit]] = {}
    for e in _exits(text):
        if not e.requested:
            found[e.program] = (found.get(e.program, (0,))[0] + e.restarted, e)
    return found


def exit_of(logfile: Path, program: str, pid: int) -> Exit | None:
    """How process ``pid`` of ``program`` ended, as supervisord logged it in ``logfile``; None if not there."""
    text = _log_since(logfile, f"spawned: '{program}' with pid {pid}\n")
    return next((e for e in _exits(text or "") if e.program == program and e.pid == pid), None)


def _log_since(logfile: Path, needle: str) -> str | None:
    """supervisord's main log (with its rotated backups as far as needed) from the last line holding ``needle``."""
    text = ""
    backups = [p for p in logfile.parent.glob(f"{logfile.name}.*") if p.suffix[1:].isdigit()]
    paths = [logfile, *sorted(backups, key=lambda p: int(p.suffix[1:]))]
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

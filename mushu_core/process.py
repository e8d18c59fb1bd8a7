"""What every mushu service process does the same way: common arguments, logging, signals, crash forensics.

Each service's ``main()`` builds its own ``argparse`` parser, calls
:func:`add_common_arguments`, then :func:`setup` with the parsed arguments,
builds its service object and hands it to :func:`serve`.

A native crash (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL) writes the Python
stack of every thread to standard error, the service's log, and so does
SIGUSR1 (``kill -USR1 PID``), after which the service runs on. While the
service runs, a :class:`StartMarker` in the run directory says so; one left
behind by a process that is gone makes the next start log a warning.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import hashlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

from mushu_core import clock, memory, supervisor_log
from mushu_core.clock import now_ns
from mushu_core.config import DEFAULTS, setting

log = logging.getLogger("mushu.process")

#: Signals of a native crash, after which faulthandler has written the stacks.
CRASH_SIGNALS = frozenset(int(getattr(signal, name)) for name in ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGFPE", "SIGILL")
                          if hasattr(signal, name))

#: The marker of the service this process runs, made by :func:`setup`.
_marker: StartMarker | None = None


def add_common_arguments(parser):
    """``--clock-offset`` and ``--log-level``."""
    parser.add_argument("--clock-offset", type=float, default=0.0,
                        help="add SECONDS to every timestamp (simulates another host's clock, for tests)")
    parser.add_argument("--log-level", help="env MUSHU_LOG_LEVEL, default INFO")


def main(program: str, description: str, arguments, build, argv=None) -> int:
    """The console script of a service: parse its arguments, set up, build the service, serve it.

    Parameters
    ----------
    program, description : str
        For ``--help`` and the log lines.
    arguments : callable
        ``arguments(parser)`` adds the service's own arguments (each falls back
        on its setting: argument > environment > mushu.toml > default).
    build : callable
        ``build(args)`` returns the service (with ``run()`` and ``shutdown()``);
        what it raises is logged as the reason the service cannot start, and
        the exit code is 2.
    """
    parser = argparse.ArgumentParser(prog=program, description=description)
    arguments(parser)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    setup(parser, args, program)
    try:
        service = build(args)
    except Exception as exc:  # a bad setting, a port in use, a missing extra: say it, and exit
        logging.getLogger(program).error("cannot start: %s: %s", type(exc).__name__, exc)
        return 2
    return serve(service)


def setup(parser, args, program: str):
    """Configure logging (``MUSHU_LOG_LEVEL``) and the clock offset; a broken config file exits."""
    try:
        level = setting("MUSHU_LOG_LEVEL", args.log_level).upper()
    except ValueError as exc:  # e.g. a broken mushu.toml
        parser.error(str(exc))
    logging.basicConfig(level=level, format=f"%(asctime)s {program} %(levelname)s %(message)s")
    clock.set_offset(args.clock_offset)
    _dump_stacks_on_crash()
    memory.tune_malloc()
    global _marker
    _marker = StartMarker.of(program, getattr(args, "control", None))


def serve(service) -> int:
    """Run ``service`` until SIGTERM or SIGINT ask it to ``shutdown()``; return the exit code.

    Before it runs, the service's :class:`StartMarker` reports an unclean end
    of its previous run and marks this one; a clean return removes it.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.shutdown())
    # What exists now (modules, drivers, sockets) lives as long as the process:
    # keep it out of the cyclic collector's full passes, which hold the GIL.
    gc.collect()
    gc.freeze()
    if _marker is not None:
        _marker.claim()
    service.run()
    if _marker is not None:
        _marker.release()
    return 0


def _dump_stacks_on_crash():
    """Every thread's Python stack to stderr on a native crash and on SIGUSR1 (:mod:`faulthandler`)."""
    try:
        faulthandler.enable(file=sys.stderr, all_threads=True)
        if hasattr(signal, "SIGUSR1"):
            faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, OSError):  # no standard error with a file descriptor: nowhere to write
        pass


# -- run directory and start marker --------------------------------------------

def run_dir_path() -> Path:
    """The run directory the settings name, not created.

    ``MUSHU_RUN_DIR``; by default ``$XDG_RUNTIME_DIR/mushu``, else
    ``mushu-<uid>`` in the temporary directory. ``mushu up`` keeps its
    supervisord there and passes it to the services it starts; every service
    keeps its :class:`StartMarker` there.
    """
    path = setting("MUSHU_RUN_DIR")
    if not path:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
        path = os.path.join(runtime, "mushu") if runtime else os.path.join(tempfile.gettempdir(), f"mushu-{uid}")
    return Path(path).absolute()


class StartMarker:
    """A file that is there while a service runs: written at its start, removed at its clean exit.

    One per service instance, in the run directory (:func:`run_dir_path`),
    named by the service and the control endpoint it binds, e.g.
    ``amp.tcp-127.0.0.1-12346.running``; it holds the pid and start time.
    Found at start with the pid of a process that is gone, it means that the
    previous run of the same service ended uncleanly (a native crash, SIGKILL,
    a power cut): :meth:`claim` logs a warning with that pid and, when
    supervisord started it, the exit supervisord recorded.

    A directory that cannot be made or written costs only this report, never
    the service's start.

    Parameters
    ----------
    path : Path
        The marker file.
    program : str
        The service's program name, e.g. ``"mushu-amp"``.
    """

    def __init__(self, path: Path, program: str):
        self.path = Path(path)
        self.program = program
        self.owned = False

    @classmethod
    def of(cls, program: str, control: str | None = None) -> StartMarker:
        """The marker of ``program`` (``"mushu-amp"``) bound to ``control`` (else its setting) in the run directory."""
        name = program.removeprefix("mushu-")
        variable = f"MUSHU_{name.upper()}_CONTROL_BIND"
        endpoint = setting(variable, control) if variable in DEFAULTS else None
        if endpoint:
            slug = re.sub(r"[^A-Za-z0-9.]+", "-", endpoint).strip("-")
            if len(slug) > 100:  # a long ipc:// path: a digest names it
                slug = hashlib.sha256(endpoint.encode()).hexdigest()[:16]
            name = f"{name}.{slug}"
        return cls(run_dir_path() / f"{name}.running", program)

    def claim(self) -> dict | None:
        """Report an unclean end of the previous run and mark this one; return the previous run's record, if unclean."""
        previous = self._read()
        if previous is not None and _alive(previous):
            log.debug("%s names pid %s, which runs: another instance of this service keeps it",
                      self.path, previous["pid"])
            return None
        if previous is not None:
            log.warning("started again after an unclean exit: %s", self._describe(previous))
        mine = {"pid": os.getpid(), "program": self.program, "started": time.time(),
                "proc_start": _proc_start(os.getpid())}
        try:
            directory = self.path.parent
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if hasattr(os, "getuid") and directory.stat().st_uid != os.getuid():
                raise PermissionError(f"{directory} belongs to another user")
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            try:
                tmp.write_text(json.dumps(mine))
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
            self.owned = True
        except OSError as exc:
            log.warning("cannot write the start marker %s (%s): an unclean exit of this service will not be "
                        "reported when it starts again; set MUSHU_RUN_DIR to a directory of yours that is writable",
                        self.path, exc.strerror or exc)
        return previous

    def release(self):
        """Remove the marker: this run ends cleanly."""
        if self.owned:
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove the start marker %s (%s): the next start will report this clean exit "
                            "as unclean; remove the file", self.path, exc.strerror or exc)
            self.owned = False

    def _read(self) -> dict | None:
        """The marker's record, ``{"pid", "started", "proc_start"}``, or None if there is none."""
        try:
            record = json.loads(self.path.read_text())
            return {"pid": int(record["pid"]), "started": float(record.get("started") or 0) or None,
                    "proc_start": None if record.get("proc_start") is None else int(record["proc_start"])}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("the start marker %s is unreadable (%s): whether the previous run ended cleanly is unknown; "
                        "it is replaced", self.path, exc)
            return None

    def _describe(self, previous: dict) -> str:
        """The previous run, how it ended (supervisord's record, when it started it) and where its stacks are."""
        pid, started = previous["pid"], previous.get("started")
        run = f"the previous run (pid {pid}{', started ' + local_time(started) if started else ''})"
        end = _supervisord_exit(self.path.parent, pid)
        if end is not None:
            how = f"ended at {local_time(end.time)}, supervisord says: {end.what}"
            if end.signal not in CRASH_SIGNALS:  # killed, or an exit status: no stacks to look for
                return f"{run} {how}"
        else:
            how = "did not exit cleanly (it crashed, was killed, or its computer stopped)"
        return f"{run} {how}; after a native crash its threads' Python stacks are in its log (its standard error)"


def local_time(t: float) -> str:
    """A wall-clock time (seconds since the epoch) as the local ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _supervisord_exit(run_dir: Path, pid: int):
    """The exit of ``pid`` as the supervisord of ``run_dir`` recorded it, if it started this process and that one."""
    program = os.environ.get("SUPERVISOR_PROCESS_NAME")
    if not program:
        return None
    return supervisor_log.exit_of(run_dir / "supervisord.log", program, pid)


def _proc_start(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux ``/proc``); None where unknown."""
    stat = _proc_stat(pid)
    return int(stat[19]) if stat else None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` from the state on, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None


def _alive(record: dict) -> bool:
    """Whether the process a marker names runs: its pid exists, is not a zombie and started when it said."""
    pid = record["pid"]
    if pid == os.getpid():  # a pid used again (a container's restart): the marker is of an earlier run
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, as another user's
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc to tell more
    return stat[0] != "Z" and record.get("proc_start") in (None, int(stat[19]))


class ThrottledLog:
    """Log warnings by kind, at most ``burst`` lines per kind per ``window_s`` seconds.

    Bad input can arrive thousands of times a second; its log lines must not
    flood the log or cost the service its time. A window's suppressed lines
    are reported as a count when the next window opens.
    """

    def __init__(self, logger: logging.Logger, burst: int = 20, window_s: float = 10.0):
        self.log = logger
        self.burst = burst
        self.window_ns = int(window_s * 1e9)
        self._windows: dict[str, list[int]] = {}  # kind -> [window start, logged, suppressed]

    def __call__(self, kind: str, fmt: str, *args):
        now = now_ns()
        w = self._windows.setdefault(kind, [now, 0, 0])
        if now - w[0] > self.window_ns:
            if w[2]:
                self.log.warning("%d more %s problems were not logged", w[2], kind)
            w[:] = [now, 0, 0]
        if w[1] < self.burst:
            w[1] += 1
            self.log.warning(fmt, *args)
        else:
            w[2] += 1

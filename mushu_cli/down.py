"""``mushu down``: stop the services that ``mushu up`` started, and supervisord.

Asks supervisord to stop every program (each as a process group, SIGTERM,
then SIGKILL after its stopwaitsecs) and to shut down, waits until its
process is gone, then looks for anything of this run directory still alive
(a service orphaned by a killed supervisord) and ends it.
"""

from __future__ import annotations

import http.client
import os
import signal
import sys
import time
import xmlrpc.client

from mushu_core.config import ConfigError

from . import supervise

NAME = "down"
HELP = "stop the services started by 'mushu up'"


def add_arguments(p):
    p.add_argument("--timeout", type=float, default=20.0,
                   help="seconds to wait for everything to stop before killing it (default %(default)g)")


def run(args) -> int:
    try:
        rd = supervise.run_dir()
    except ConfigError as exc:
        print(f"mushu down: {exc}", file=sys.stderr)
        return 2
    return stop(rd, args.timeout)


def stop(rd: supervise.RunDir, timeout: float = 20.0, quiet: bool = False) -> int:
    """Stop supervisord of ``rd`` and everything it started; 0 when nothing is left."""
    say = (lambda *a: None) if quiet else print
    pid = supervise.supervisord_pid(rd)
    try:
        proxy = supervise.rpc(rd, timeout)
        pid = proxy.supervisor.getPID()
        proxy.supervisor.stopAllProcesses(True)
        proxy.supervisor.shutdown()
        say(f"mushu down: stopped the services; supervisord (pid {pid}) is shutting down")
    except (OSError, xmlrpc.client.Error, http.client.HTTPException) as exc:
        if pid is not None:
            say(f"mushu down: supervisord (pid {pid}) does not answer ({exc}); terminating it")
            _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    if pid is not None and not _wait_gone([pid], deadline):
        say(f"mushu down: supervisord (pid {pid}) still runs after {timeout:g} s; killing it")
        _signal(pid, signal.SIGKILL)
    left = supervise.leftovers(rd)
    if left:
        say(f"mushu down: ending leftover processes of {rd}: {', '.join(map(str, left))}")
        for p in left:
            _signal(p, signal.SIGTERM)
        if not _wait_gone(left, time.monotonic() + 5):
            for p in left:
                _signal(p, signal.SIGKILL)
            _wait_gone(left, time.monotonic() + 2)
    if pid is None and not left:
        say(f"mushu down: nothing of mushu runs from {rd}")
    for stale in (rd.socket, rd.pidfile):
        stale.unlink(missing_ok=True)
    still = supervise.leftovers(rd)
    if still:
        print(f"mushu down: processes still alive: {', '.join(map(str, still))}", file=sys.stderr)
        return 1
    return 0


def _signal(pid: int, sig: int):
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (not reaped yet by its parent) has ended
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _wait_gone(pids, deadline: float) -> bool:
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True

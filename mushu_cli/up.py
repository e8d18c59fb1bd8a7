"""``mushu up``: start the amp, markers and recorder services under supervisord.

It renders the packaged supervisord configuration into the run directory,
starts supervisord (as a daemon, or attached with ``--foreground``) and
returns once every service answers on its control socket, and is the process
supervisord started (not another instance that already holds the port).
If a service cannot start, it shows the end of that service's log and stops
everything again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import xmlrpc.client

import zmq

from mushu_core.config import ConfigError, setting
from mushu_core.control import ControlClient
from mushu_core.errors import MushuError, ServiceUnavailable

from . import supervise

NAME = "up"
HELP = "start the amp, markers and recorder services (under supervisord)"
#: supervisord states from which a program does not come back by itself (STOPPED and
#: EXITED are passing states at supervisord's start and after a crash).
DEAD = frozenset({"FATAL", "UNKNOWN"})


def add_arguments(p):
    p.add_argument("services", nargs="*", metavar="SERVICE",
                   help="amp, markers and/or recorder (default: all three)")
    p.add_argument("--foreground", action="store_true",
                   help="stay attached (supervisord in the foreground; for containers and debugging)")
    p.add_argument("--timeout", type=float, default=20.0,
                   help="seconds to wait for the services to answer (default %(default)g)")


def run(args) -> int:
    try:
        programs = supervise.programs()
    except ConfigError as exc:
        print(f"mushu up: {exc}", file=sys.stderr)
        return 2
    services = tuple(n for n in programs if n in args.services or not args.services)
    unknown = set(args.services) - set(programs)
    if unknown:
        print(f"mushu up: no service {', '.join(sorted(unknown))}; choose from {', '.join(programs)}",
              file=sys.stderr)
        return 2
    bridges = [n for n in services if supervise.kind(n) == "lslbridge"]
    if bridges and importlib.util.find_spec("pylsl") is None:
        print(f"mushu up: {', '.join(bridges)} (lsl = 1 in the configuration file) need pylsl, which is not "
              "installed here; install the lsl extra: pip install 'mushu[lsl]'", file=sys.stderr)
        return 2
    if "viewer" in services and importlib.util.find_spec("aiohttp") is None:
        print("mushu up: the viewer ([viewer] up = 1 in the configuration file) needs aiohttp, which is not "
              "installed here; install the viewer extra: pip install 'mushu[viewer]'", file=sys.stderr)
        return 2
    try:
        import supervisor  # noqa: F401
    except ImportError:
        print("mushu up: needs supervisord, which is not installed here; install the services extra: "
              "pip install 'mushu[services]'", file=sys.stderr)
        return 2
    try:
        rd = supervise.run_dir()
        rd.create()
        if supervise.processes(rd) is not None:
            if args.foreground:
                print(f"mushu up: mushu is already running from {rd} (mushu down first)", file=sys.stderr)
                return 1
            _start(rd, services)
            return _report(rd, services, wait_ready(rd, args.timeout, services),
                           "is up (its supervisord was running already)", stop=False)
        _clear_stale(rd)
        rd.conf.write_text(supervise.render(rd, supervise.environment(rd), args.foreground, services))
    except (ConfigError, ValueError, OSError, xmlrpc.client.Error) as exc:
        print(f"mushu up: {exc}", file=sys.stderr)
        return 2
    command = [sys.executable, supervise.LAUNCHER, "-c", str(rd.conf)]
    if args.foreground:
        print(f"mushu up: supervisord in the foreground (run dir {rd}); Ctrl-C or SIGTERM stops everything",
              flush=True)
        os.execv(sys.executable, command)
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:  # it daemonizes after reading its configuration and binding its socket
        print(f"mushu up: supervisord did not start (exit {done.returncode}):\n{done.stdout.strip()}",
              file=sys.stderr)
        return 1
    return _report(rd, services, wait_ready(rd, args.timeout, services), "is up")


def _start(rd: supervise.RunDir, services):
    """Start ``services`` on a running supervisord (those running already stay as they are)."""
    proxy = supervise.rpc(rd)
    for name in services:
        try:
            proxy.supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise OSError(f"supervisord cannot start {name}: {fault.faultString}") from None


def _clear_stale(rd: supervise.RunDir):
    """Remove the socket and pid file of a supervisord that is gone; refuse if it is alive but mute."""
    pid = supervise.supervisord_pid(rd)
    if pid is not None:
        raise OSError(f"supervisord (pid {pid}) of {rd} runs but does not answer on {rd.socket}; "
                      "stop it with 'mushu down'")
    for stale in (rd.socket, rd.pidfile):
        stale.unlink(missing_ok=True)


def wait_ready(rd: supervise.RunDir, timeout: float, services=None) -> str | None:
    """Wait until each of ``services`` answers ``ping`` from the pid supervisord gave it; return an error or None."""
    deadline = time.monotonic() + timeout
    # A service is usually still importing when asked first: retry the
    # connection every 20 ms (ZeroMQ's default is 100 ms) to answer sooner.
    zmq.Context.instance().setsockopt(zmq.RECONNECT_IVL, 20)
    for name in supervise.programs() if services is None else services:
        endpoint = supervise.control_endpoint(name)
        if endpoint is None:  # no control socket: running (past startsecs) is ready
            problem = _supervised_running(rd, name, deadline, timeout)
            if problem is not None:
                return problem
            continue
        ctl = ControlClient(endpoint, 0.25, supervise.kind(name))
        try:
            while True:
                info = (supervise.processes(rd) or {}).get(name)
                if info is None:
                    return f"supervisord at {rd} does not answer or does not run {name}"
                if info["statename"] in DEAD:
                    return f"the {name} service is {info['statename']}: {info.get('spawnerr') or 'it exited'}"
                problem = _answers(ctl, name, info["pid"])
                if problem is None:
                    break
                if problem != "silent":
                    return problem
                if time.monotonic() > deadline:
                    return f"the {name} service does not answer at {endpoint} after {timeout:g} s"
        finally:
            ctl.close()
    return None


def _supervised_running(rd: supervise.RunDir, name: str, deadline: float, timeout: float) -> str | None:
    """Wait until supervisord says ``name`` is RUNNING; return an error or None."""
    while True:
        info = (supervise.processes(rd) or {}).get(name)
        if info is None:
            return f"supervisord at {rd} does not answer or does not run {name}"
        if info["statename"] == "RUNNING":
            return None
        if info["statename"] in DEAD:
            return f"the {name} service is {info['statename']}: {info.get('spawnerr') or 'it exited'}"
        if time.monotonic() > deadline:
            return f"the {name} service is not running after {timeout:g} s ({info['statename']})"
        time.sleep(0.05)


def _answers(ctl: ControlClient, name: str, pid: int) -> str | None:
    """None if ``pid`` answers at ``ctl``; ``"silent"`` if nothing answers yet; else what is wrong."""
    try:
        ctl.call("ping")
        status = ctl.call("status")
    except ServiceUnavailable:
        return "silent"
    except MushuError as exc:
        return f"the {name} service at {ctl.endpoint} fails: {exc}"
    if status.get("pid") == pid:
        return None
    if not pid:  # ours is not running (between restarts): whatever answers is not it
        return "silent"
    return (f"another {name} service (pid {status.get('pid')}) answers at {ctl.endpoint}; stop it, or give mushu "
            f"other endpoints ({supervise.control_setting(name)}, ...)")


def _viewer_addresses(rd: supervise.RunDir) -> str:
    """The viewer's two addresses, from the tokens file it keeps in the run directory."""
    path = supervise.viewer_tokens(rd)
    try:
        with open(path) as f:
            tokens = json.load(f)
        page = supervise.viewer_page()
        return (f"the viewer: look at {page}?token={tokens['viewer']}, control at {page}?token={tokens['controller']}")
    except (OSError, ValueError, KeyError) as exc:
        return f"the viewer's addresses are not readable in {path} ({exc}); see its log in {rd}"


def _report(rd: supervise.RunDir, services, problem: str | None, what: str, stop: bool = True) -> int:
    if problem is None:
        endpoints = {n: supervise.control_endpoint(n) for n in services}
        print(f"mushu {what}: " + ", ".join(f"{n} at {e}" if e else n for n, e in endpoints.items()))
        where = f"recordings in {_recordings_dir()}; " if "recorder" in services else ""
        print(f"  {where}logs in {rd}; 'mushu status' shows how they are, 'mushu down' stops them")
        if "viewer" in services:
            print("  " + _viewer_addresses(rd))
        return 0
    print(f"mushu up: {problem}", file=sys.stderr)
    for name in supervise.programs():
        tail = _tail(rd.log(name))
        if tail and name in problem:
            print(f"--- end of {rd.log(name)} ---\n{tail}", file=sys.stderr)
    if stop:  # stop what did start, so that nothing is left half up
        from mushu_cli import down
        down.stop(rd, quiet=True)
    return 1


def _recordings_dir() -> str:
    """Where the recorder that answers writes (it may have been started from another directory)."""
    ctl = ControlClient(setting(supervise.CONTROL["recorder"]), 1.0, "recorder")
    try:
        return ctl.call("status")["data_dir"]
    except (MushuError, KeyError, TypeError):
        return os.path.abspath(setting("MUSHU_DATA_DIR"))
    finally:
        ctl.close()


def _tail(path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""

"""``mushu status``: how each service is, as supervisord and the service itself tell.

For each of amp, markers and recorder: supervisord's view (state, pid,
uptime, and from its log how often the service exited without being asked
to and was started again since ``mushu up``, and how it last did) when
``mushu up`` started it, and what the service answers to ``status`` on its
control socket. Services started some other way (by hand, in containers, on
other hosts) are shown from their own answer alone: state ``RUNNING`` if
they answer, ``UNREACHABLE`` if not.

``--json`` prints ``{"run_dir", "supervisord", "services": {"amp": {...},
"markers": {...}, "recorder": {...}}}``; each service holds at least
``state``, ``pid``, ``restarts`` and ``last_exit`` (``{"cause": "SIGSEGV",
"signal": 11, ...}`` or ``{"cause": "exit status 2", "exit_status": 2, ...}``
with its ``time``; both None when supervisord does not run it).
``--watch`` redraws the view until Ctrl-C. The exit code is 0 when every
service answers (the LSL bridge, which has no control socket: runs), else 1.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from mushu_core import supervisor_log
from mushu_core.config import ConfigError
from mushu_core.control import ControlClient
from mushu_core.errors import MushuError

from . import supervise

NAME = "status"
HELP = "show the state of the amp, markers and recorder services"


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    p.add_argument("--watch", action="store_true", help="refresh the view until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes with --watch")
    p.add_argument("--timeout", type=float, default=0.5, help="seconds to wait for each service's answer")


def run(args) -> int:
    try:
        rd = supervise.run_dir()
        if args.watch:
            return _watch(rd, args)
        report = gather(rd, args.timeout)
        if report["services"]["amp"]["status"] and report["services"]["amp"]["status"].get("state") == "running":
            time.sleep(0.25)  # a second look, for the amp's sample rate
            report = gather(rd, args.timeout, previous=report)
    except ConfigError as exc:
        print(f"mushu status: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(public(report), indent=2) if args.json else render(report))
    return 0 if all(s["answers"] for s in report["services"].values()) else 1


def gather(rd: supervise.RunDir, timeout: float = 0.5, previous: dict | None = None) -> dict:
    """The status report: supervisord's view and each service's own ``status``, asked in parallel.

    ``previous``, an earlier report, lets the amp's sample rate be measured.
    """
    supervised = supervise.processes(rd)
    sup_pid = supervise.supervisord_pid(rd) if supervised is not None else None
    exits = supervisor_log.restarts(rd.logfile, sup_pid) if supervised is not None else None
    programs = supervise.programs()
    with ThreadPoolExecutor(len(programs)) as pool:
        answers = dict(zip(programs, pool.map(lambda n: _ask(n, timeout), programs)))
    services = {}
    for name, (endpoint, status, error, t) in answers.items():
        info = supervised.get(name) if supervised else None
        if info is not None and info["statename"] == "STOPPED":  # not started here: it may run elsewhere
            info = None
        entry = {"state": None, "pid": None, "uptime_s": None, "supervised": info is not None,
                 "restarts": None, "last_exit": None,
                 "control": endpoint, "answers": status is not None, "status": status, "error": error, "t": t}
        if info is not None:
            running = bool(info["pid"])
            entry.update(state=info["statename"], pid=info["pid"] or None,
                         uptime_s=info["now"] - info["start"] if running else None,
                         description=info["description"], log=info["stdout_logfile"] or None)
            if exits is not None:
                count, last = exits.get(name, (0, None))
                entry.update(restarts=count, last_exit=last and last.as_dict())
        else:
            unsupervised = "UNKNOWN" if endpoint is None else "RUNNING" if status else "UNREACHABLE"
            entry.update(state=unsupervised, pid=(status or {}).get("pid"),
                         uptime_s=(status or {}).get("uptime_s"))
        if endpoint is None:  # no control socket: it answers for itself by running
            entry["answers"] = entry["state"] == "RUNNING"
        services[name] = entry
    for name, entry in services.items():
        if supervise.kind(name) == "amp":
            _amp_rate(entry, previous and previous["services"].get(name))
    sup = None
    if supervised is not None:
        sup = {"pid": sup_pid, "socket": str(rd.socket), "log": str(rd.logfile)}
    return {"run_dir": str(rd), "supervisord": sup, "services": services}


def public(report: dict) -> dict:
    """The report without the bookkeeping the rate measurement needs (``t``)."""
    services = {name: {k: v for k, v in s.items() if k != "t"} for name, s in report["services"].items()}
    return {**report, "services": services}


def _ask(name: str, timeout: float):
    endpoint = supervise.control_endpoint(name)
    if endpoint is None:  # no control socket to ask
        return None, None, None, time.monotonic()
    ctl = ControlClient(endpoint, timeout, supervise.kind(name))
    try:
        return endpoint, ctl.call("status"), None, time.monotonic()
    except MushuError as exc:
        return endpoint, None, str(exc), time.monotonic()
    finally:
        ctl.close()


def _amp_rate(amp: dict, before: dict | None):
    """Samples per second between two reports of the same amp session, into ``amp["rate"]``."""
    amp["rate"] = None
    now, then = amp["status"], before and before["status"]
    if now and then and now.get("session") == then.get("session") and amp["t"] > before["t"]:
        amp["rate"] = (now["next_sample"] - then["next_sample"]) / (amp["t"] - before["t"])


# -- the text view ---------------------------------------------------------------

def render(report: dict) -> str:
    """The report as a table, one line per service, details after it."""
    sup = report["supervisord"]
    head = (f"mushu: supervisord pid {sup['pid']}, run dir {report['run_dir']}" if sup else
            f"mushu: no supervisord in {report['run_dir']} (services asked directly)")
    width = max([9] + [len(name) for name in report["services"]])
    lines = [head, f"{'SERVICE':<{width}} {'STATE':<12} {'PID':>7} {'UPTIME':>9}  DETAILS"]
    for name, s in report["services"].items():
        lines.append(f"{name:<{width}} {s['state']:<12} {s['pid'] or '-':>7} {_duration(s['uptime_s']):>9}  "
                     f"{_details(name, s)}")
        if s.get("restarts") or s.get("last_exit"):
            lines.append(f"{'':<{width}} ! {_restarts(s)}")
    return "\n".join(lines)


def _restarts(s: dict) -> str:
    """``restarted 2 times since mushu up; last exit: SIGSEGV (core dumped) at ..., pid ...; see LOG``."""
    n, last = s["restarts"], s["last_exit"]
    text = f"restarted {n} time{'' if n == 1 else 's'} since mushu up"
    if last:
        when = datetime.fromisoformat(last["time"]).strftime("%Y-%m-%d %H:%M:%S")
        text += (f"; last exit: {last['cause']}{' (core dumped)' if last.get('core_dumped') else ''} at {when}, "
                 f"pid {last['pid'] or '?'}")
    return text + (f"; see its log {s['log']}" if s.get("log") else "")


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _details(name: str, s: dict) -> str:
    st = s["status"]
    if supervise.kind(name) == "viewer":
        return f"page at {supervise.viewer_page()}, its addresses with tokens in {supervise.viewer_tokens(None)}"
    if s["control"] is None:
        stream = supervise.stream_of(name)
        return f"LSL outlets of stream {stream or 'the first amp'}'s data and the markers; its log: {s.get('log')}"
    if st is None:
        return f"does not answer at {s['control']}"
    return {"amp": _amp_details, "markers": _markers_details,
            "recorder": _recorder_details}[supervise.kind(name)](st, s)


def _amp_details(st: dict, s: dict) -> str:
    if not st.get("amp"):
        return "no amp selected"
    rate = f"{s['rate']:.0f} samples/s" if s.get("rate") is not None else "rate -"
    errors = [f"{k.replace('_', ' ')} {st[k]}" for k in ("driver_errors", "malformed_requests", "refused_requests")
              if st.get(k)]
    if st.get("error"):
        errors.insert(0, str(st["error"]))
    return (f"{st['amp']} {st['state']}, {st['fs']:g} Hz, {len(st['channels'])} ch, "
            f"seq {st['last_seq']}, sample {st['next_sample']}, {rate}; errors: {', '.join(errors) or 'none'}")


#: Markers-service counters of normal events: shown in --json, not as problems. A subscription to another
#: stream is a client's one SUB socket for data and markers subscribing on both services.
NOT_PROBLEMS = ("connections_accepted", "connections_closed", "other_stream_subscriptions")


def _markers_details(st: dict, s: dict) -> str:
    counts = st.get("counts", {})
    ways = ", ".join(f"{k.split('_')[0]} {v}" for k, v in counts.items() if k.endswith("_markers") and v)
    problems = [f"{k.replace('_', ' ')} {v}" for k, v in counts.items()
                if v and not k.endswith("markers") and k not in NOT_PROBLEMS]
    n = counts.get("markers", 0)
    return (f"{n} marker{'' if n == 1 else 's'} ({ways or 'none yet'}), {st.get('connections', 0)} connections; "
            f"problems: {', '.join(problems) or 'none'}")


def _recorder_details(st: dict, s: dict) -> str:
    rec = st.get("recording")
    if rec:
        return (f"{st['state']} {rec['base']} ({rec['n_samples']} samples, {rec['markers']} markers"
                f"{', error ' + str(rec['error']) if rec.get('error') else ''})")
    last = f"; last error: {st['last_error']}" if st.get("last_error") else ""
    return f"{st['state']}, data in {st['data_dir']}{last}"


def _watch(rd: supervise.RunDir, args) -> int:
    """Redraw the view in place (ANSI: cursor home, clear) every ``args.interval`` seconds."""
    previous = None
    try:
        while True:
            report = gather(rd, args.timeout, previous)
            text = json.dumps(public(report)) if args.json else render(report)
            sys.stdout.write(f"\x1b[H\x1b[2J{text}\n\n(every {args.interval:g} s; Ctrl-C to quit)\n")
            sys.stdout.flush()
            previous = report
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0

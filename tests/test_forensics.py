"""Crash forensics: stacks on a native crash, restarts in ``mushu status``, unclean exits reported at start.

Every service is a real process, crashed with a real signal (``os.kill``);
``mushu up`` runs a real supervisord in a run directory of the test's own.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import free_port
from support import isolated_env, mushu
from test_orchestration import answers, force_down, supervised

from mushu_cli import supervise
from mushu_core import supervisor_log
from mushu_core.control import wait_for

UNCLEAN = "started again after an unclean exit"
#: faulthandler's words for each fatal signal (a pattern: Python versions spell "floating point" two ways)
FATAL = {signal.SIGSEGV: "Segmentation fault", signal.SIGABRT: "Aborted", signal.SIGBUS: "Bus error",
         signal.SIGFPE: "Floating.point exception", signal.SIGILL: "Illegal instruction"}


#: services started by hand in the running test, ended after it
_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_core_files_nor_leftovers():
    """The services these tests crash inherit a core size of 0 (no core files); none outlives its test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    yield
    resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


class Proc:
    """A service started by hand, its standard output and error in ``log``."""

    def __init__(self, module: str, args: list[str], control: str, env: dict, log: Path):
        self.control, self.log = control, log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", module, "--control", control, *args],
                                         env=env, stdout=out, stderr=subprocess.STDOUT)
        _started.append(self.proc)
        wait_for(control, module, 20, self.proc)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def end(self, sig=signal.SIGTERM, timeout=20) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def hand_env(tmp_path: Path, **extra) -> dict:
    """The environment of a service started by hand, its run directory under ``tmp_path``."""
    return {**os.environ, "MUSHU_RUN_DIR": str(tmp_path / "run"), "MUSHU_LOG_LEVEL": "WARNING", **extra}


def endpoints(n: int) -> list[str]:
    return [f"tcp://127.0.0.1:{free_port()}" for _ in range(n)]


def start(name: str, where: Path, env=None, like=None) -> Proc:
    """Start the ``name`` service by hand on free ports, its log in ``where`` (``like=`` an earlier one: the same
    command, ports and log); ``env`` by default :func:`hand_env` of ``where``."""
    env = env or hand_env(where)
    if like is not None:
        return Proc(like.proc.args[2], like.proc.args[5:], like.control, env, like.log)
    control = endpoints(1)[0]
    if name == "amp":
        args = ["--data", endpoints(1)[0], "--amp", "sinusamp", "--start"]
    elif name == "markers":
        data, ingress = endpoints(2)
        args = ["--data", data, "--ingress", ingress, "--port", str(free_port())]
    else:  # the recorder: no amp or markers service needs to answer for it to run
        amp_data, amp_control, markers_data, markers_control = endpoints(4)
        args = ["--data-dir", str(where / "data"), "--amp-data", amp_data, "--amp-control", amp_control,
                "--markers-data", markers_data, "--markers-control", markers_control]
    return Proc(f"mushu_{name}", args, control, env, where / f"{name}.log")


def thread_blocks(dump: str) -> list[str]:
    """The stacks of a faulthandler dump, one string per thread."""
    return re.findall(r"(?m)^(?:Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):\n(?:  .*\n)+", dump)


# -- faulthandler ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,sig", [("amp", s) for s in FATAL] + [("markers", signal.SIGSEGV),
                                                                   ("recorder", signal.SIGSEGV)],
                         ids=lambda v: v.name if isinstance(v, signal.Signals) else v)
def test_a_native_crash_leaves_every_threads_stack_in_the_log(tmp_path, name, sig):
    svc = start(name, tmp_path)
    assert svc.end(sig) == -sig, "faulthandler dumps, then the signal ends the process as it would have"
    text = svc.text()
    assert re.search(f"Fatal Python error: {FATAL[sig]}", text), text
    stacks = thread_blocks(text)
    main = [b for b in stacks if b.startswith("Current thread")]
    assert len(main) == 1 and f"services/{name}/service.py" in main[0], text
    if name == "amp":  # every thread, not only the one the signal hit: the acquisition thread's loop too
        assert len(stacks) >= 2, text
        assert any(re.search(r'File ".*services/amp/service\.py", line \d+ in _acquisition_loop', b)
                   for b in stacks if not b.startswith("Current thread")), text


def test_sigusr1_dumps_the_stacks_and_the_service_runs_on(tmp_path):
    amp = start("amp", tmp_path)
    try:
        amp.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "_acquisition_loop" not in amp.text():
            assert time.monotonic() < deadline, amp.text()
            time.sleep(0.02)
        assert "Fatal Python error" not in amp.text()
        assert len(thread_blocks(amp.text())) >= 2
        assert answers(amp.control, "amp")["pid"] == amp.proc.pid and amp.proc.poll() is None
    finally:
        assert amp.end() == 0


# -- the start marker, by hand ----------------------------------------------------------------

def marker_of(run: Path, name: str) -> dict:
    (path,) = run.glob(f"{name}.*.running")
    return json.loads(path.read_text())


def test_an_unclean_exit_is_reported_at_the_next_start_and_a_clean_one_is_not(tmp_path):
    first = start("amp", tmp_path)
    run = tmp_path / "run"
    assert marker_of(run, "amp")["pid"] == first.proc.pid
    assert first.end(signal.SIGKILL) == -signal.SIGKILL
    second = start("amp", tmp_path, like=first)
    warning = next(line for line in second.text().splitlines() if UNCLEAN in line)
    assert "WARNING" in warning and f"the previous run (pid {first.proc.pid}, started " in warning
    assert "did not exit cleanly" in warning and "stacks are in its log" in warning  # where to look
    assert marker_of(run, "amp")["pid"] == second.proc.pid
    assert second.end(signal.SIGTERM) == 0
    assert not list(run.glob("*.running")), "a clean exit removes its marker"
    size = first.log.stat().st_size
    third = start("amp", tmp_path, like=first)
    try:
        assert UNCLEAN not in first.log.read_text()[size:]
    finally:
        assert third.end(signal.SIGINT) == 0
    assert not list(run.glob("*.running"))


def test_each_instance_has_its_own_marker(tmp_path):
    """Two amps side by side in one run directory: the one killed does not make the other's restart warn."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env = hand_env(tmp_path)
    a, b = start("amp", tmp_path / "a", env=env), start("amp", tmp_path / "b", env=env)
    assert len(list((tmp_path / "run").glob("amp.*.running"))) == 2
    assert a.end(signal.SIGKILL) == -signal.SIGKILL
    assert b.end(signal.SIGTERM) == 0
    b2 = start("amp", tmp_path / "b", env=env, like=b)
    try:
        assert UNCLEAN not in b.text()
    finally:
        assert b2.end() == 0
    assert len(list((tmp_path / "run").glob("amp.*.running"))) == 1, "the killed one's stays, for its next start"


def test_an_unusable_run_directory_does_not_stop_a_service(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = hand_env(tmp_path, MUSHU_RUN_DIR=str(blocker / "run"))  # below a file: it cannot be made
    svc = start("markers", tmp_path, env=env)
    try:
        text = svc.text()
        assert "cannot write the start marker" in text and "set MUSHU_RUN_DIR" in text, text
    finally:
        assert svc.end() == 0
    missing, other = tmp_path / "not" / "yet", tmp_path / "other"
    other.mkdir()
    svc = start("markers", other, env=hand_env(tmp_path, MUSHU_RUN_DIR=str(missing)))
    try:
        assert marker_of(missing, "markers")["pid"] == svc.proc.pid  # made, as mushu up would
        assert "cannot write" not in svc.text()
    finally:
        assert svc.end() == 0


# -- under mushu up -------------------------------------------------------------------------

@pytest.fixture
def up(tmp_path):
    pytest.importorskip("supervisor")
    env = isolated_env(tmp_path)
    mushu("up", env=env, timeout=60)
    try:
        yield env
    finally:
        force_down(env)


def running(env, name, not_pid=None, timeout=20) -> int:
    """The pid of ``name`` once supervisord runs it past startsecs (another than ``not_pid``) and it answers."""
    deadline = time.monotonic() + timeout
    while True:
        info = supervised(env).get(name, {})
        if (info.get("statename") == "RUNNING" and info["pid"] != not_pid
                and (answers(env[supervise.CONTROL[name]], name) or {}).get("pid") == info["pid"]):
            return info["pid"]
        assert time.monotonic() < deadline, f"{name} not running again: {info}"
        time.sleep(0.05)


def status(env) -> dict:
    return json.loads(mushu("status", "--json", env=env).stdout)["services"]


def log_of(env, name) -> str:
    return (Path(env["MUSHU_RUN_DIR"]) / f"{name}.log").read_text(errors="replace")


def test_status_counts_a_segfaulted_amp_and_its_log_says_why(up):
    env = up
    old = running(env, "amp")
    t_kill = time.time()
    os.kill(old, signal.SIGSEGV)
    new = running(env, "amp", not_pid=old)
    services = status(env)
    amp = services["amp"]
    assert amp["pid"] == new and amp["restarts"] == 1, amp
    last = amp["last_exit"]
    assert (last["cause"], last["signal"], last["pid"], last["expected"]) == ("SIGSEGV", 11, old, False), last
    assert t_kill - 2 < datetime.fromisoformat(last["time"]).timestamp() < time.time() + 1, last
    for other in ("markers", "recorder"):
        assert (services[other]["restarts"], services[other]["last_exit"]) == (0, None)
    text = mushu("status", env=env).stdout
    assert re.search(rf"(?m)^amp +RUNNING +{new} .*\n +! restarted 1 time since mushu up; last exit: SIGSEGV "
                     rf"at \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d, pid {old}; see its log .*amp\.log$", text), text
    assert not re.search(r"(?m)^ +! ", text.split("\nmarkers", 1)[1]), text
    log = log_of(env, "amp")
    assert "Fatal Python error: Segmentation fault" in log
    assert re.search(r'File ".*services/amp/service\.py", line \d+ in _acquisition_loop', log), log
    warning = next(line for line in log.splitlines() if UNCLEAN in line)
    assert f"the previous run (pid {old}, started " in warning and "supervisord says: terminated by SIGSEGV" in warning
    assert "stacks are in its log" in warning  # a native crash: where to look

    os.kill(new, signal.SIGKILL)  # and again: counted, with its own cause
    newer = running(env, "amp", not_pid=new)
    amp = status(env)["amp"]
    assert (amp["restarts"], amp["last_exit"]["cause"], amp["last_exit"]["pid"]) == (2, "SIGKILL", new), amp
    killed = next(line for line in log_of(env, "amp").splitlines() if UNCLEAN in line and f"(pid {new}," in line)
    assert "terminated by SIGKILL" in killed and "stacks" not in killed  # killed: no stacks to look for
    assert newer != new


def test_clean_down_and_sigterm_are_not_reported_as_unclean(up):
    env = up
    run = Path(env["MUSHU_RUN_DIR"])
    default = list(supervise.CONTROL)  # what `mushu up` runs with no settings: each with a control socket
    for name in default:
        running(env, name)
    assert {p.name.split(".")[0] for p in run.glob("*.running")} == set(default)
    mushu("down", env=env)
    assert not list(run.glob("*.running")), "mushu down stops every service cleanly"
    sizes = {name: (run / f"{name}.log").stat().st_size for name in default}
    mushu("up", env=env, timeout=60)
    services = status(env)
    for name in default:
        assert UNCLEAN not in log_of(env, name)[sizes[name]:], log_of(env, name)
        assert (services[name]["restarts"], services[name]["last_exit"]) == (0, None), "counted since mushu up"
    old = running(env, "amp")
    size = (run / "amp.log").stat().st_size
    os.kill(old, signal.SIGTERM)  # someone else's SIGTERM: a clean exit, which supervisord restarts
    running(env, "amp", not_pid=old)
    assert UNCLEAN not in log_of(env, "amp")[size:]
    amp = status(env)["amp"]
    assert amp["restarts"] == 1 and amp["last_exit"]["cause"] == "exit status 0", amp
    assert amp["last_exit"]["exit_status"] == 0 and amp["last_exit"]["expected"] is True


# -- reading supervisord's log -------------------------------------------------------------

def test_restarts_come_from_supervisords_log_and_its_backups(tmp_path):
    """The lines supervisord writes (supervisor/process.py, options.py), over a rotation and two runs."""
    rd = supervise.RunDir(tmp_path)
    older = ["2025-03-01 10:00:00,000 INFO supervisord started with pid 100",
             "2025-03-01 10:00:00,100 INFO spawned: 'amp' with pid 101",
             "2025-03-01 10:00:05,000 WARN exited: amp (terminated by SIGSEGV (core dumped); not expected)",
             "2025-03-01 10:00:05,100 INFO spawned: 'amp' with pid 102",
             "2025-03-01 10:01:00,000 WARN stopped: amp (terminated by SIGTERM)",
             "2025-03-02 09:00:00,000 INFO supervisord started with pid 200",
             "2025-03-02 09:00:00,100 INFO spawned: 'amp' with pid 201",
             "2025-03-02 09:00:00,200 INFO spawned: 'recorder' with pid 202"]
    newer = ["2025-03-02 09:10:00,250 WARN exited: amp (exit status 2; not expected)",
             "2025-03-02 09:10:00,300 INFO spawned: 'amp' with pid 203",
             "2025-03-02 09:20:00,000 WARN exited: recorder (terminated by signal 77; not expected)",
             "2025-03-02 09:20:00,010 INFO gave up: recorder entered FATAL state, too many start retries too quickly"]
    Path(f"{rd.logfile}.1").write_text("\n".join(older) + "\n")
    rd.logfile.write_text("\n".join(newer) + "\n")
    found = supervisor_log.restarts(rd.logfile, 200)
    (count, last), (rcount, rlast) = found["amp"], found["recorder"]
    assert count == 1 and last.as_dict()["exit_status"] == 2 and last.pid == 201 and last.cause == "exit status 2"
    assert last.time == time.mktime((2025, 3, 2, 9, 10, 0, 0, 0, -1)) + 0.25
    assert rcount == 0 and (rlast.signal, rlast.cause, rlast.restarted) == (77, "signal 77", False)
    assert supervisor_log.restarts(rd.logfile, 999) is None, "a supervisord whose start the log does not hold"
    crash = supervisor_log.exit_of(rd.logfile, "amp", 101)
    assert (crash.cause, crash.signal, crash.as_dict()["core_dumped"], crash.requested) == ("SIGSEGV", 11, True, False)
    assert supervisor_log.exit_of(rd.logfile, "amp", 102).requested and supervisor_log.exit_of(rd.logfile, "amp", 10) is None
    assert "markers" not in found

"""One configuration (mushu.toml < environment < argument) and ``mushu up``/``status``/``down``.

Everything runs for real: service processes, supervisord, the ``mushu``
command as a subprocess. Each test gets its own run directory, data
directory, free loopback ports and an empty configuration file through the
environment, so it never meets a developer's running mushu or ./mushu.toml.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import free_port
from support import isolated_env, mushu

from mushu_cli import configdoc, supervise
from mushu_client import MarkerSender, Streams, get_amp
from mushu_core import config
from mushu_core.configfile import ConfigError
from mushu_core.control import ControlClient
from mushu_core.errors import ServiceUnavailable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
MODULES = {"amp": "mushu_amp", "markers": "mushu_markers", "recorder": "mushu_recorder"}
FIRST_DATA_S = 2.0
RESTART_S = 2.0
#: supervisord's states of a service that answers (STARTING: in its first second, startsecs)
UP = ("STARTING", "RUNNING")


def ours(env) -> list[psutil.Process]:
    """Live processes of this run directory: its supervisord and the services that carry its MUSHU_RUN_DIR."""
    run_dir = env["MUSHU_RUN_DIR"]
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            cmdline = " ".join(p.info["cmdline"] or ())
            if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid == os.getpid():
                continue
            if run_dir in cmdline or (any(m in cmdline for m in MODULES.values())
                                      and p.environ().get("MUSHU_RUN_DIR") == run_dir):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def force_down(env):
    """Teardown: ``mushu down``, then kill whatever of ours is left."""
    mushu("down", env=env, check=False)
    for p in ours(env):
        p.kill()


def answers(endpoint, name, timeout=0.3):
    """The service's ``status`` at ``endpoint``, or None."""
    ctl = ControlClient(endpoint, timeout, name)
    try:
        ctl.call("ping")
        return ctl.call("status")
    except ServiceUnavailable:
        return None
    finally:
        ctl.close()


def supervised(env) -> dict:
    return supervise.processes(supervise.RunDir(env["MUSHU_RUN_DIR"])) or {}


# -- configuration: file < environment < argument ---------------------------------------------

@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No MUSHU_* variables and an empty working directory (so no ./mushu.toml)."""
    for name in list(os.environ):
        if name.startswith("MUSHU_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_setting_precedence_file_env_argument(clean_env, monkeypatch):
    assert config.setting("MUSHU_AMP_CONTROL") == "tcp://127.0.0.1:12346"
    assert config.setting("MUSHU_AMP_CONTROL_BIND") == "tcp://127.0.0.1:12346"  # bind defaults to connect
    (clean_env / "mushu.toml").write_text('[amp]\ncontrol = "tcp://file:1"\nhistory_mb = 3\n'
                                          '[markers]\nport = 4000\nhost_bind = "0.0.0.0"\n')
    assert config.setting("MUSHU_AMP_CONTROL") == "tcp://file:1"           # ./mushu.toml is found
    assert config.setting("MUSHU_AMP_CONTROL_BIND") == "tcp://file:1"      # ... and the bind follows it
    assert config.setting_float("MUSHU_AMP_HISTORY_MB") == 3.0
    assert config.setting_int("MUSHU_MARKERS_PORT") == 4000
    assert config.setting("MUSHU_MARKERS_HOST") == "127.0.0.1"
    assert config.setting("MUSHU_MARKERS_HOST_BIND") == "0.0.0.0"
    assert config.source("MUSHU_AMP_CONTROL").endswith("mushu.toml [amp] control")
    monkeypatch.setenv("MUSHU_AMP_CONTROL", "tcp://env:2")
    monkeypatch.setenv("MUSHU_AMP_HISTORY_MB", "5")
    assert config.setting("MUSHU_AMP_CONTROL") == "tcp://env:2"            # environment beats the file
    assert config.setting("MUSHU_AMP_CONTROL_BIND") == "tcp://env:2"
    assert config.setting_float("MUSHU_AMP_HISTORY_MB") == 5.0
    assert config.source("MUSHU_AMP_CONTROL") == "environment"
    assert config.setting("MUSHU_AMP_CONTROL", "tcp://arg:3") == "tcp://arg:3"  # an argument beats both
    assert config.setting_float("MUSHU_AMP_HISTORY_MB", 7.5) == 7.5
    monkeypatch.setenv("MUSHU_AMP_CONTROL", "")                             # empty counts as unset
    assert config.setting("MUSHU_AMP_CONTROL") == "tcp://file:1"
    other = clean_env / "other.toml"
    other.write_text('[amp]\ncontrol = "tcp://other:4"\ncontrol_bind = "tcp://0.0.0.0:4"\n')
    monkeypatch.setenv("MUSHU_CONFIG", str(other))                          # MUSHU_CONFIG beats ./mushu.toml
    assert config.setting("MUSHU_AMP_CONTROL") == "tcp://other:4"
    assert config.setting("MUSHU_AMP_CONTROL_BIND") == "tcp://0.0.0.0:4"
    assert config.setting("MUSHU_MARKERS_PORT") == "12344"
    other.write_text('[amp]\ncontrol = "tcp://changed:5"\n')                # a changed file is read again
    os.utime(other, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert config.setting("MUSHU_AMP_CONTROL") == "tcp://changed:5"


def test_config_errors_name_the_problem(clean_env, monkeypatch):
    monkeypatch.setenv("MUSHU_CONFIG", str(clean_env / "missing.toml"))
    with pytest.raises(ConfigError, match="missing.toml"):
        config.setting("MUSHU_AMP_DATA")
    bad = clean_env / "bad.toml"
    monkeypatch.setenv("MUSHU_CONFIG", str(bad))
    for text, match in (('[amp]\nhistroy_mb = 3\n', "unknown key 'histroy_mb' in \\[amp\\]"),
                        ('[ampp]\ndata = "x"\n', "unknown section 'ampp'"),
                        ('[amp]\nsndhwm = true\n', "string or a number"),
                        ('[amp\n', "not valid TOML")):
        bad.write_text(text)
        os.utime(bad, ns=(time.time_ns(), time.time_ns() + hash(text) % 10**9))
        with pytest.raises(ConfigError, match=match):
            config.setting("MUSHU_AMP_DATA")
    bad.write_text('[amp]\nsndhwm = "lots"\n')
    os.utime(bad, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    with pytest.raises(ValueError, match=r"MUSHU_AMP_SNDHWM='lots' \(from .*bad.toml \[amp\] sndhwm\)"):
        config.setting_int("MUSHU_AMP_SNDHWM")


def test_client_reads_the_file_env_and_arguments(clean_env, monkeypatch, amp_service):
    dead = f"tcp://127.0.0.1:{free_port()}"
    (clean_env / "mushu.toml").write_text(f'[amp]\ndata = "{amp_service.data}"\ncontrol = "{amp_service.control}"\n'
                                          f'[markers]\ncontrol = "{dead}"\n[recorder]\ncontrol = "{dead}"\n')
    amp = get_amp("sinusamp", timeout=1.0)                                  # endpoints from ./mushu.toml
    amp.configure(f=5, fs=100, channels=2)
    amp.close()
    monkeypatch.setenv("MUSHU_AMP_CONTROL", dead)                           # the environment wins ...
    with pytest.raises(ServiceUnavailable, match=dead):
        get_amp("sinusamp", timeout=0.3)
    amp = get_amp("sinusamp", control=amp_service.control, timeout=1.0)     # ... and an argument over it
    assert amp.get_sampling_frequency() == 100 and len(amp.get_channels()) == 2
    amp.close()


def _spawn(module, *args, env):
    return subprocess.Popen([sys.executable, "-m", module, *args], env=env)


def test_services_take_file_env_and_arguments(tmp_path):
    """Each service binds and sizes itself from the file, unless the environment or an argument says otherwise."""
    base = isolated_env(tmp_path)
    ports = [f"tcp://127.0.0.1:{free_port()}" for _ in range(5)]
    cfg = tmp_path / "mushu.toml"
    cfg.write_text(f'[amp]\ncontrol_bind = "{ports[0]}"\nhistory_mb = 3\n'
                   f'[markers]\ncontrol_bind = "{ports[3]}"\nmax_connections = 9\nhistory_markers = 77\n'
                   f'[recorder]\ncontrol = "{ports[4]}"\ndata_dir = "{tmp_path / "rec"}"\n')
    file_env = {**base, "MUSHU_CONFIG": str(cfg)}
    for name in ("MUSHU_RECORDER_CONTROL", "MUSHU_DATA_DIR"):
        del file_env[name]
    env_env = {**file_env, "MUSHU_AMP_CONTROL_BIND": ports[1], "MUSHU_AMP_HISTORY_MB": "5"}
    amp_data = lambda: f"tcp://127.0.0.1:{free_port()}"  # noqa: E731
    procs = [  # started together: they start in parallel
        _spawn("mushu_amp", "--data", amp_data(), env=file_env),
        _spawn("mushu_amp", "--data", amp_data(), env=env_env),
        _spawn("mushu_amp", "--data", amp_data(), "--control", ports[2], "--history-mb", "7", env=env_env),
        _spawn("mushu_markers", env=file_env),
        _spawn("mushu_recorder", env=file_env),
    ]
    try:
        got = {}
        deadline = time.monotonic() + 20
        for i, (endpoint, name) in enumerate(zip(ports, ["amp", "amp", "amp", "markers", "recorder"])):
            while (st := answers(endpoint, name)) is None:
                assert procs[i].poll() is None, f"{name} #{i} exited {procs[i].returncode}"
                assert time.monotonic() < deadline, f"{name} #{i} does not answer at {endpoint}"
            got[i] = st
        assert [got[i]["history"]["limit_bytes"] for i in range(3)] == [3 << 20, 5 << 20, 7 << 20]
        assert got[3]["max_connections"] == 9 and got[3]["history"]["limit_markers"] == 77
        assert got[4]["data_dir"] == str(tmp_path / "rec")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def test_example_file_configuration_page_and_services_agree_with_config():
    """mushu.example.toml and docs/configuration.md list every setting, with config.py's defaults and file keys."""
    text = (REPO / "mushu.example.toml").read_text()
    # commented-out keys count as documented: uncomment them to read them all
    doc = tomllib.loads(re.sub(r"(?m)^# (\w+ = )", r"\1", text))
    listed = {(section, key): value for section, table in doc.items() for key, value in table.items()}
    for name, default in config.DEFAULTS.items():
        key = config.file_key(name)
        assert key in listed, f"{name} ({key}) is not in mushu.example.toml"
        assert name in text, f"mushu.example.toml does not name {name}"
        if default is not None and name != "MUSHU_RUN_DIR" and default != "":
            assert str(listed[key]) == default, f"{name}: example {listed[key]!r}, default {default!r}"
    assert len(listed) == len(config.DEFAULTS)
    page = (REPO / "docs" / "configuration.md").read_text()
    assert configdoc.replace_table(page) == page, \
        "docs/configuration.md's table is not the registry's: python -m mushu_cli.configdoc --write docs/configuration.md"
    for name in config.DEFAULTS:
        assert f"| `{name}` |" in page, f"docs/configuration.md does not document {name}"
    from mushu_amp.core import DEFAULT_HISTORY_BYTES as AMP_HISTORY
    from mushu_markers.core import DEFAULT_HISTORY_BYTES as MARKERS_HISTORY
    from mushu_markers.core import DEFAULT_HISTORY_MARKERS
    assert float(config.DEFAULTS["MUSHU_AMP_HISTORY_MB"]) * 2**20 == AMP_HISTORY
    assert float(config.DEFAULTS["MUSHU_MARKERS_HISTORY_MB"]) * 2**20 == MARKERS_HISTORY
    assert int(config.DEFAULTS["MUSHU_MARKERS_HISTORY_MARKERS"]) == DEFAULT_HISTORY_MARKERS


# -- mushu up / status / down ------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """``mushu up`` on free ports; the time from the command to the first data, measured."""
    pytest.importorskip("supervisor")
    env = isolated_env(tmp_path_factory.mktemp("stack"))
    t0 = time.monotonic()
    up = mushu("up", env=env, timeout=30)
    t_up = time.monotonic() - t0
    try:
        amp = get_amp("sinusamp", data=env["MUSHU_AMP_DATA"], control=env["MUSHU_AMP_CONTROL"],
                      markers=env["MUSHU_MARKERS_DATA"], markers_control=env["MUSHU_MARKERS_CONTROL"],
                      recorder=env["MUSHU_RECORDER_CONTROL"])
        amp.configure(f=10, fs=1000, channels=8)
        amp.start()
        while not len(amp.get_data()[0]):
            assert time.monotonic() - t0 < 10, "no data 10 s after mushu up"
        t_data = time.monotonic() - t0
        print(f"\nmushu up returned after {t_up:.3f} s; first data {t_data:.3f} s after the command")
        yield {"env": env, "up": up, "t_up": t_up, "t_data": t_data, "amp": amp}
    finally:
        force_down(env)


def test_up_answers_and_first_data_within_2_s(stack):
    assert "mushu is up" in stack["up"].stdout
    for name, variable in supervise.CONTROL.items():
        assert answers(stack["env"][variable], name) is not None
    assert stack["t_data"] < FIRST_DATA_S, f"first data {stack['t_data']:.2f} s after 'mushu up'"


def test_status_json_and_text(stack):
    env = stack["env"]
    report = json.loads(mushu("status", "--json", env=env).stdout)
    assert set(report["services"]) == {"amp", "markers", "recorder"}
    sup = psutil.Process(report["supervisord"]["pid"])
    assert "supervisord" in " ".join(sup.cmdline())
    for name, s in report["services"].items():
        assert s["state"] in UP and s["supervised"] and s["answers"]
        assert s["status"]["pid"] == s["pid"]
        proc = psutil.Process(s["pid"])
        assert MODULES[name] in proc.cmdline() and proc.ppid() == sup.pid
    amp = report["services"]["amp"]["status"]
    assert (amp["amp"], amp["fs"], len(amp["channels"]), amp["state"]) == ("sinusamp", 1000, 8, "running")
    assert 800 < report["services"]["amp"]["rate"] < 1200
    assert "counts" in report["services"]["markers"]["status"]
    assert report["services"]["recorder"]["status"]["state"] == "idle"
    text = mushu("status", env=env).stdout
    row = r"(?m)^amp\s+(RUNNING|STARTING)\s+\d+\s+\d+:\d\d:\d\d\s+sinusamp running, 1000 Hz, 8 ch"
    assert re.search(row, text), text
    assert re.search(r"(?m)^markers\s+\w+ .* markers", text) and re.search(r"(?m)^recorder\s+\w+ .*idle", text)
    # a client's one SUB socket subscribes on both services: counted, but no problem of a healthy system
    assert report["services"]["markers"]["status"]["counts"]["other_stream_subscriptions"] > 0
    assert re.search(r"(?m)^markers\s.*problems: none", text), text


def test_status_without_supervisord_asks_the_services(stack, tmp_path):
    """Another run directory has no supervisord: state comes from the answer, pid from the service's status."""
    env = {**stack["env"], "MUSHU_RUN_DIR": str(tmp_path / "elsewhere")}
    report = json.loads(mushu("status", "--json", env=env).stdout)
    assert report["supervisord"] is None
    for s in report["services"].values():
        assert s["state"] == "RUNNING" and not s["supervised"] and psutil.pid_exists(s["pid"])
    down = {**env, "MUSHU_RECORDER_CONTROL": f"tcp://127.0.0.1:{free_port()}"}
    done = mushu("status", "--json", "--timeout", "0.2", env=down, check=False)
    assert done.returncode == 1
    recorder = json.loads(done.stdout)["services"]["recorder"]
    assert (recorder["state"], recorder["pid"], recorder["answers"]) == ("UNREACHABLE", None, False)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_status_watch_redraws_in_a_terminal(stack, tmp_path):
    script = tmp_path / "watch.sh"
    exports = "".join(f"export {k}='{v}'\n" for k, v in stack["env"].items() if k.startswith("MUSHU_"))
    script.write_text(f"{exports}exec {sys.executable} -m mushu_cli status --watch --interval 0.2\n")
    server = f"mushu-test-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", server]
    subprocess.run([*tmux, "new-session", "-d", "-x", "180", "-y", "12", f"bash {script}"], check=True)
    try:
        screens = []
        for _ in range(50):
            time.sleep(0.2)
            screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout
            if "samples/s" in screen:
                screens.append(screen)
                if len(screens) == 3:
                    break
        assert len(screens) == 3, screen
        last = screens[-1]
        assert last.count("SERVICE") == 1, "the view is redrawn in place, not appended"
        assert re.search(r"amp\s+RUNNING .*samples/s", last) and "Ctrl-C" in last
        subprocess.run([*tmux, "send-keys", "C-c"], check=True)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


@pytest.mark.parametrize("name", ["amp", "markers", "recorder"])
def test_sigkilled_service_is_back_within_2_s(stack, name):
    env = stack["env"]
    deadline = time.monotonic() + 10
    while (info := supervised(env).get(name, {})).get("statename") != "RUNNING":  # startsecs passed
        assert time.monotonic() < deadline, info
        time.sleep(0.05)
    old = info["pid"]
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    while True:
        st = answers(env[supervise.CONTROL[name]], name, timeout=0.2)
        if st is not None and st["pid"] != old:
            break
        assert time.monotonic() - t0 < 10, f"{name} not back after 10 s"
    back = time.monotonic() - t0
    print(f"\n{name}: SIGKILLed, answering again (pid {st['pid']}) after {back:.3f} s")
    assert back < RESTART_S
    assert supervised(env)[name]["pid"] == st["pid"]


def test_up_again_is_a_no_op(stack, tmp_path):
    env = stack["env"]
    before = {n: i["pid"] for n, i in supervised(env).items()}
    assert "supervisord was running already" in mushu("up", env=env).stdout
    assert {n: i["pid"] for n, i in supervised(env).items()} == before
    # from a directory whose setting says otherwise: it reports where the running recorder writes
    again = mushu("up", env={**env, "MUSHU_DATA_DIR": str(tmp_path / "elsewhere")}).stdout
    assert f"recordings in {env['MUSHU_DATA_DIR']};" in again, again


def test_down_leaves_no_process(tmp_path):
    pytest.importorskip("supervisor")
    env = isolated_env(tmp_path)
    try:
        mushu("up", env=env)
        pids = [p.pid for p in ours(env)]
        assert len(pids) == 4, [p.cmdline() for p in ours(env)]  # supervisord and three services
        done = mushu("down", env=env)
        assert "stopped the services" in done.stdout
        assert ours(env) == [] and not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                            for p in pids)
        assert not Path(env["MUSHU_RUN_DIR"], "supervisord.sock").exists()
        assert "nothing of mushu runs" in mushu("down", env=env).stdout
        # supervisord killed outright leaves its services orphaned: down still ends them
        mushu("up", env=env)
        sup = next(p for p in ours(env) if "supervisord" in " ".join(p.cmdline()))
        sup.kill()
        sup.wait(5)
        assert len(ours(env)) == 3
        assert "leftover" in mushu("down", env=env).stdout
        assert ours(env) == []
    finally:
        force_down(env)


def test_up_some_services_then_more(tmp_path):
    """'mushu up amp' on the amplifier PC; the others may run elsewhere, or be started later."""
    pytest.importorskip("supervisor")
    env = isolated_env(tmp_path)
    try:
        assert "amp at" in mushu("up", "amp", env=env).stdout
        report = json.loads(mushu("status", "--json", "--timeout", "0.2", env=env, check=False).stdout)
        states = {n: (s["state"], s["supervised"]) for n, s in report["services"].items()}
        states["amp"] = (states["amp"][0].replace("STARTING", "RUNNING"), states["amp"][1])  # within startsecs
        assert states == {"amp": ("RUNNING", True), "markers": ("UNREACHABLE", False),
                          "recorder": ("UNREACHABLE", False)}
        mushu("up", "markers", "recorder", env=env)
        report = json.loads(mushu("status", "--json", env=env).stdout)
        assert all(s["state"] in UP and s["supervised"] for s in report["services"].values())
        assert mushu("up", "nonsense", env=env, check=False).returncode == 2
    finally:
        force_down(env)
    assert ours(env) == []


def test_up_foreground_stays_attached_and_stops_on_sigterm(tmp_path):
    pytest.importorskip("supervisor")
    env = isolated_env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "mushu_cli", "up", "--foreground"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        for name, variable in supervise.CONTROL.items():
            while answers(env[variable], name) is None:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, f"{name} does not answer"
        # 'mushu up' became supervisord (exec), the parent of the services
        assert "supervisord" in " ".join(psutil.Process(proc.pid).cmdline())
        assert {p.ppid() for p in ours(env) if p.pid != proc.pid} == {proc.pid}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert ours(env) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        force_down(env)


def test_up_refuses_a_foreign_service_on_its_port(tmp_path, spawn_amp):
    """Something else answering on the amp's endpoints is reported, and nothing is left running."""
    pytest.importorskip("supervisor")
    env = isolated_env(tmp_path)
    foreign = spawn_amp()
    env.update(MUSHU_AMP_DATA=foreign.data, MUSHU_AMP_CONTROL=foreign.control)
    try:
        done = mushu("up", env=env, check=False)
        assert done.returncode == 1
        assert f"another amp service (pid {foreign.proc.pid}) answers at {foreign.control}" in done.stderr
        assert ours(env) == []
        assert answers(foreign.control, "amp")["pid"] == foreign.proc.pid
    finally:
        force_down(env)


def test_a_bad_file_setting_is_reported_as_the_files(tmp_path):
    # mushu up passes the file's settings to the services as variables; a service that cannot use one
    # names the file and key, not "environment"
    env = isolated_env(tmp_path)
    (tmp_path / "mushu.toml").write_text('[amp]\nhistory_mb = "lots"\n')
    env["MUSHU_CONFIG"] = str(tmp_path / "mushu.toml")
    try:
        done = mushu("up", "amp", env=env, check=False, timeout=60)
    finally:
        mushu("down", env=env, check=False)
    assert done.returncode == 1
    assert (f"MUSHU_AMP_HISTORY_MB='lots' (from {tmp_path / 'mushu.toml'} [amp] history_mb, passed on by mushu up) "
            "is not a number; correct it there") in done.stderr, done.stderr


def test_up_without_supervisor_says_what_to_install(tmp_path):
    env = isolated_env(tmp_path)
    code = ("import sys; sys.modules['supervisor'] = None; from mushu_cli import main; "
            "sys.exit(main(['up']))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "pip install 'mushu[services]'" in done.stderr


# -- several amps: [amp.NAME] -----------------------------------------------------------------------


def test_up_runs_every_amp_the_file_declares_and_clients_pick_theirs(tmp_path, monkeypatch):
    """Two streams under mushu up, each with its amp, its recorder and its LSL bridge: read as one (Streams),
    recorded together with one SIGKILL of a recorder, every sample and marker in each stream's recording and
    the XDF, and each stream's samples on LSL."""
    pytest.importorskip("supervisor")
    pyxdf, pylsl = pytest.importorskip("pyxdf"), pytest.importorskip("pylsl")
    from mushu_amp.drivers.rampamp import ramp
    from mushu_core.recordings import load, stream_recordings
    env = isolated_env(tmp_path)
    emg = {key: f"tcp://127.0.0.1:{free_port()}" for key in ("data", "control", "recorder")}
    (tmp_path / "mushu.toml").write_text("[amp]\nlsl = 1\n[amp.emg]\n"  # both streams' LSL bridges as well
                                         + "".join(f'{k} = "{v}"\n' for k, v in emg.items()) + "history_mb = 8\n")
    env["MUSHU_CONFIG"] = str(tmp_path / "mushu.toml")
    for key, value in env.items():
        if key.startswith("MUSHU_"):
            monkeypatch.setenv(key, value)
    try:
        up = mushu("up", env=env, timeout=60).stdout
        assert f"amp-emg at {emg['control']}" in up and f"amp at {env['MUSHU_AMP_CONTROL']}" in up
        assert f"recorder-emg at {emg['recorder']}" in up
        eeg, other = get_amp("sinusamp"), get_amp("rampamp", stream="emg")
        eeg.configure(f=10, fs=1000, channels=8)
        other.configure(fs=500, channels=4)
        streams = Streams([eeg, other])
        streams.start("both")
        inlets = {}
        for stream in ("eeg", "emg"):  # each stream's LSL bridge under mushu up
            found = pylsl.resolve_bypred(f"name='mushu-{stream}'", 1, 10.0)
            assert found, f"no LSL outlet mushu-{stream}"
            inlets[stream] = pylsl.StreamInlet(found[0])
            inlets[stream].open_stream(5.0)
        assert (eeg.stream, other.stream) == ("eeg", "emg")
        got = {stream: {"data": [], "times": [], "markers": []} for stream in streams.amps}
        rates = {"eeg": 1000, "emg": 500}
        n = {"eeg": 0, "emg": 0}

        def take(chunk):
            for stream, d in chunk.items():
                g = got[stream]
                g["markers"] += [(n[stream] + round(ms * rates[stream] / 1000), label) for ms, label in d.markers]
                g["data"].append(d.data)
                g["times"].append(d.times_ns)
                n[stream] += len(d.data)
            return any(len(d.data) for d in chunk.values())

        sender, sent, killed = MarkerSender(), [], None
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:
            take(streams.get_data())
            elapsed = 3.0 - (t_end - time.monotonic())
            if elapsed < 2.7 and len(sent) < elapsed * 10:  # ten a second, none in the last 0.3 s
                sent.append(f"m{len(sent)}")
                sender.send(sent[-1])
            if killed is None and time.monotonic() > t_end - 1.8:
                report = json.loads(mushu("status", "--json", env=env).stdout)
                killed = report["services"]["recorder-emg"]["pid"]
                os.kill(killed, signal.SIGKILL)  # the recorder of one stream dies and is started again
        report = json.loads(mushu("status", "--json", env=env).stdout)
        streams.stop()
        while take(streams.get_data()):
            pass
        sender.close()
        assert list(report["services"]) == ["amp", "amp-emg", "markers", "recorder", "recorder-emg", "lslbridge",
                                            "lslbridge-emg"]
        for name, s in report["services"].items():
            assert s["state"] in UP and s["supervised"], (name, s)
        for stream, channels in (("eeg", 8), ("emg", 4)):
            values = np.asarray(inlets[stream].pull_chunk(timeout=1.0, max_samples=100_000)[0], np.float32)
            assert values.shape[1] == channels and len(values) > rates[stream], (stream, values.shape)
            if stream == "emg":  # consecutive samples of the amp's ramp
                np.testing.assert_array_equal(values, ramp(int(values[0, 0]) // channels, len(values), channels))
            inlets[stream].close_stream()
        assert report["services"]["recorder-emg"]["pid"] != killed
        st = report["services"]["amp-emg"]["status"]
        assert (st["stream"], st["amp"], st["fs"], st["history"]["limit_bytes"]) == ("emg", "rampamp", 500, 8 << 20)
        assert report["services"]["amp"]["status"]["stream"] == "eeg"
        proc = psutil.Process(report["services"]["amp-emg"]["pid"])
        assert proc.environ()["MUSHU_AMP_STATE"] == str(Path(env["MUSHU_RUN_DIR"]) / "amp-emg-state.json")
        assert 400 < report["services"]["amp-emg"]["rate"] < 600
        assert "rampamp" in mushu("amps", "--stream", "emg", env=env).stdout
        streams.close()

        base = os.path.join(env["MUSHU_DATA_DIR"], "both")
        assert stream_recordings(base) == {"eeg": base, "emg": base + "-emg"}
        for stream, path in stream_recordings(base).items():
            data = np.concatenate(got[stream]["data"])
            assert len(data) > 2 * rates[stream] and [m[1] for m in got[stream]["markers"]] == sent
            rec = load(path)
            np.testing.assert_array_equal(rec.data, data)  # every sample the client got, bit for bit
            assert rec.marker_samples() == got[stream]["markers"]  # and every marker on the client's sample
            assert rec.meta["mushu"]["gaps"] == []
        np.testing.assert_array_equal(np.concatenate(got["emg"]["data"]), ramp(0, n["emg"], 4))
        session = json.loads(Path(base + ".session.json").read_text())  # each stream's start on one clock
        assert set(session["streams"]) == {"eeg", "emg"}
        for stream, entry in session["streams"].items():
            assert (entry["n_samples"], entry["fs"], entry["gaps"]) == (n[stream], rates[stream], [])
            assert abs(entry["first_sample_ns"] - got[stream]["times"][0][0]) < 1_000_000, stream
            assert entry["amp_clock_offsets_ns"]
            assert entry["recording"] == os.path.basename(stream_recordings(base)[stream])

        mushu("convert", base, "--to", "xdf", "-o", str(tmp_path / "both.xdf"), "-q", env=env)
        loaded, _ = pyxdf.load_xdf(str(tmp_path / "both.xdf"), dejitter_timestamps=False)
        by_name = {s["info"]["name"][0]: s for s in loaded}
        assert set(by_name) == {"eeg", "emg", "mushu markers"}
        for stream in ("eeg", "emg"):
            times = np.concatenate(got[stream]["times"]) / 1e9
            assert len(by_name[stream]["time_stamps"]) == len(times)
            assert np.abs(by_name[stream]["time_stamps"] - times).max() < 1e-3  # the client's times, on one clock
        assert list(np.ravel(by_name["mushu markers"]["time_series"])) == sent
    finally:
        force_down(env)
    assert ours(env) == []


@pytest.mark.parametrize("table,message", [
    ('[amp.emg]\ndata = "tcp://127.0.0.1:1"\n', "[amp.emg] needs endpoints of its own: control"),
    ('[amp."e m g"]\ndata = "tcp://127.0.0.1:1"\n', "a stream's name is 1 to 32 letters"),
    ('[amp.emg]\ndata = "tcp://127.0.0.1:1"\ncontrol = "tcp://127.0.0.1:2"\nstream = "x"\n',
     "unknown key 'stream' in [amp.emg]"),
    ('[amp.emg]\ndata = "{amp_data}"\ncontrol = "tcp://127.0.0.1:2"\n', "is the first amp's MUSHU_AMP_DATA as well"),
])
def test_a_wrong_amp_table_is_refused_naming_it(tmp_path, table, message):
    env = isolated_env(tmp_path)
    (tmp_path / "mushu.toml").write_text(table.replace("{amp_data}", env["MUSHU_AMP_DATA"]))
    env["MUSHU_CONFIG"] = str(tmp_path / "mushu.toml")
    done = mushu("up", env=env, check=False, timeout=30)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert ours(env) == []

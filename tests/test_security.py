"""CURVE and roles (docs/security.md): real services with a key directory, clients with and without keys."""

import json
import logging
import os
import stat
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from conftest import free_port
from test_compose import compose, environment  # noqa: F401 (compose is a fixture)
from zmq.utils import z85

import mushu_client
from mushu_amp.drivers.rampamp import ramp
from mushu_cli import main as cli
from mushu_cli import supervise
from mushu_client.sender import MarkerSender
from mushu_core import security
from mushu_core.control import ControlClient
from mushu_core.errors import Forbidden, SecurityError, ServiceUnavailable
from mushu_core.recordings import load

FS, CH = 1000, 4


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A lab's key directory (made with the CLI), an unlisted client, and another lab's controller."""
    root = tmp_path_factory.mktemp("keys")
    lab, other = str(root / "lab"), str(root / "other")
    assert cli(["keys", "init", lab]) == 0
    assert cli(["keys", "add", "intruder", lab, "--role", "controller"]) == 0
    os.remove(os.path.join(lab, "authorized", "controllers", "intruder.key"))  # revoked: no longer listed
    assert cli(["keys", "init", other]) == 0
    clients = os.path.join(lab, "clients")
    return {"server": lab, **{name: os.path.join(clients, name) for name in os.listdir(clients)},
            "wrong_server": os.path.join(other, "clients", "controller")}


@pytest.fixture
def as_controller(keys, monkeypatch):
    """This test process is the lab's controller client; services get the services' directory."""
    monkeypatch.setenv("MUSHU_KEYS", keys["controller"])
    return {"MUSHU_KEYS": keys["server"]}


def started_amp(spawn_amp, server_env):
    """A running amp service; the test process waits for it as the controller."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUSHU_KEYS", server_env["MUSHU_KEYS"] and server_env["MUSHU_KEYS"] + "/clients/controller")
        return spawn_amp("--amp", "rampamp", "--configure", json.dumps({"fs": FS, "channels": CH}), "--start",
                         env=server_env)


def subscriber(endpoint, keys_dir):
    """A raw SUB socket on ``endpoint`` with the client keys in ``keys_dir`` (None: plaintext)."""
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    security.curve_client(sock, security.load(keys_dir) if keys_dir else None)
    sock.connect(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    return sock


def test_key_directory_holds_the_roles_and_keeps_secrets_private(keys):
    clients = security.authorised_clients(keys["server"])
    assert sorted(clients.values()) == [("controller", "controller"), ("sender", "sender"), ("viewer", "viewer")]
    for path in (os.path.join(keys["server"], "server.key_secret"),
                 os.path.join(keys["viewer"], "client.key_secret")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    viewer = security.load(keys["viewer"])
    assert viewer.server_secret is None and viewer.server_public == security.load(keys["server"]).server_public
    assert cli(["keys", "init", keys["server"]]) == 1  # never overwrites a lab's keys



def test_the_configuration_file_names_the_key_directory(keys, tmp_path, monkeypatch):
    monkeypatch.delenv("MUSHU_KEYS", raising=False)
    (tmp_path / "mushu.toml").write_text(f'[security]\nkeys = "{keys["viewer"]}"\n')
    monkeypatch.setenv("MUSHU_CONFIG", str(tmp_path / "mushu.toml"))
    assert security.configured().public == security.load(keys["viewer"]).public
    monkeypatch.setenv("MUSHU_KEYS", keys["sender"])  # the environment wins
    assert security.configured().public == security.load(keys["sender"]).public


def test_a_broken_key_directory_is_an_error_naming_the_file(keys, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(security.KeyDirError, match="server.key"):
        security.load(str(broken))
    (broken / "server.key").write_text('curve\n    public-key = "not a key"\n')
    (broken / "client.key_secret").write_text("")
    with pytest.raises(security.KeyDirError, match=r"broken/server.key holds no valid public key"):
        security.load(str(broken))
    with pytest.raises(security.KeyDirError, match="is not a directory"):
        security.load(str(tmp_path / "nowhere"))
    monkeypatch.setenv("MUSHU_KEYS", str(tmp_path / "nowhere"))
    assert cli(["amps"]) == 2 and "mushu amps: MUSHU_KEYS=" in capsys.readouterr().err  # no traceback


def test_zap_names_the_role_and_keeps_viewers_off_the_marker_ingress(keys):
    clients = security.authorised_clients(keys["server"])
    viewer_key = security.load(keys["viewer"]).public

    def request(domain, key):
        return [b"1.0", b"7", domain.encode(), b"10.0.0.9", b"", b"CURVE", z85.decode(key)]

    reply, role, _ = security.zap_reply(request("mushu", viewer_key), clients)
    assert (reply[2], reply[4], role) == (b"200", b"viewer", "viewer")
    reply, role, why = security.zap_reply(request(security.INGRESS_DOMAIN, viewer_key), clients)
    assert (reply[2], role) == (b"400", None) and "may not send markers" in why
    unlisted = security.load(keys["intruder"]).public
    reply, role, why = security.zap_reply(request("mushu", unlisted), clients)
    assert (reply[2], role) == (b"400", None) and "not listed" in why
    reply, role, _ = security.zap_reply([b"1.0", b"8", b"mushu", b"10.0.0.9", b"", b"NULL"], clients)
    assert (reply[2], role) == (b"400", None)
    reply, role, _ = security.zap_reply([b"1.0", b"9"], clients)  # answered all the same: REP must reply
    assert (reply[1], reply[2], role) == (b"9", b"500", None)


def test_controller_records_a_viewer_reads_but_cannot_control(keys, as_controller, spawn_amp, spawn_markers,
                                                             spawn_recorder):
    amp_svc = spawn_amp(env=as_controller)
    mk = spawn_markers(env=as_controller)
    rec = spawn_recorder(amp_svc, mk, env=as_controller)
    endpoints = dict(data=amp_svc.data, control=amp_svc.control, markers=mk.data, markers_control=mk.control,
                     recorder=rec.control)
    amp = mushu_client.get_amp("rampamp", **endpoints, marker_grace=0.05)  # MUSHU_KEYS: the controller's
    amp.configure(fs=FS, channels=CH)
    amp.start("secure")
    viewer = mushu_client.get_amp("rampamp", **endpoints, keys=keys["viewer"])
    viewer.start()  # joins the running amp: a viewer may not start it
    with MarkerSender(protocol="zmq", ingress=mk.ingress, keys=keys["sender"]) as stimulus:
        stimulus.send("S  1")
    got, seen = [], 0
    deadline = time.monotonic() + 10
    while (seen < 200 or sum(len(m) for _, m in got) < 1) and time.monotonic() < deadline:
        got.append(amp.get_data())
        data, _ = viewer.get_data()
        seen += len(data)
    assert seen >= 200, "the viewer received no data"
    with pytest.raises(Forbidden, match="forbidden: role viewer may not 'stop'"):
        viewer.stop()
    with pytest.raises(Forbidden, match="forbidden: role viewer may not 'configure'"):
        viewer.configure(fs=100)
    with pytest.raises(SecurityError, match="not authorised"):  # a viewer sends no markers either
        MarkerSender(protocol="zmq", ingress=mk.ingress, keys=keys["viewer"], timeout=3).send("fake")
    assert ControlClient(rec.control, keys=keys["viewer"]).call("status")["state"] == "recording"
    with pytest.raises(Forbidden, match="forbidden: role viewer may not 'finish'"):
        ControlClient(rec.control, keys=keys["viewer"]).call("finish", end_sample=0)
    security_counts = amp.status()["security"]
    assert security_counts["curve"] and security_counts["forbidden_requests"] == 2
    for _ in range(3):
        got.append(amp.get_data())  # the recording went on
    amp.stop()
    while True:
        data, markers = amp.get_data()
        if not len(data):
            break
        got.append((data, markers))
    viewer.close()
    amp.close()
    data = np.concatenate([d for d, _ in got])
    np.testing.assert_array_equal(data, ramp(0, len(data), CH))
    recording = load(amp.recording_result["base"])
    np.testing.assert_array_equal(recording.data, data)  # complete: every sample the controller read
    assert [label for _, label in recording.markers] == ["S  1"]


def test_unlisted_client_gets_nothing_and_a_clear_error_at_once(keys, as_controller, spawn_amp):
    amp_svc = started_amp(spawn_amp, as_controller)
    sub = subscriber(amp_svc.data, keys["intruder"])
    t0 = time.monotonic()
    with pytest.raises(SecurityError, match=r"CURVE handshake with tcp://127\.0\.0\.1:\d+ failed: not authorised"):
        ControlClient(amp_svc.control, timeout=10, service="amp", keys=keys["intruder"]).call("stop")
    with pytest.raises(SecurityError, match="not authorised"):
        mushu_client.get_amp("rampamp", data=amp_svc.data, control=amp_svc.control, keys=keys["intruder"])
    assert time.monotonic() - t0 < 3, "a refused client must not wait out its timeout"
    assert not sub.poll(1000), "an unlisted client received data"
    sub.close()
    status = ControlClient(amp_svc.control).call("status")
    assert status["state"] == "running" and status["security"]["handshakes_refused"] >= 3


def test_a_revoked_client_is_refused_at_its_next_connection(keys, as_controller, spawn_amp):
    amp_svc = spawn_amp(env=as_controller)
    client = security.add_client(keys["server"], "temp", "viewer")
    assert ControlClient(amp_svc.control, keys=client).call("status")["security"]["role"] == "viewer"
    os.remove(os.path.join(keys["server"], "authorized", "viewers", "temp.key"))
    with pytest.raises(SecurityError, match="not authorised"):
        ControlClient(amp_svc.control, keys=client).call("ping")


def test_the_lsl_bridge_reads_as_a_viewer(keys, as_controller, spawn_amp):
    pytest.importorskip("pylsl")
    from test_lsl import open_inlet, unique
    amp_svc = started_amp(spawn_amp, as_controller)
    name = unique("secure-bridge")
    bridge = subprocess.Popen([sys.executable, "-m", "mushu_lslbridge", "--amp-data", amp_svc.data, "--amp-control",
                               amp_svc.control, "--no-markers", "--name", name, "--log-level", "WARNING"],
                              env={**os.environ, "MUSHU_KEYS": keys["viewer"]})
    try:
        inlet = open_inlet(name)
        got, deadline = 0, time.monotonic() + 10
        while got < 100 and time.monotonic() < deadline:
            got += len(inlet.pull_chunk(timeout=0.2, max_samples=1000)[1])
        assert got >= 100, "no data through a bridge with viewer keys"
    finally:
        bridge.terminate()
        bridge.wait(10)


@pytest.mark.parametrize("client, server, why", [
    ("wrong_server", "server", "wrong server key"),
    (None, "server", r"the service expects encryption \(set MUSHU_KEYS"),
    ("controller", None, "the service does not use CURVE"),
])
def test_wrong_server_key_or_keys_on_one_side_fail_clearly(keys, spawn_amp, client, server, why):
    amp_svc = started_amp(spawn_amp, {"MUSHU_KEYS": keys[server] if server else ""})
    sub = subscriber(amp_svc.data, keys[client] if client else None)
    t0 = time.monotonic()
    with pytest.raises(SecurityError, match=why):
        ControlClient(amp_svc.control, timeout=10, keys=keys[client] if client else "").call("ping")
    assert time.monotonic() - t0 < 3
    assert not sub.poll(500), "data reached a client that failed the handshake"
    sub.close()


def _resetting_listener(resets):
    """A TCP port that accepts ``resets`` connections and resets each before the greeting (a dying service)."""
    import socket
    import threading
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", free_port()))
    listener.listen(8)

    def reset_connections():
        for _ in range(resets):
            conn, _ = listener.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        listener.close()  # then the port is closed: connections are refused, no handshake at all

    thread = threading.Thread(target=reset_connections, daemon=True)
    thread.start()
    return f"tcp://127.0.0.1:{listener.getsockname()[1]}", thread


@pytest.mark.parametrize("curve, resets", [(False, 10), (True, 1)])
def test_a_connection_lost_mid_handshake_is_no_security_error(keys, curve, resets):
    """A service killed or restarting mid-handshake resets the connection: not a refusal.

    Without CURVE no reset is one; with CURVE, a handshake that ends in a reset
    again and again is a wrong server key (test above), a single one is not.
    """
    endpoint, thread = _resetting_listener(resets)
    ctl = ControlClient(endpoint, timeout=0.3, keys=keys["controller"] if curve else "")
    try:
        deadline = time.monotonic() + 10
        while thread.is_alive():  # every reset seen by a request
            assert time.monotonic() < deadline
            with pytest.raises(ServiceUnavailable) as caught:
                ctl.call("ping")
            assert not isinstance(caught.value, SecurityError), caught.value
    finally:
        ctl.close()
        thread.join(5)


def test_without_keys_binding_beyond_loopback_warns(caplog):
    ctx = zmq.Context()
    try:
        with caplog.at_level(logging.WARNING, "mushu.security"):
            security.Guard(ctx, {"data": "tcp://127.0.0.1:1", "control": "ipc:///tmp/x"}, directory="")
            assert not caplog.records
            security.Guard(ctx, {"data": "tcp://0.0.0.0:1", "control": "tcp://[::1]:2"}, directory="")
        assert "bound beyond loopback without encryption (data tcp://0.0.0.0:1)" in caplog.text
    finally:
        ctx.destroy(linger=0)


def test_a_service_warns_when_exposed_and_refuses_a_client_key_directory(keys):
    env = {**os.environ, "MUSHU_KEYS": ""}
    endpoints = ["--data", f"tcp://0.0.0.0:{free_port()}", "--control", f"tcp://127.0.0.1:{free_port()}"]
    proc = subprocess.Popen([sys.executable, "-m", "mushu_amp", *endpoints], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 10
        while "beyond loopback" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        assert "WARNING bound beyond loopback without encryption (data tcp://0.0.0.0:" in line
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run([sys.executable, "-m", "mushu_amp", *endpoints], capture_output=True, text=True,
                         timeout=20, env={**os.environ, "MUSHU_KEYS": keys["viewer"]})
    assert bad.returncode == 2 and "is a client's key directory" in bad.stderr


def test_without_keys_nothing_changes(spawn_amp, monkeypatch):
    monkeypatch.delenv("MUSHU_KEYS", raising=False)
    amp_svc = spawn_amp()
    ctl = ControlClient(amp_svc.control)
    assert ctl.call("status")["security"] == {"curve": False, "handshakes_allowed": 0, "handshakes_refused": 0,
                                              "forbidden_requests": 0, "role": "controller"}
    ctl.call("use", amp="rampamp")  # everyone is a controller
    with pytest.raises(ServiceUnavailable):
        ControlClient(f"tcp://127.0.0.1:{free_port()}", timeout=0.2).call("ping")
    sub = subscriber(amp_svc.data, None)
    assert sub.poll(2000), "no stream info reached a plaintext client"
    sub.close()
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="no mushu markers service accepted a ZeroMQ connection"):
        MarkerSender(protocol="zmq", ingress=f"tcp://127.0.0.1:{free_port()}", timeout=0.3).send("lost")
    assert time.monotonic() - t0 < 2, "the ZeroMQ sender must not queue a marker nobody takes"


def test_compose_and_supervisord_hand_every_service_the_keys(compose, tmp_path, monkeypatch):
    for name, service in compose["services"].items():
        assert environment(service)["MUSHU_KEYS"] == "/keys", name
        mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}:{'ro' if v.get('read_only') else 'rw'}"
                  for v in service.get("volumes", ())]
        assert any(m.endswith(":/keys:ro") and "keys" in m.split(":")[0] for m in mounts), (name, mounts)
    monkeypatch.chdir(tmp_path)
    security.init_directory("lab-keys")
    monkeypatch.setenv("MUSHU_KEYS", "lab-keys")
    env = supervise.environment(supervise.RunDir(tmp_path / "run"))
    assert env["MUSHU_KEYS"] == str(tmp_path / "lab-keys")  # absolute: the services find it wherever they run
    monkeypatch.setenv("MUSHU_KEYS", "lab-keys/clients/viewer")  # 'mushu up' refuses before starting anything
    with pytest.raises(security.KeyDirError, match="is a client's key directory"):
        supervise.environment(supervise.RunDir(tmp_path / "run"))

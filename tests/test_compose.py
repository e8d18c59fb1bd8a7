"""docker-compose.yml and the Dockerfile name only what mushu has: commands, settings, ports.

No Docker engine runs here. CI validates the file with ``docker-compose config -q``
(.ci/run); this test reads it (resolved by ``docker-compose config`` when that is
installed, else as YAML) and checks it against the package.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mushu_cli import supervise
from mushu_core import config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    if shutil.which("docker-compose"):
        done = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                              timeout=60, cwd=REPO)
        assert done.returncode == 0, done.stderr
        return yaml.safe_load(done.stdout)
    return yaml.safe_load(COMPOSE.read_text())


def scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def assert_runs_mushu(command: list[str]):
    """``command`` is one of mushu's console scripts (whose target exists) or ``python -m`` a mushu module."""
    if command[0] in ("python", "python3") and command[1] == "-m":
        assert command[2].startswith("mushu"), command
        importlib.import_module(command[2])
        return
    target = scripts().get(command[0])
    assert target, f"{command[0]!r} is not a console script of mushu ({sorted(scripts())})"
    module, _, attr = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def published(service: dict) -> set[tuple[int, str]]:
    """(container port, protocol) of every published port, short or long syntax."""
    found = set()
    for port in service.get("ports", ()):
        if isinstance(port, dict):
            found.add((int(port["target"]), port.get("protocol", "tcp")))
        else:
            spec, _, proto = str(port).partition("/")
            found.add((int(spec.rsplit(":", 1)[-1]), proto or "tcp"))
    return found


#: A service's command, where it is not mushu-KIND.
SCRIPTS = {"lslbridge": "mushu-lsl-bridge", "viewer": "mushu-viewer"}


def test_three_services_from_one_image_running_mushu_commands(compose):
    services = compose["services"]
    assert {n for n, s in services.items() if not s.get("profiles")} == {"amp", "markers", "recorder"}
    assert len({s["image"] for s in services.values()}) == 1
    for name, service in services.items():
        command = service["command"]
        command = command.split() if isinstance(command, str) else command
        assert_runs_mushu(command)
        kind, _, stream = name.partition("-")
        assert SCRIPTS.get(kind, kind) in command[-1], f"service {name} runs {command}"
        if kind == "lslbridge":  # on the host's network, for LSL's multicast, under the profile lsl
            assert service["profiles"] == ["lsl"] and service["network_mode"] == "host"
            assert all(urlsplit(v).hostname == "127.0.0.1" for v in environment(service).values() if "://" in v)
        elif kind == "viewer":  # under the profile viewer, reading the services by their names
            env = environment(service)
            assert service["profiles"] == ["viewer"] and env["MUSHU_VIEWER_HOST"] == "0.0.0.0"
            assert {urlsplit(v).hostname for v in env.values() if "://" in v} == {"amp", "markers", "recorder"}
            assert env["MUSHU_MARKERS_HOST"] == "markers" and (12360, "tcp") in published(service)
        elif service.get("profiles"):  # a further stream's amp and recorder, under the stream's profile
            assert kind in ("amp", "recorder") and service["profiles"] == [stream], (name, service["profiles"])
            assert environment(service)["MUSHU_STREAM"] == stream
            assert {f"amp-{stream}", f"recorder-{stream}"} <= set(services)


def test_every_variable_is_a_mushu_setting():
    names = set(re.findall(r"\bMUSHU_[A-Z_]+", COMPOSE.read_text() + (REPO / "Dockerfile").read_text()))
    assert names, "no MUSHU_* variable at all?"
    unknown = names - set(config.DEFAULTS) - {"MUSHU_CONFIG"}
    assert not unknown, f"not settings of mushu_core.config: {sorted(unknown)}"


def test_services_bind_everywhere_publish_their_ports_and_find_each_other(compose):
    services = compose["services"]
    for name, service in services.items():
        if name.partition("-")[0] in supervise.NO_CONTROL:
            continue  # binds nothing: it only reads the bus
        env = environment(service)
        binds = {k: v for k, v in env.items() if k.endswith("_BIND")}
        assert binds, f"{name} binds nothing beyond its container's loopback"
        ports = published(service)
        for variable, value in binds.items():
            if value.startswith("tcp://"):
                url = urlsplit(value)
                assert url.hostname == "0.0.0.0", f"{name}: {variable}={value}"
                assert (url.port, "tcp") in ports, f"{name}: {variable} port {url.port} is not published"
                # the container port is the one mushu's clients use by default
                assert url.port == urlsplit(config.DEFAULTS[variable.removesuffix("_BIND")]).port
            else:
                assert value == "0.0.0.0", f"{name}: {variable}={value}"
    marker_port = int(environment(services["markers"]).get("MUSHU_MARKERS_PORT", config.DEFAULTS["MUSHU_MARKERS_PORT"]))
    assert {(marker_port, "tcp"), (marker_port, "udp")} <= published(services["markers"])
    hosts = [(str(p["published"]), p.get("protocol", "tcp")) if isinstance(p, dict) else
             (str(p).split(":")[0], str(p).partition("/")[2] or "tcp")
             for s in services.values() for p in s.get("ports", ())]
    assert len(hosts) == len(set(hosts)), f"a host port is published twice: {sorted(hosts)}"
    for name in (n for n in services if n.partition("-")[0] == "recorder"):
        recorder = environment(services[name])
        stream = name.partition("-")[2]
        for variable in ("MUSHU_AMP_DATA", "MUSHU_AMP_CONTROL", "MUSHU_MARKERS_DATA", "MUSHU_MARKERS_CONTROL"):
            host = urlsplit(recorder[variable]).hostname
            assert host in services, f"{name}: {variable} points at {host}, not a compose service"
            assert urlsplit(recorder[variable]).port == urlsplit(config.DEFAULTS[variable]).port
        amp_host = urlsplit(recorder["MUSHU_AMP_DATA"]).hostname
        assert amp_host == (f"amp-{stream}" if stream else "amp"), f"{name} records {amp_host}"


def test_recordings_in_a_named_volume_and_usb_for_the_amp(compose):
    services = compose["services"]
    data_dir = environment(services["recorder"])["MUSHU_DATA_DIR"]
    volumes = services["recorder"]["volumes"]
    mounts = [(v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2]) for v in volumes]
    assert any(target == data_dir and source in compose["volumes"] for source, target in mounts), mounts
    devices = [str(d) for d in services["amp"].get("devices", ())]
    assert any(d.startswith("/dev/bus/usb") for d in devices)


def test_dockerfile_installs_the_services_extra_and_runs_mushu():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"(?m)^FROM python:3\.11-slim\b", text)
    assert re.search(r'pip install .*"\.\[[^]]*\bservices\b', text)
    cmd = re.search(r"(?m)^CMD (\[.*\])$", text)
    assert cmd, "the Dockerfile has no CMD in exec form"
    assert_runs_mushu(yaml.safe_load(cmd.group(1)))

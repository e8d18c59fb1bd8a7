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


def test_three_services_from_one_image_running_mushu_commands(compose):
    services = compose["services"]
    assert set(services) == {"amp", "markers", "recorder"}
    assert len({s["image"] for s in services.values()}) == 1
    for name, service in services.items():
        command = service["command"]
        command = command.split() if isinstance(command, str) else command
        assert_runs_mushu(command)
        assert name in command[-1], f"service {name} runs {command}"


def test_every_variable_is_a_mushu_setting():
    names = set(re.findall(r"\bMUSHU_[A-Z_]+", COMPOSE.read_text() + (REPO / "Dockerfile").read_text()))
    assert names, "no MUSHU_* variable at all?"
    unknown = names - set(config.DEFAULTS) - {"MUSHU_CONFIG"}
    assert not unknown, f"not settings of mushu_core.config: {sorted(unknown)}"


def test_services_bind_everywhere_publish_their_ports_and_find_each_other(compose):
    services = compose["services"]
    for name, service in services.items():
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
    recorder = environment(services["recorder"])
    for variable in ("MUSHU_AMP_DATA", "MUSHU_AMP_CONTROL", "MUSHU_MARKERS_DATA", "MUSHU_MARKERS_CONTROL"):
        host = urlsplit(recorder[variable]).hostname
        assert host in services, f"recorder: {variable} points at {host}, not a compose service"
        assert urlsplit(recorder[variable]).port == urlsplit(config.DEFAULTS[variable]).port


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

"""Fixtures that run mushu services as real processes on free loopback ports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import free_port  # noqa: F401  (tests import it from here)

from mushu_core.control import ControlClient, wait_for


@pytest.fixture(autouse=True, scope="session")
def _run_dir(tmp_path_factory):
    """The services of the tests keep their start markers (mushu_core.process) in a directory of their own."""
    os.environ["MUSHU_RUN_DIR"] = str(tmp_path_factory.mktemp("run"))


#: LSL discovery on this machine only, on 127.0.0.1, in a session of the tests' own.
LSL_CONFIG = """\
[ports]
IPv6 = disable
[multicast]
ResolveScope = machine
ListenAddress = 127.0.0.1
[lab]
KnownPeers = {127.0.0.1}
SessionID = mushu-tests
[log]
level = -3
"""


@pytest.fixture(autouse=True, scope="session")
def _lsl_on_loopback(tmp_path_factory):
    """LSL traffic stays on this machine: every LSL user of the tests reads this configuration.

    liblsl reads ``LSLAPICFG`` once, at a process's first LSL call: it is set
    for the whole session, before any test runs, so this process and every
    service and bridge it starts are in the same LSL session.
    """
    path = tmp_path_factory.mktemp("lsl") / "lsl_api.cfg"
    path.write_text(LSL_CONFIG)
    os.environ["LSLAPICFG"] = str(path)


class Service:
    """A service process and its endpoints."""

    def __init__(self, proc, data, control, name):
        self.proc, self.data, self.control, self.name = proc, data, control, name

    def ctl(self, timeout=2.0) -> ControlClient:
        return ControlClient(self.control, timeout, self.name)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_until_answers(svc: Service, timeout: float = 15.0):
    wait_for(svc.control, svc.name, timeout, svc.proc)


@pytest.fixture
def spawn_amp():
    """Start ``python -m mushu_amp`` with extra arguments (``like=`` an earlier one: same endpoints)."""
    started = []

    def spawn(*args, env=None, like=None):
        if like is None:
            data, control = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
        else:  # a restart of an earlier service on its endpoints
            data, control = like.data, like.control
        proc = subprocess.Popen(
            [sys.executable, "-m", "mushu_amp", "--data", data, "--control", control,
             "--log-level", "WARNING", *args],
            env={**os.environ, **(env or {})},
        )
        svc = Service(proc, data, control, "amp")
        started.append(svc)
        wait_until_answers(svc)
        return svc

    yield spawn
    for svc in started:
        svc.stop()


@pytest.fixture
def amp_service(spawn_amp):
    return spawn_amp()


class MarkersService(Service):
    """A markers service process with its TCP/UDP port and ZeroMQ ingress."""

    def __init__(self, proc, data, control, port, ingress):
        super().__init__(proc, data, control, "markers")
        self.port, self.ingress = port, ingress


@pytest.fixture
def spawn_markers():
    """Start ``python -m mushu_markers``; pass ``like=`` a previous one to reuse its ports."""
    started = []

    def spawn(*args, like=None, env=None):
        if like is None:
            port, data, control, ingress = (free_port(), *(f"tcp://127.0.0.1:{free_port()}" for _ in range(3)))
        else:
            port, data, control, ingress = like.port, like.data, like.control, like.ingress
        proc = subprocess.Popen(
            [sys.executable, "-m", "mushu_markers", "--port", str(port), "--data", data, "--control", control,
             "--ingress", ingress, "--log-level", "WARNING", *args],
            env={**os.environ, **(env or {})})
        svc = MarkersService(proc, data, control, port, ingress)
        started.append(svc)
        wait_until_answers(svc)
        return svc

    yield spawn
    for svc in started:
        svc.stop()


class RecorderService(Service):
    """A recorder process with its data directory."""

    def __init__(self, proc, control, data_dir, args):
        super().__init__(proc, None, control, "recorder")
        self.data_dir, self.args = data_dir, args


@pytest.fixture
def spawn_recorder(tmp_path):
    """Start ``python -m mushu_recorder`` for an amp (and markers) service.

    ``spawn(amp, markers=None, data_dir=None, like=None, preexec_fn=None, env=None)``;
    ``like=`` a previous recorder restarts one with the same endpoints and
    data directory.
    """
    started = []

    def spawn(amp=None, markers=None, data_dir=None, like=None, preexec_fn=None, env=None):
        if like is not None:
            control, data_dir, args = like.control, like.data_dir, like.args
        else:
            control = f"tcp://127.0.0.1:{free_port()}"
            data_dir = str(data_dir or tmp_path / "data")
            args = ["--amp-data", amp.data, "--amp-control", amp.control]
            if markers is not None:
                args += ["--markers-data", markers.data, "--markers-control", markers.control]
            else:  # no markers service: endpoints where nothing answers
                args += ["--markers-data", f"tcp://127.0.0.1:{free_port()}",
                         "--markers-control", f"tcp://127.0.0.1:{free_port()}"]
        proc = subprocess.Popen([sys.executable, "-m", "mushu_recorder", "--control", control,
                                 "--data-dir", data_dir, "--log-level", "WARNING", *args],
                                preexec_fn=preexec_fn, env={**os.environ, **(env or {})})
        svc = RecorderService(proc, control, data_dir, args)
        started.append(svc)
        wait_until_answers(svc)
        return svc

    yield spawn
    for svc in started:
        svc.stop()

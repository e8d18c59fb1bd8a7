"""Checks shared by the hardware-driver tests (test_gusbamp.py, test_epoc.py)."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from support import published_blocks

import mushu_client
from mushu_amp.drivers import usbdev
from mushu_client import AmpError

TESTS = str(Path(__file__).parent)


@pytest.fixture(autouse=True)
def fresh_usb_backend(monkeypatch):
    """No ``MUSHU_USB_BACKEND`` unless a test sets one, and no backend cached from another test."""
    monkeypatch.delenv(usbdev.ENV_BACKEND, raising=False)
    usbdev._backend_from_spec.cache_clear()
    yield
    usbdev._backend_from_spec.cache_clear()


def available_only_with_its_device(monkeypatch, driver, present, absent):
    """``driver.is_available()`` on the buses of ``usb_fakes.<present>()`` (True) and ``<absent>()`` (False)."""
    for factory, expected in ((present, True), (absent, False)):
        usbdev._backend_from_spec.cache_clear()
        monkeypatch.setenv(usbdev.ENV_BACKEND, f"usb_fakes:{factory}")
        assert driver.is_available() is expected, factory


def read_for(amp, seconds):
    """Everything ``amp.get_data()`` returns in ``seconds``."""
    chunks, t_end = [], time.monotonic() + seconds
    while time.monotonic() < t_end:
        chunks.append(amp.get_data()[0])
    return np.concatenate(chunks)


def read_until_error(amp, exc, words, within):
    """Read until ``amp`` raises ``exc`` matching ``words``, which must happen ``within`` seconds; return the data."""
    chunks, t0 = [], time.monotonic()
    with pytest.raises(exc, match=words):
        while time.monotonic() - t0 < 5:
            chunks.append(amp.get_data()[0])
    assert time.monotonic() - t0 < within
    return np.concatenate(chunks) if chunks else np.empty((0, 0), np.float32)


def count_until_silence_error(amp, words):
    """Read until the driver reports its silence (``TimeoutError``), within 1.5 s; return (samples, empty reads)."""
    t0, got, empty = time.monotonic(), 0, 0
    with pytest.raises(TimeoutError, match=words):
        while time.monotonic() - t0 < 5:
            n = len(amp.get_data()[0])
            got, empty = got + n, empty + (n == 0)
    assert time.monotonic() - t0 < 1.5
    return got, empty


def collect(amp, n, timeout=20):
    """At least ``n`` samples from a client's ``get_data()``."""
    chunks, deadline = [], time.monotonic() + timeout
    while sum(map(len, chunks)) < n:
        assert time.monotonic() < deadline, f"only {sum(map(len, chunks))} of {n} samples arrived"
        chunks.append(amp.get_data()[0])
    return np.concatenate(chunks)


def unplugging_wakes_a_waiting_read(amp, emu, words):
    """A read waiting for data that never comes ends at once when the device is unplugged."""
    amp.start()
    threading.Timer(0.2, emu.unplug).start()
    read_until_error(amp, ConnectionError, words, within=0.5)


def spawn_with(spawn_amp, factory):
    """The amp service as a process whose drivers see ``usb_fakes.<factory>()``'s bus."""
    return spawn_amp(env={"PYTHONPATH": TESTS, usbdev.ENV_BACKEND: f"usb_fakes:{factory}"})


def amp_through_service(spawn_amp, factory, amp_name, absent):
    """A client amp of a service seeing ``factory``'s bus, which lists ``amp_name`` but not ``absent``."""
    svc = spawn_with(spawn_amp, factory)
    names = mushu_client.get_available_amps(control=svc.control)
    assert amp_name in names and absent not in names
    return mushu_client.get_amp(amp_name, data=svc.data, control=svc.control)


def vanishing_device_reaches_client_and_status(spawn_amp, factory, amp_name, words):
    """Through the service: data first, then ``AmpError`` naming the disconnection, and state 'error'."""
    svc = spawn_with(spawn_amp, factory)
    with mushu_client.get_amp(amp_name, data=svc.data, control=svc.control) as amp:
        amp.start()
        got, deadline = 0, time.monotonic() + 20
        with pytest.raises(AmpError, match=words):
            while time.monotonic() < deadline:
                got += len(amp.get_data()[0])
        assert got > 0
        status = amp.status()
        assert status["state"] == "error" and f"ConnectionError: {words}" in status["error"]


def stamp_errors(spawn_amp, tmp_path, factory, amp_name, index_of, seconds=5.0, **configure):
    """Stamp error (ns, stamped minus true acquisition time) of every block after the model's first
    2.5 s, and the session's clock status, from a service whose driver sees ``factory``'s late, drifting
    device (its truth written to a file). ``index_of(data)`` says which device sample a block's first row is.
    """
    truth = tmp_path / f"truth-{factory}.json"
    svc = spawn_amp(env={"PYTHONPATH": TESTS, usbdev.ENV_BACKEND: f"usb_fakes:{factory}",
                         "MUSHU_TEST_USB_TRUTH": str(truth)})
    blocks, clock = published_blocks(svc, amp_name, seconds, **configure)
    t = json.loads(truth.read_text())
    skipped = {index_of(b.data) - b.header.first_sample for b in blocks}
    assert len(skipped) == 1, f"the device dropped samples: {sorted(skipped)}"
    start = blocks[0].header.t_ns + 2.5e9
    errors = [b.header.t_ns - (t["t0_ns"] + index_of(b.data) * t["period_ns"])
              for b in blocks if b.header.t_ns >= start]
    assert len(errors) > 50, len(errors)
    return np.array(errors), clock

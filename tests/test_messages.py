"""Mistakes a newcomer makes, each answered with a message that names the cause and the remedy.

One amp service serves every client here, as a lab's does all day.
"""

import sys
import time

import pytest
from support import free_port

import mushu_client
from mushu_client import ServiceUnavailable, UnknownAmp


@pytest.fixture(scope="module")
def amp_svc():
    import subprocess

    from conftest import Service, wait_until_answers
    data, control = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    proc = subprocess.Popen([sys.executable, "-m", "mushu_amp", "--data", data, "--control", control,
                             "--log-level", "ERROR"])
    svc = Service(proc, data, control, "amp")
    wait_until_answers(svc)
    yield svc
    svc.stop()


def amp_of(svc, name="sinusamp"):
    return mushu_client.get_amp(name, data=svc.data, control=svc.control)


def test_a_bad_and_missing_configure_arguments_are_named_in_one_message(amp_svc):
    amp = amp_of(amp_svc)
    with pytest.raises(TypeError) as info:
        amp.configure(fs="abc")
    message = str(info.value)
    assert "fs must be a positive number of Hz, not 'abc'" in message and "missing f, channels" in message
    assert "sinusamp.configure(f, fs, channels)" in message  # what the call takes
    with pytest.raises(TypeError, match=r"unknown 'chanels'"):
        amp.configure(f=10, fs=1000, chanels=8)
    amp.configure(f=10, fs=1000, channels=8)  # and the amp still takes a good one
    amp.close()


def test_a_sine_above_nyquist_is_refused_with_the_limit(amp_svc):
    amp = amp_of(amp_svc)
    with pytest.raises(ValueError, match=r"f=600 Hz is not below the Nyquist frequency fs/2 = 500 Hz.*"
                                         r"choose f below 500 Hz or a higher fs"):
        amp.configure(f=600, fs=1000, channels=2)
    amp.close()


def test_get_data_before_start_says_to_call_start_at_once(amp_svc):
    amp = amp_of(amp_svc)
    amp.configure(f=10, fs=1000, channels=2)
    t = time.monotonic()
    with pytest.raises(RuntimeError, match=r"get_data\(\) before start\(\): call amp.start\(\) first"):
        amp.get_data()
    assert time.monotonic() - t < 0.5
    amp.start()
    assert amp.get_data()[0].shape[1] == 2  # once started, as always
    amp.stop()
    amp.get_data()  # after stop() the rest is still returned
    amp.close()


def test_a_misspelt_driver_is_a_key_error_and_a_value_error_listing_the_known_amps(amp_svc):
    with pytest.raises(UnknownAmp) as info:
        amp_of(amp_svc, "sinusamo")
    error = info.value
    assert isinstance(error, KeyError) and isinstance(error, ValueError)  # libmushu's except KeyError still works
    assert str(error).startswith("unknown amp 'sinusamo' (did you mean 'sinusamp'?); known amps: ")
    assert "rampamp" in str(error) and "replayamp" in str(error)


def test_a_driver_without_its_extra_names_the_extra(monkeypatch):
    from mushu_amp import drivers
    monkeypatch.setitem(sys.modules, "pylsl", None)  # as if pylsl were not installed
    monkeypatch.delitem(sys.modules, "mushu_amp.drivers.lslamp", raising=False)
    with pytest.raises(ImportError, match=r"amp 'lslamp' needs pylsl, which is not installed: install mushu's "
                                          r"'lsl' extra \(pip install -e \"\.\[lsl\]\""):
        drivers.load_driver("lslamp")
    described = {a["name"]: a for a in drivers.describe_amps()}["lslamp"]
    assert not described["installed"] and "'lsl' extra" in described["reason"]  # what 'mushu amps' shows


def test_a_service_that_does_not_answer_says_how_to_start_it():
    control = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceUnavailable) as info:
        mushu_client.get_amp("sinusamp", control=control, timeout=0.2)
    message = str(info.value)
    assert f"no reply from the mushu amp service at {control} within 0.2 s: is it running?" in message
    assert "Start it with 'mushu up'" in message and "MUSHU_AMP_CONTROL" in message

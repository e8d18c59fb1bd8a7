"""One amp service across many client sessions, as a lab runs it from Monday to Friday.

Clients come and go: each configures a rate, reads, and either stops and
closes or is SIGKILLed mid-stream; in some sessions a second client reads
beside it. The service must outlive all of them, and every value every
client got must be the ramp's.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "ramp_session.py")
#: (fs, channels) cycled through: small and large blocks, so the bus sees its block size grow and shrink.
RATES = [(1000, 8), (10_000, 64), (100_000, 64), (2000, 256), (20_000, 64), (50_000, 64), (250, 8)]
SESSIONS = 21  # three rounds of RATES


def _client(svc, mode, fs, channels, seconds):
    return subprocess.Popen([sys.executable, SCRIPT, svc.control, svc.data, mode, str(fs), str(channels),
                             str(seconds)], stdout=subprocess.PIPE, text=True)


def _wait_reading(proc, svc, what):
    line = proc.stdout.readline()
    assert svc.proc.poll() is None, f"the amp service died ({svc.proc.returncode}) in {what}"
    assert line.strip() == "reading", f"{what}: no data ({line!r}, exit {proc.poll()})"


def _result(proc, what):
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}"
    result = json.loads(out.strip().splitlines()[-1])
    assert not result["errors"], f"{what}: wrong values {result['errors'][:3]}"
    assert not result["warnings"], f"{what}: {result['warnings'][:3]}"
    assert result["lost"] == 0, f"{what}: {result['lost']} samples lost"
    return result


@pytest.mark.timeout(300)
def test_one_amp_service_outlives_many_client_sessions_stopped_killed_and_side_by_side(spawn_amp):
    svc = spawn_amp()
    pid = svc.proc.pid
    ctl = svc.ctl(timeout=5.0)
    try:
        for i in range(SESSIONS):
            fs, channels = RATES[i % len(RATES)]
            killed = i % 2 == 1
            beside = i % 3 == 0
            what = f"session {i} ({fs} Hz x {channels}, {'killed' if killed else 'stopped'}" \
                   f"{', with a second client' if beside else ''})"
            main = _client(svc, "start", fs, channels, 0.8)
            _wait_reading(main, svc, what)
            second = _client(svc, "join", fs, channels, 0.4) if beside else None
            if second is not None:
                _wait_reading(second, svc, what + ", second client")
            if killed:
                time.sleep(0.3)
                main.send_signal(signal.SIGKILL)
                main.wait(10)
                if second is not None and i % 4 == 3:
                    second.send_signal(signal.SIGKILL)  # both vanish without a word
                    second.wait(10)
                    second = None
            else:
                result = _result(main, what)
                assert result["samples"] >= fs * 0.8 * 0.5, f"{what}: only {result['samples']} samples"
            if second is not None:
                assert _result(second, what + ", second client")["samples"] > 0
            assert svc.proc.poll() is None, f"the amp service died ({svc.proc.returncode}) after {what}"
            status = ctl.call("status")
            assert status["pid"] == pid
    finally:
        ctl.close()
    assert svc.proc.poll() is None

"""A service that dies and returns: the client reconnects by itself and reports the gap exactly."""

import json
import signal
import time
import warnings

import numpy as np
import pytest

import mushu_client
from mushu_amp.drivers.rampamp import ramp
from mushu_client import GapWarning, ServiceWarning

FS = 1000


def test_the_client_follows_an_amp_restart_and_reports_the_samples_not_acquired(spawn_amp):
    args = ("--amp", "rampamp", "--configure", json.dumps({"fs": FS, "channels": 4}))
    svc = spawn_amp(*args)
    amp = mushu_client.get_amp("rampamp", data=svc.data, control=svc.control, timeout=0.2)
    amp.start()
    chunks = []

    def read(seconds):
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            chunks.append(amp.get_data()[0])

    read(0.5)
    before = sum(map(len, chunks))
    svc.proc.send_signal(signal.SIGKILL)
    svc.proc.wait()
    t_down = time.monotonic()
    with pytest.warns(ServiceWarning, match="not answering"):
        read(1.3)  # no exception reaches the loop while the amp is away
    spawn_amp(*args, "--start", like=svc)  # as a supervisor would; acquisition resumes
    t_up = time.monotonic()
    with pytest.warns(GapWarning, match="the amp restarted") as record:
        read(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read(0.3)
    assert amp.connected
    amp.stop()
    read(0.1)
    amp.close()
    data = np.concatenate(chunks)
    ((first, lost),) = amp.gaps
    old = data[:first]
    new = data[first:]
    np.testing.assert_array_equal(old, ramp(0, len(old), 4))
    np.testing.assert_array_equal(new, ramp(0, len(new), 4))  # the new session, from its sample 0
    assert first >= before
    # the samples the amp did not acquire: about the time it was down, never less
    assert (t_up - t_down) * FS * 0.5 < lost < (t_up - t_down) * FS + 1500
    assert "samples were not acquired" in str(record[0].message)

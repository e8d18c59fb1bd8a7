"""Markers a driver produces land on their samples exactly; a driver whose data ends says so."""

import textwrap

import numpy as np
import pytest

import mushu_client
from mushu_amp.drivers.rampamp import ramp
from mushu_client import EndOfData
from mushu_core.recordings import load

MARKED = textwrap.dedent("""
    from mushu_amp.drivers.base import EndOfData
    from mushu_amp.drivers.rampamp import RampAmp

    class MarkedRamp(RampAmp):
        '''A ramp with a marker on every 100th sample, one announced 50 samples early,
        and an end after 1000 samples.'''
        def start(self):
            super().start()
            self.sent = 0
        def get_data(self):
            if self.sent >= 1000:
                raise EndOfData()
            data, _ = super().get_data()
            data = data[:1000 - self.sent]
            first, n = self.sent, len(data)
            period = 1000.0 / self.fs
            markers = [((k - first) * period, f"at {k}") for k in range(first, first + n) if k % 100 == 0]
            markers += [((k + 50 - first) * period, f"early {k + 50}")  # beyond this data: waits for its sample
                        for k in range(first, first + n) if k % 100 == 0 and k + 50 < 1000]
            self.sent += n
            return data, markers
""")


@pytest.fixture
def marked_amp(spawn_amp, tmp_path):
    (tmp_path / "markedramp.py").write_text(MARKED)
    return spawn_amp(env={"PYTHONPATH": str(tmp_path), "MUSHU_DRIVERS": "markedramp=markedramp:MarkedRamp"})


def test_driver_markers_land_on_their_samples_and_the_end_is_signalled(marked_amp, spawn_recorder):
    rec = spawn_recorder(marked_amp)
    amp = mushu_client.get_amp("markedramp", data=marked_amp.data, control=marked_amp.control,
                               recorder=rec.control)
    amp.configure(fs=2000, channels=4)
    amp.start("marked")
    chunks, markers, n = [], [], 0
    with pytest.raises(EndOfData, match="ended after sample 1000"):
        for _ in range(100_000):
            data, mk = amp.get_data()
            assert all(0 <= ms < len(data) * 1000 / 2000 for ms, _ in mk)
            markers += [(n + round(ms * 2000 / 1000), label) for ms, label in mk]
            chunks.append(data)
            n += len(data)
    data = np.concatenate(chunks)
    np.testing.assert_array_equal(data, ramp(0, 1000, 4))
    expected = sorted([(k, f"at {k}") for k in range(0, 1000, 100)] +
                      [(k + 50, f"early {k + 50}") for k in range(0, 1000, 100)])
    assert sorted(markers) == expected
    assert amp.status()["state"] == "ended"
    amp.stop()
    r = load(amp.recording_result["base"])
    np.testing.assert_array_equal(r.data, data)
    assert sorted((round(ms * 2000 / 1000), label) for ms, label in r.markers) == expected
    amp.close()

"""One client session against an amp service running ``rampamp``, as a process of its own.

``python tests/ramp_session.py CONTROL DATA MODE FS CHANNELS SECONDS``

MODE ``start`` configures and starts the amp (stopping it first if an
earlier client left it running) and expects the session from sample 0;
``join`` reads a session another client started, from where it is. Every
value returned is checked against the ramp. A line ``reading`` is printed
once data flows (a test may SIGKILL the process from then on); at the end,
after ``stop()`` (MODE ``start``) and ``close()``, one JSON line with what
was read.
"""

import json
import sys
import time
import warnings

import numpy as np

import mushu_client
from mushu_amp.drivers.rampamp import RAMP_MODULUS, ramp


def main(control, data, mode, fs, channels, seconds):
    fs, channels, seconds = int(fs), int(channels), float(seconds)
    result = {"samples": 0, "errors": [], "warnings": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        amp = mushu_client.get_amp("rampamp", data=data, control=control, timeout=5.0)
        if mode == "start":
            amp.stop()  # an earlier client that was killed left it running
            amp.configure(fs=fs, channels=channels)
        amp.start()
        next_sample = 0 if mode == "start" else None
        announced = False
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            chunk, _markers = amp.get_data()
            if not len(chunk):
                continue
            if next_sample is None:  # joined: the first value says which sample it is
                next_sample = int(chunk[0, 0]) // channels
            expected = ramp(next_sample, len(chunk), channels)
            if chunk.shape != expected.shape or not np.array_equal(chunk, expected):
                bad = np.argwhere(chunk != expected) if chunk.shape == expected.shape else [[0, 0]]
                row = int(bad[0][0])
                result["errors"].append(f"sample {next_sample + row}: got {chunk[row, :3].tolist()}, expected "
                                        f"{expected[row, :3].tolist()} (shape {chunk.shape})")
                next_sample = (int(chunk[-1, 0]) % RAMP_MODULUS) // channels + 1
            else:
                next_sample += len(chunk)
            result["samples"] += len(chunk)
            if not announced:
                print("reading", flush=True)
                announced = True
        if mode == "start":
            amp.stop()
        result["lost"] = amp.lost_samples
        amp.close()
    result["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Benchmark of the recorder (not a test): its CPU, and the highest rate it records without loss.

Usage::

    python bench/recorder_bench.py            # about 2 minutes
    python bench/recorder_bench.py --short    # about 40 s

An amp service (rampamp, 64 channels) and the recorder run as their own
processes on free loopback ports; the recording goes to a temporary
directory on the same disk as the working directory.

- **CPU** at 64 x 1 kHz in 1 ms blocks: user + system CPU time of the
  recorder process while it records, as % of one core.
- **Lossless rate**: a ladder of sampling rates (10 ms blocks). A run passes
  when the recorder kept up (its lag behind the amp stayed under 0.5 s of
  data: it did not live off the amp's history) and the finished file holds
  every sample exactly (no gap, bit-exact against the ramp).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import psutil
from amp_bench import end_process, free_port, machine
from markers_bench import spawn

import mushu_client
from mushu_amp.drivers.rampamp import ramp
from mushu_core.control import ControlClient
from mushu_core.recordings import load

CHANNELS = 64
LADDER_FS = (50_000, 100_000, 200_000, 400_000, 800_000, 1_600_000)


def run_once(fs: float, seconds: float, block_ms: float, workdir: str) -> dict:
    amp_data, amp_ctl, rec_ctl = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    nowhere = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]  # no markers service
    history_mb = max(64, int(fs * CHANNELS * 4 * 10 / 2**20))  # 10 s of data
    amp = spawn(["mushu_amp", "--data", amp_data, "--control", amp_ctl, "--block-ms", str(block_ms),
                 "--history-mb", str(history_mb)], amp_ctl)
    rec = spawn(["mushu_recorder", "--control", rec_ctl, "--data-dir", workdir, "--amp-data", amp_data,
                 "--amp-control", amp_ctl, "--markers-data", nowhere[0], "--markers-control", nowhere[1]], rec_ctl)
    try:
        client = mushu_client.get_amp("rampamp", data=amp_data, control=amp_ctl, recorder=rec_ctl,
                                      markers=nowhere[0], markers_control=nowhere[1], hwm=10)
        client.configure(fs=fs, channels=CHANNELS)
        proc = psutil.Process(rec.pid)
        status = ControlClient(rec_ctl, 2.0, "recorder")
        name = f"bench-{int(fs)}-{time.monotonic_ns()}"
        client.start(name)
        cpu0, t0 = proc.cpu_times(), time.monotonic()
        max_lag = 0
        while time.monotonic() - t0 < seconds:
            time.sleep(0.1)
            rec_next = status.call("status")["recording"]["next_sample"]
            amp_next = client.status()["next_sample"]
            max_lag = max(max_lag, amp_next - rec_next)
        cpu1, t1 = proc.cpu_times(), time.monotonic()
        client.stop()
        result = client.recording_result
        status.close()
        client.close()
        r = load(result["base"])
        exact = (not r.gaps and len(r.data) == result["n_samples"]
                 and np.array_equal(r.data, ramp(0, len(r.data), CHANNELS)))
        for ext in (".eeg", ".marker", ".meta", ".vhdr", ".vmrk"):
            os.remove(result["base"] + ext)
        cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0)
        return {"fs": fs, "rate": fs * CHANNELS, "cpu_pct": 100 * cpu, "max_lag_s": max_lag / fs,
                "exact": bool(exact), "samples": int(len(r.data)),
                "passed": bool(exact and max_lag / fs < 0.5)}
    finally:
        for p in (amp, rec):
            end_process(p)


def run(short: bool = False) -> dict:
    seconds = 3.0 if short else 8.0
    with tempfile.TemporaryDirectory(dir=".") as workdir:
        cpu_runs = [run_once(1000, seconds, 1.0, workdir) for _ in range(1 if short else 3)]
        ladder, best = [], None
        for fs in LADDER_FS:
            r = run_once(fs, seconds, 10.0, workdir)
            ladder.append(r)
            if not r["passed"]:
                break
            best = r
    return {"cpu_1khz_pct": float(np.median([r["cpu_pct"] for r in cpu_runs])),
            "cpu_runs": cpu_runs, "ladder": ladder,
            "best_rate": best["rate"] if best else 0}


def table(res: dict) -> str:
    lines = [f"recorder CPU at 64 ch x 1 kHz (1 ms blocks): {res['cpu_1khz_pct']:.1f} % of one core "
             f"(median of {len(res['cpu_runs'])})",
             f"{'fs (Hz)':>10}{'samples/s':>14}{'CPU %':>8}{'max lag s':>11}{'exact':>7}{'passed':>8}"]
    for r in res["ladder"]:
        lines.append(f"{r['fs']:>10.0f}{r['rate']:>14.3g}{r['cpu_pct']:>8.0f}{r['max_lag_s']:>11.3f}"
                     f"{str(r['exact']):>7}{str(r['passed']):>8}")
    lines.append(f"highest lossless rate: {res['best_rate'] / 1e6:.1f} million samples/s (64 channels)")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--short", action="store_true")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args()
    res = run(a.short)
    m = machine()
    print(f"mushu recorder benchmark, {m['date']}: {m['cpu']}, {m['cores']} cores, Python {m['python']}")
    print(table(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": m, **res}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())

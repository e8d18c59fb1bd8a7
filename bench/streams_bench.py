"""Benchmark of several streams recorded at once (not a test): amp streams under ``mushu up``, each with a
recorder of its own, read by one client through :class:`mushu_client.Streams` and recorded together.

Usage::

    python bench/streams_bench.py                  # 4 streams of 2 kHz x 64 for 30 s
    python bench/streams_bench.py --seconds 10 --streams 2 --json streams.json

Everything runs in a temporary directory of its own (run directory, data directory, ``mushu.toml`` with a
table ``[amp.sN]`` per further stream, free loopback ports). Per stream:

- **lossless**: the client got every sample of the ramp, in order, and the stream's recording holds
  exactly those samples, bit for bit, with no gap;
- **data age**: at each return of ``Streams.get_data()``, how old the stream's newest sample is (its
  acquisition time, on the client's clock, to the return): median, p99 and max;
- **CPU** of the stream's amp and recorder services: user + system time over the recording, as % of
  one core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from amp_bench import machine

import mushu_client
from mushu_amp.drivers.rampamp import ramp
from mushu_cli import supervise
from mushu_core.recordings import load, stream_recordings

# tests/support.py: helpers the tests and the benches share (not installed with mushu)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from support import free_port, mushu_up  # noqa: E402


def _config(n_streams: int) -> str:
    """mushu.toml with a table ``[amp.sN]`` (free loopback ports) for each further stream."""
    tables = []
    for i in range(1, n_streams):
        ends = {k: f"tcp://127.0.0.1:{free_port()}" for k in ("data", "control", "recorder")}
        tables.append(f"[amp.s{i}]\n" + "".join(f'{k} = "{v}"\n' for k, v in ends.items()))
    return "\n".join(tables)


def run(seconds: float, n_streams: int, fs: float, channels: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="mushu-streams-"))
    try:
        with mushu_up(root, _config(n_streams)) as (env, _up):  # the client's settings too
            amps = [mushu_client.get_amp("rampamp")]
            amps += [mushu_client.get_amp("rampamp", stream=f"s{i}") for i in range(1, n_streams)]
            for amp in amps:
                amp.configure(fs=fs, channels=channels)
            pids = {name: info["pid"] for name, info in supervise.processes(supervise.run_dir()).items()}
            streams = mushu_client.Streams(amps)
            names = list(streams.amps)
            services = {s: {"amp": psutil.Process(pids["amp" if i == 0 else f"amp-{s}"]),
                            "recorder": psutil.Process(pids["recorder" if i == 0 else f"recorder-{s}"])}
                        for i, s in enumerate(names)}
            got = {s: [] for s in names}
            ages = {s: [] for s in names}
            streams.start("bench")
            cpu0 = {s: {k: p.cpu_times() for k, p in ps.items()} for s, ps in services.items()}
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                chunk = streams.get_data()
                returned = time.monotonic_ns()
                for s, d in chunk.items():
                    if len(d.data):
                        ages[s].append(returned - int(d.times_ns[-1]))
                        got[s].append(d.data)
            elapsed = time.monotonic() - t0
            cpu1 = {s: {k: p.cpu_times() for k, p in ps.items()} for s, ps in services.items()}
            stop0 = time.monotonic()
            streams.stop()
            stop_s = time.monotonic() - stop0
            while True:  # what was acquired up to each stop
                chunk = streams.get_data()
                if not any(len(d.data) for d in chunk.values()):
                    break
                for s, d in chunk.items():
                    got[s].append(d.data)
            first = {s: amp.first_sample for s, amp in streams.amps.items()}
            streams.close()
            recordings = stream_recordings(os.path.join(env["MUSHU_DATA_DIR"], "bench"))
            rows = {}
            for s in names:
                data = np.concatenate(got[s])
                expected = ramp(first[s], len(data), channels)
                rec = load(recordings[s])
                a = np.array(ages[s]) / 1e6

                def pct(c0, c1):
                    return round(100 * (c1.user + c1.system - c0.user - c0.system) / elapsed, 1)

                rows[s] = {"samples": len(data), "client_exact": bool(np.array_equal(data, expected)),
                           "recording_exact": bool(np.array_equal(rec.data, data)),
                           "gaps": len(rec.meta["mushu"]["gaps"]) + len(streams.amps[s].gaps),
                           "age_ms_p50": round(float(np.median(a)), 2), "age_ms_p99": round(float(np.percentile(a, 99)), 2),
                           "age_ms_max": round(float(a.max()), 2),
                           "amp_cpu_pct": pct(cpu0[s]["amp"], cpu1[s]["amp"]),
                           "recorder_cpu_pct": pct(cpu0[s]["recorder"], cpu1[s]["recorder"])}
                rows[s]["lossless"] = rows[s]["client_exact"] and rows[s]["recording_exact"] and not rows[s]["gaps"]
            return {"machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
                    "streams": n_streams, "fs": fs, "channels": channels, "seconds": round(elapsed, 1),
                    "stop_s": round(stop_s, 2), "per_stream": rows,
                    "recorders_cpu_pct": round(sum(r["recorder_cpu_pct"] for r in rows.values()), 1),
                    "all_lossless": all(r["lossless"] for r in rows.values())}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def table(res: dict) -> str:
    lines = [f"{res['streams']} streams of {res['fs']:g} Hz x {res['channels']} recorded for {res['seconds']} s "
             f"on {res['machine']['cpu']} ({res['machine']['cores']} cores), {res['when']}; stop() took "
             f"{res['stop_s']} s",
             "| stream | samples | lossless | data age p50 / p99 / max (ms) | amp CPU | recorder CPU |",
             "| --- | ---: | --- | ---: | ---: | ---: |"]
    for s, r in res["per_stream"].items():
        lines.append(f"| {s} | {r['samples']} | {'yes' if r['lossless'] else 'NO'} | {r['age_ms_p50']} / "
                     f"{r['age_ms_p99']} / {r['age_ms_max']} | {r['amp_cpu_pct']} % | {r['recorder_cpu_pct']} % |")
    lines.append(f"| all | | {'yes' if res['all_lossless'] else 'NO'} | | | {res['recorders_cpu_pct']} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0, help="how long to record (default 30)")
    p.add_argument("--streams", type=int, default=4, help="how many streams (default 4)")
    p.add_argument("--fs", type=float, default=2000.0, help="each stream's rate, Hz (default 2000)")
    p.add_argument("--channels", type=int, default=64, help="each stream's channels (default 64)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    res = run(a.seconds, a.streams, a.fs, a.channels)
    print(table(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0 if res["all_lossless"] else 1


if __name__ == "__main__":
    sys.exit(main())

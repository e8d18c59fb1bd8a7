"""Markers on their true samples: placement against ground truth for devices that deliver late and drift (not a test).

Usage::

    python bench/timing_bench.py                 # 10 minutes of stream
    python bench/timing_bench.py --minutes 3
    python bench/timing_bench.py --short         # 1 minute
    python bench/timing_bench.py --json out.json

Nine emulated devices (``tests/drifting_device.py``: 1 kHz x 8, chunks of 8
samples, the read blocking until a chunk is there) run at once, each in an
amp service of its own, for the same minutes: chunk latency 0 (ideal), 0.5-4 ms
(the driver declares the 0.5 ms it always takes) and 1-10 ms (declares 1 ms),
each with a clock drift of 0, +100 and -100 ppm. One markers service; this
process sends markers over UDP every 30-120 ms, noting ``time.monotonic_ns()``
just before each send (the event's true time; a send that takes over 200 µs
leaves its marker out, its true time unknown), and a raw SUB notes the
markers service's stamps. Every device's client (``Amp.get_data()``, in a
worker process of its own) returns every marker on a sample.

For each marker and device: its true sample (the first acquired at or after
the send, from the device's true clock), mushu's (the one ``get_data`` put it
on) and the baseline's: the same rule on read-time stamps (each read's return
as its last sample's time, the others a nominal period apart before it, from
the driver's log of its reads; the service's stamping without a clock
model). The table gives ``placed - true`` in samples (p50, p99 of its size,
largest), the share on the true sample and on the next, for the whole run and
for its first and last minute (no drift may accumulate), and the blocks'
stamp error (``t_ns`` against the first sample's true time) in µs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq
from amp_bench import end_process, free_port, machine

import mushu_client
from mushu_core.control import wait_for
from mushu_core.wire import Block, Marker, data_topic, decode_message, marker_topic

TESTS = Path(__file__).resolve().parent.parent / "tests"
FS, CH, CHUNK = 1000.0, 8, 8
LATENCIES = {"ideal": ([0.0, 0.0], 0.0), "0.5-4 ms": ([0.5, 4.0], 0.5), "1-10 ms": ([1.0, 10.0], 1.0)}
DRIFTS = (0.0, 100.0, -100.0)
#: A send that took longer than this (the sender was preempted inside it) has no known true time.
SEND_NS = 200_000


def devices():
    return [(f"{lat}, {ppm:+g} ppm", rng, declared, ppm)
            for lat, (rng, declared) in LATENCIES.items() for ppm in DRIFTS]


# -- a device's client (--worker) -------------------------------------------------------------------


def worker(spec: dict) -> int:
    """Follow one device until the stop file appears; write what ``get_data`` returned and the blocks' stamps."""
    amp = mushu_client.get_amp("drifting", data=spec["amp_data"], control=spec["amp_control"],
                               markers=spec["markers_data"], markers_control=spec["markers_control"])
    raw = zmq.Context.instance().socket(zmq.SUB)
    raw.setsockopt(zmq.SUBSCRIBE, data_topic("eeg"))
    raw.setsockopt(zmq.RCVHWM, 0)
    raw.connect(spec["amp_data"])
    amp.configure(fs=FS, channels=CH, chunk=CHUNK, ppm=spec["ppm"], latency_ms=spec["latency_ms"],
                  declared_latency_ms=spec["declared_ms"], truth=spec["truth"], reads_log=spec["reads"],
                  seed=spec["seed"])
    amp.start()
    Path(spec["ready"]).touch()
    placed, stamps, n, first = {}, [], 0, None
    stop = Path(spec["stop"])

    def take():
        nonlocal n, first
        data, markers = amp.get_data()
        if len(data) and first is None:
            first = int(data[0, 0]) // CH
        for ms, label in markers:
            placed[label] = first + n + round(ms * FS / 1000)
        n += len(data)
        while raw.poll(0):
            msg = decode_message(raw.recv_multipart())
            if isinstance(msg, Block):
                stamps.append((msg.header.first_sample, msg.header.t_ns))
        return len(data)

    while not stop.exists():
        take()
    time.sleep(0.5)  # the last markers' samples
    amp.stop()
    while take():
        pass
    status = amp._ctl.call("status")
    amp.close()
    Path(spec["out"]).write_text(json.dumps({"placed": placed, "stamps": stamps, "clock": status["clock"]}))
    return 0


# -- the run ----------------------------------------------------------------------------------------------


def spawn(args, control, env=None):
    proc = subprocess.Popen([sys.executable, "-m", *args, "--log-level", "WARNING"], env=env)
    wait_for(control, args[0], 15.0, proc)
    return proc


def run(minutes: float, seed: int = 1) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="mushu-timing-"))
    env = {**os.environ, "MUSHU_DRIVERS": "drifting=drifting_device:DriftingAmp",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    procs, workers = [], []
    mk = {"port": free_port(), **{k: f"tcp://127.0.0.1:{free_port()}" for k in ("data", "control", "ingress")}}
    try:
        procs.append(spawn(["mushu_markers", "--port", str(mk["port"]), "--data", mk["data"], "--control",
                            mk["control"], "--ingress", mk["ingress"]], mk["control"]))
        observer = zmq.Context.instance().socket(zmq.SUB)
        observer.setsockopt(zmq.SUBSCRIBE, marker_topic("markers"))
        observer.setsockopt(zmq.RCVHWM, 0)
        observer.connect(mk["data"])
        specs = []
        for i, (name, latency, declared, ppm) in enumerate(devices()):
            data, control = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
            procs.append(spawn(["mushu_amp", "--data", data, "--control", control], control, env))
            spec = {"name": name, "amp_data": data, "amp_control": control, "markers_data": mk["data"],
                    "markers_control": mk["control"], "ppm": ppm, "latency_ms": latency, "declared_ms": declared,
                    "seed": seed + i, **{k: str(tmp / f"{i}.{k}") for k in ("truth", "ready", "stop", "out")},
                    "reads": str(tmp / f"{i}.reads.npy")}
            specs.append(spec)
            workers.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], env=env))
        deadline = time.monotonic() + 60
        while not all(Path(s["ready"]).exists() for s in specs):
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise RuntimeError("a device's client did not start")
            time.sleep(0.05)
        rng = random.Random(seed)
        sent, stamped, unsure = {}, {}, set()
        t_start = time.monotonic_ns()
        with mushu_client.MarkerSender("127.0.0.1", mk["port"], protocol="udp") as sender:
            sender.send("warm-up")  # the first send makes the socket
            next_send = time.monotonic() + 1.0
            t_end = time.monotonic() + minutes * 60
            while time.monotonic() < t_end:
                while observer.poll(0):
                    msg = decode_message(observer.recv_multipart())
                    if isinstance(msg, Marker):
                        stamped[msg.label] = msg.t_ns
                wait = next_send - time.monotonic()
                if wait > 0:
                    time.sleep(min(wait, 0.005))
                    continue
                label = f"m{len(sent) + len(unsure)}"
                before = time.monotonic_ns()
                sender.send(label)
                if time.monotonic_ns() - before < SEND_NS:
                    sent[label] = before
                else:  # this process was held up inside the send: when the packet left is not known
                    unsure.add(label)
                next_send += rng.uniform(0.03, 0.12)
        for s in specs:
            Path(s["stop"]).touch()
        for w in workers:
            if w.wait(60) != 0:
                raise RuntimeError(f"a device's client exited with {w.returncode}")
        while observer.poll(200):
            msg = decode_message(observer.recv_multipart())
            if isinstance(msg, Marker):
                stamped[msg.label] = msg.t_ns
        observer.close(0)
        return {"minutes": minutes, "machine": machine(), "markers": len(sent), "unsure": len(unsure),
                "devices": [analyse(s, sent, stamped, t_start) for s in specs]}
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        for p in procs:
            end_process(p)


def analyse(spec: dict, sent: dict, stamped: dict, t_start: int) -> dict:
    out = json.loads(Path(spec["out"]).read_text())
    truth = json.loads(Path(spec["truth"]).read_text())
    t0, period = truth["t0_ns"], truth["period_ns"]
    reads = np.load(spec["reads"])
    # read-time stamps: each read's return is its last sample's time, the others a nominal period apart
    n = int(reads[-1, 0])
    ends = reads[:, 0]
    read_of = np.searchsorted(ends, np.arange(n), side="right")
    baseline = reads[read_of, 1] - (ends[read_of] - 1 - np.arange(n)) * (1e9 / FS)
    reach = np.maximum.accumulate(baseline)
    labels = [label for label in sent if label in out["placed"] and label in stamped]
    true = np.array([math.ceil((sent[label] - t0) / period) for label in labels])
    mushu = np.array([out["placed"][label] for label in labels]) - true
    base = np.searchsorted(reach, [stamped[label] for label in labels], side="left") - true
    minute = (np.array([sent[label] for label in labels]) - t_start) / 60e9
    first, last = minute < 1, minute >= minute.max() - 1
    stamps = np.array(out["stamps"], np.int64).reshape(-1, 2)
    warm = stamps[:, 0] >= 2 * FS  # after the first two seconds' fit
    stamp_us = np.abs(stamps[warm, 1] - (t0 + stamps[warm, 0] * period)) / 1e3
    return {"device": spec["name"], "markers": len(labels), "missing": len(sent) - len(labels),
            "mushu": summary(mushu), "mushu_first_minute": summary(mushu[first]),
            "mushu_last_minute": summary(mushu[last]), "baseline": summary(base),
            "stamp_us": {"p50": float(np.percentile(stamp_us, 50)), "p99": float(np.percentile(stamp_us, 99)),
                         "max": float(stamp_us.max())},
            "clock": out["clock"]}


def summary(off: np.ndarray) -> dict:
    if not len(off):
        return {}
    size = np.abs(off)
    return {"p50": float(np.percentile(off, 50)), "p99_abs": float(np.percentile(size, 99)), "max_abs": int(size.max()),
            "true": float(np.mean(off == 0)), "next": float(np.mean(off == 1)), "early": float(np.mean(off < 0))}


def table(res: dict) -> str:
    m = res["machine"]
    lines = [f"timing_bench, {m['date']}: {res['minutes']:g} min, {res['markers']} markers over UDP (and "
             f"{res['unsure']} whose send took over {SEND_NS / 1e3:.0f} µs, left out); {m['cpu']}, "
             f"{m['cores']} cores, Linux {m['kernel']}, Python {m['python']}; load average at end "
             f"{os.getloadavg()[0]:.2f}", "",
             "| device | mushu: on true / next / early | p50, p99, max (samples) | first min: true+next | "
             "last min: true+next | read-time stamps: true / next / early | p50, p99, max | stamp error p50 / p99 / "
             "max (µs) | drift fitted (ppm) |",
             "| --- | --- | --- | ---: | ---: | --- | --- | --- | ---: |"]
    for d in res["devices"]:
        mu, b, f, la, s = d["mushu"], d["baseline"], d["mushu_first_minute"], d["mushu_last_minute"], d["stamp_us"]
        lines.append(
            f"| {d['device']} | {pct(mu['true'])} / {pct(mu['next'])} / {pct(mu['early'])} | "
            f"{mu['p50']:+.0f}, {mu['p99_abs']:.0f}, {mu['max_abs']} | {pct(f['true'] + f['next'])} | "
            f"{pct(la['true'] + la['next'])} | {pct(b['true'])} / {pct(b['next'])} / {pct(b['early'])} | "
            f"{b['p50']:+.0f}, {b['p99_abs']:.0f}, {b['max_abs']} | {s['p50']:.0f} / {s['p99']:.0f} / {s['max']:.0f} | "
            f"{d['clock']['drift_ppm']:+.1f} |")
    return "\n".join(lines)


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--short", action="store_true", help="one minute")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(json.loads(a.worker))
    res = run(1.0 if a.short else a.minutes)
    print(table(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

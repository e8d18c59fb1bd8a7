"""Benchmark of markers: send to visibility in get_data, and timestamp error (not a test).

Usage::

    python bench/markers_bench.py            # 1000 markers per transport
    python bench/markers_bench.py --short    # 200

An amp service (rampamp, 64 channels, 1 kHz, 1 ms blocks) and a markers
service run as their own processes on free loopback ports. One consumer
loop calls ``Amp.get_data()`` without pause and, every few milliseconds,
sends a marker (TCP through a kept ``MarkerSender``, or UDP as pyff does)
stamped with ``time.monotonic_ns()`` just before the send.

- **visibility**: from that send to the return of the ``get_data`` call that
  delivers the marker (this includes the client's marker grace, the time
  samples are held for markers still on their way).
- **timestamp error**: the markers service's stamp minus the send time,
  read from a raw SUB on the marker topic (the true event time is the send;
  the stamp can only be later).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time

import numpy as np
import zmq
from amp_bench import end_process, free_port, machine

import mushu_client
from mushu_core.control import wait_for
from mushu_core.wire import Marker, decode_message, marker_topic


def spawn(args, control):
    proc = subprocess.Popen([sys.executable, "-m", *args, "--log-level", "WARNING"])
    try:
        wait_for(control, args[0], 15.0, proc)
    except Exception:
        proc.kill()
        raise
    return proc


def percentiles(values_us):
    v = np.asarray(values_us)
    return {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)), "max": float(v.max())}


def run(n_markers: int = 1000) -> dict:
    amp_data, amp_ctl = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    mk_port = free_port()
    mk_data, mk_ctl, mk_in = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    procs = [spawn(["mushu_amp", "--data", amp_data, "--control", amp_ctl], amp_ctl),
             spawn(["mushu_markers", "--port", str(mk_port), "--data", mk_data, "--control", mk_ctl,
                    "--ingress", mk_in], mk_ctl)]
    raw = zmq.Context.instance().socket(zmq.SUB)
    raw.connect(mk_data)
    raw.subscribe(marker_topic("markers"))
    results = {}
    try:
        amp = mushu_client.get_amp("rampamp", data=amp_data, control=amp_ctl, markers=mk_data,
                                   markers_control=mk_ctl)
        amp.configure(fs=1000, channels=64)
        amp.start()
        for transport in ("tcp", "udp"):
            sender = mushu_client.MarkerSender("127.0.0.1", mk_port, protocol=transport)
            sender.send("warm-up")
            sent, seen = {}, {}
            next_send = time.monotonic() + 0.05
            while len(seen) < n_markers:
                _data, markers = amp.get_data()
                now = time.monotonic_ns()
                for _ms, label in markers:
                    if label in sent:
                        seen[label] = now
                if len(sent) < n_markers and time.monotonic() >= next_send:
                    label = f"{transport}-{len(sent)}"
                    sent[label] = time.monotonic_ns()
                    sender.send(label)
                    next_send = time.monotonic() + random.uniform(0.002, 0.02)
            stamps = {}
            while raw.poll(0):
                m = decode_message(raw.recv_multipart())
                if isinstance(m, Marker) and m.label in sent:
                    stamps[m.label] = m.t_ns
            sender.close()
            results[transport] = {
                "markers": n_markers,
                "visibility_us": percentiles([(seen[k] - sent[k]) / 1e3 for k in sent]),
                "timestamp_error_us": percentiles([(stamps[k] - sent[k]) / 1e3 for k in sent if k in stamps]),
                "stamps_seen": len(stamps),
            }
        results["marker_counts"] = amp.marker_counts
        results["marker_grace_ms"] = amp.marker_grace_ns / 1e6
        amp.stop()
        amp.close()
    finally:
        raw.close(linger=0)
        for p in procs:
            end_process(p, 5)
    return results


def table(results: dict) -> str:
    lines = [f"{'transport':<10}{'figure':<22}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}"]
    for transport in ("tcp", "udp"):
        r = results[transport]
        for name, key in (("send -> get_data", "visibility_us"), ("timestamp error", "timestamp_error_us")):
            v = r[key]
            lines.append(f"{transport:<10}{name:<22}{v['p50'] / 1e3:>10.3f}{v['p99'] / 1e3:>10.3f}"
                         f"{v['max'] / 1e3:>10.3f}")
    lines.append(f"marker grace {results['marker_grace_ms']:g} ms; counts {results['marker_counts']}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--short", action="store_true")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args()
    results = run(200 if a.short else 1000)
    m = machine()
    print(f"mushu markers benchmark, {m['date']}: {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
          f"pyzmq {m['pyzmq']} (libzmq {m['libzmq']})")
    print(table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": m, **results}, f, indent=1)


if __name__ == "__main__":
    main()

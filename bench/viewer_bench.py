"""Benchmark of the viewer (not a test): a stream shown in headless Chromium, its frame rate, the data's
age on screen and the viewer service's CPU.

Usage::

    python bench/viewer_bench.py                     # 64 channels x 1 kHz, 20 s, time base 10 s, sweep
    python bench/viewer_bench.py --channels 32 --fs 5000 --seconds 10 --mode scroll --json viewer.json

``mushu up`` with the viewer (``[viewer] up = 1``) in a temporary directory of its own, an amp acquiring
``randomamp``, and Debian's Chromium (``chromium``, ``chromedriver``) over selenium opening the viewer's
page at 1400 x 900. After 3 s of warm-up, for ``--seconds``:

- **frames/s**: animation frames in which the page drew new columns, per second (the page's own count,
  ``mushuViewer.stats.frames``);
- **data age**: at each such frame, how old the newest sample drawn is (the page's clock minus the
  sample's acquisition time, both this host's wall clock): median, p99, max;
- **CPU**: user + system time of the viewer service (all its threads) and of Chromium (all its
  processes), as % of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from amp_bench import machine

import mushu_client
from mushu_cli import supervise

# tests/support.py: helpers the tests and the benches share (not installed with mushu)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from support import free_port, mushu_up  # noqa: E402


def _browser(profile: str):
    from selenium import webdriver
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,900", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))


def _cpu(processes) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run(seconds: float, fs: float, channels: int, timebase: int, mode: str) -> dict:
    root = Path(tempfile.mkdtemp(prefix="mushu-viewer-"))
    try:
        with mushu_up(root, f"[viewer]\nup = 1\nport = {free_port()}\n") as (_env, up):
            url = re.search(r"the viewer: look at (http://\S+),", up).group(1)
            amp = mushu_client.get_amp("randomamp")
            amp.configure(fs=fs, channels=channels)
            amp.start()
            driver = _browser(str(root / "chromium"))
            try:
                return _measure(driver, url, seconds, fs, channels, timebase, mode)
            finally:
                driver.quit()
                amp.stop()
                amp.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(driver, url: str, seconds: float, fs: float, channels: int, timebase: int, mode: str) -> dict:
    viewer = psutil.Process(supervise.processes(supervise.run_dir())["viewer"]["pid"])
    chromium = list(psutil.Process(driver.service.process.pid).children(recursive=True))
    driver.get(url)
    driver.execute_script(f"document.getElementById('timebase').value = '{timebase}';"
                          f"document.getElementById('mode').value = '{mode}';"
                          "document.getElementById('timebase').onchange();")
    time.sleep(3.0)  # warm-up: the page has its scale, the viewer its frames
    driver.execute_script("const s = window.mushuViewer.stats; s.frames = 0; s.ages = [];")
    v0, c0, t0 = _cpu([viewer]), _cpu(chromium), time.monotonic()
    time.sleep(seconds)
    frames, ages, status = driver.execute_script("const s = window.mushuViewer.stats; return [s.frames, s.ages, "
                                                 "window.mushuViewer.status];")
    elapsed = time.monotonic() - t0
    v1, c1 = _cpu([viewer]), _cpu(chromium)
    ages = np.array(ages, dtype=float)
    return {"machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
            "fs": fs, "channels": channels, "timebase_s": timebase, "mode": mode, "seconds": round(elapsed, 1),
            "frames_per_s": round(frames / elapsed, 1),
            "age_ms_p50": round(float(np.median(ages)), 1), "age_ms_p99": round(float(np.percentile(ages, 99)), 1),
            "age_ms_max": round(float(ages.max()), 1),
            "viewer_cpu_pct": round(100 * (v1 - v0) / elapsed, 1),
            "chromium_cpu_pct": round(100 * (c1 - c0) / elapsed, 1),
            "lost_samples": status.get("lost_samples"), "measured_hz": status.get("measured_hz")}


def table(res: dict) -> str:
    return "\n".join([
        f"{res['channels']} channels x {res['fs']:g} Hz, time base {res['timebase_s']} s, {res['mode']}, "
        f"{res['seconds']} s on {res['machine']['cpu']} ({res['machine']['cores']} cores), {res['when']}",
        "| frames/s | data age p50 / p99 / max (ms) | viewer CPU | Chromium CPU | samples lost |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {res['frames_per_s']} | {res['age_ms_p50']} / {res['age_ms_p99']} / {res['age_ms_max']} | "
        f"{res['viewer_cpu_pct']} % | {res['chromium_cpu_pct']} % | {res['lost_samples']} |"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="how long to measure (default 20)")
    p.add_argument("--fs", type=float, default=1000.0, help="the stream's rate, Hz (default 1000)")
    p.add_argument("--channels", type=int, default=64, help="the stream's channels (default 64)")
    p.add_argument("--timebase", type=int, default=10, choices=(1, 2, 5, 10, 20, 30), help="seconds shown")
    p.add_argument("--mode", default="sweep", choices=("sweep", "scroll"))
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    res = run(a.seconds, a.fs, a.channels, a.timebase, a.mode)
    print(table(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The viewer's canvas renderer beside uPlot, drawing the same stream in headless Chromium (not a test).

Usage::

    python bench/renderer_bench.py                  # 64 channels x 1 kHz, 10 s shown, 15 s measured each
    python bench/renderer_bench.py --uplot DIR      # an unpacked uplot package (default: npm pack uplot@1.6.32)

Both pages run in the same Chromium (Debian's ``chromium``, ``chromedriver``, over selenium, 1400 x 900)
one after the other:

- **mushu**: the viewer's own page (``services/viewer/static``) under ``mushu up`` with ``[viewer] up = 1``,
  fed by an amp acquiring ``randomamp`` at the same rate and channels, in sweep mode;
- **uPlot**: a page of uPlot (the canvas time-series library the viewer's issue names), one series per
  channel stacked by an offset, the same 10 s window, 20 ms of random samples appended every 20 ms
  (``setData``), as the viewer's frames arrive.

Per page: frames/s (animation frames in which it drew new data), the main thread's time per update
(uPlot: ``setData`` and its draw; mushu: the columns drawn in a frame), and Chromium's CPU (all its
processes, user + system) as % of one core.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import psutil
from amp_bench import machine
from viewer_bench import _browser, _cpu

import mushu_client

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from support import free_port, mushu_up  # noqa: E402

UPLOT = "uplot@1.6.32"

UPLOT_PAGE = """<!doctype html><html><head><meta charset="utf-8"><link rel="stylesheet" href="uPlot.min.css">
<style>body {{ margin: 0 }} #plot {{ width: 970px }}</style></head><body><div id="plot"></div>
<script src="uPlot.iife.min.js"></script><script>
const FS = {fs}, CH = {channels}, SPAN = {span}, N = FS * SPAN, STEP = FS / 50;
const xs = new Float64Array(N), ys = [];
for (let c = 0; c < CH; c++) ys.push(new Float64Array(N));
let n = 0, frames = 0, busy = [], pending = false, t0 = 0;
const series = [{{}}];
for (let c = 0; c < CH; c++) series.push({{ stroke: "#1a3d8f", width: 1, points: {{ show: false }} }});
const plot = new uPlot({{ width: 970, height: 820, series, legend: {{ show: false }}, cursor: {{ show: false }},
  scales: {{ x: {{ time: false }}, y: {{ range: [-1, CH] }} }}, axes: [{{}}, {{ show: false }}] }},
  [Array.from(xs), ...ys.map((y) => Array.from(y))], document.getElementById("plot"));
function append() {{  // 20 ms of samples, the window's oldest dropped
  const k = STEP;
  xs.copyWithin(0, k); for (const y of ys) y.copyWithin(0, k);
  for (let j = 0; j < k; j++) {{
    xs[N - k + j] = (n + j) / FS;
    for (let c = 0; c < CH; c++) ys[c][N - k + j] = c + 0.3 * (Math.random() - 0.5);
  }}
  n += k;
  const t = performance.now();
  plot.setData([xs, ...ys]);  // uPlot draws in a microtask it queues here: ours runs after it
  queueMicrotask(() => {{ busy.push(performance.now() - t); pending = true; }});
}}
setInterval(append, 20);
function frame() {{ requestAnimationFrame(frame); if (pending) {{ frames++; pending = false; }} }}
requestAnimationFrame(frame);
window.bench = {{ reset() {{ frames = 0; busy = []; }}, get() {{ return [frames, busy]; }} }};
</script></body></html>
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def uplot_dir(given: str | None) -> Path:
    """An unpacked uplot package: ``given``, or ``npm pack`` of :data:`UPLOT` into a cache folder."""
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mushu-bench" / "uplot"
    if not (cache / "package" / "dist" / "uPlot.iife.min.js").exists():
        cache.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["npm", "pack", UPLOT], cwd=cache, capture_output=True, text=True, check=True).stdout
        with tarfile.open(cache / out.strip().splitlines()[-1]) as tar:
            tar.extractall(cache, filter="data")
    return cache / "package"


def _measure(driver, url: str, seconds: float, reset: str, get: str) -> dict:
    chromium = list(psutil.Process(driver.service.process.pid).children(recursive=True))
    driver.get(url)
    time.sleep(3.0)
    driver.execute_script(reset)
    c0, t0 = _cpu(chromium), time.monotonic()
    time.sleep(seconds)
    frames, busy = driver.execute_script(get)
    elapsed = time.monotonic() - t0
    busy = sorted(busy) or [float("nan")]
    return {"frames_per_s": round(frames / elapsed, 1), "update_ms_p50": round(busy[len(busy) // 2], 2),
            "update_ms_p99": round(busy[min(len(busy) - 1, int(0.99 * len(busy)))], 2),
            "chromium_cpu_pct": round(100 * (_cpu(chromium) - c0) / elapsed, 1)}


def run(seconds: float, fs: float, channels: int, uplot: Path) -> dict:
    root = Path(tempfile.mkdtemp(prefix="mushu-renderers-"))
    res = {"machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()), "fs": fs,
           "channels": channels, "span_s": 10, "seconds": seconds}
    try:
        site = root / "uplot"
        site.mkdir()
        for name in ("uPlot.iife.min.js", "uPlot.min.css"):
            shutil.copy(uplot / "dist" / name, site / name)
        (site / "index.html").write_text(UPLOT_PAGE.format(fs=int(fs), channels=channels, span=10))
        handler = functools.partial(_Quiet, directory=str(site))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        driver = _browser(str(root / "chromium"))
        try:
            res["uplot"] = _measure(driver, f"http://127.0.0.1:{server.server_port}/index.html", seconds,
                                    "window.bench.reset()", "return window.bench.get()")
            with mushu_up(root / "mushu", f"[viewer]\nup = 1\nport = {free_port()}\n") as (_env, up):
                amp = mushu_client.get_amp("randomamp")
                amp.configure(fs=fs, channels=channels)
                amp.start()
                try:
                    url = re.search(r"the viewer: look at (http://\S+),", up).group(1)
                    res["mushu"] = _measure(driver, url, seconds,
                                            "const s = window.mushuViewer.stats; s.frames = 0; s.drawMs = [];",
                                            "const s = window.mushuViewer.stats; return [s.frames, s.drawMs];")
                finally:
                    amp.stop()
                    amp.close()
        finally:
            driver.quit()
            server.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return res


def table(res: dict) -> str:
    lines = [f"{res['channels']} channels x {res['fs']:g} Hz, {res['span_s']} s shown, {res['seconds']} s each, "
             f"on {res['machine']['cpu']} ({res['machine']['cores']} cores), {res['when']}",
             "| renderer | frames/s | main thread per update p50 / p99 (ms) | Chromium CPU |",
             "| --- | ---: | ---: | ---: |"]
    for name in ("mushu", "uplot"):
        r = res[name]
        lines.append(f"| {name} | {r['frames_per_s']} | {r['update_ms_p50']} / {r['update_ms_p99']} | "
                     f"{r['chromium_cpu_pct']} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=15.0, help="how long to measure each page (default 15)")
    p.add_argument("--fs", type=float, default=1000.0)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--uplot", help="an unpacked uplot npm package (default: npm pack %s, cached)" % UPLOT)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    res = run(a.seconds, a.fs, a.channels, uplot_dir(a.uplot))
    print(table(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

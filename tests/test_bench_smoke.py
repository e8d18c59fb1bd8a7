"""The benchmarks run end to end in a reduced form; only correctness is asserted, never speed."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "amp_bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("amp_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_short_run_produces_a_table_and_lossless_runs():
    bench = load_bench()
    res = bench.run(short=True, duration=2, floor=False, tp_duration=1.0,
                    ladder=(20_000, 50_000), bisect_steps=0, repeats=1, log=lambda *_: None)
    assert "highest lossless throughput" in res["table"]
    assert "latency p99" in res["table"]
    lat = res["latency"]["runs"] + res["latency_no_markers_probe"]["runs"]
    assert len(lat) == 2 and all(r["lossless"] for r in lat)
    assert all(r["blocks"] > 0 and r["blocks_unmapped"] == 0 for r in lat)
    runs = res["throughput"]["runs"]
    assert runs
    for r in runs:
        assert r["lossless"], r
        assert r["lost_samples"] == 0 and r["gap_warnings"] == 0
        assert r["samples"] == r["expected_samples"] > 0


LSL_COMPARE = BENCH.parent / "lsl_compare.py"
HEADER = "| metric | better | mushu | LSL | mushu/LSL |"


@pytest.mark.timeout(240)
def test_short_comparison_prints_a_full_table_and_every_run_was_lossless(tmp_path):
    out = tmp_path / "compare.json"
    proc = subprocess.run([sys.executable, str(LSL_COMPARE), "--short", "--json", str(out)],
                          capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rows = [line for line in lines[lines.index(HEADER) + 2:] if line.startswith("|")]
    assert len(rows) == 18
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 5 and all(cells) and "nan" not in cells, row
    res = json.loads(out.read_text())
    assert res["all_lossless"] and not res["lossy"]
    runs = [r for by in res["raw"].values() for rs in by.values() for r in rs]
    assert len(runs) == 10 and all(r["lossless"] for r in runs)
    for variant in ("mushu", "lsl", "mushu+recorder"):  # whether a rung kept up is speed: not asserted
        runs = res["throughput"][variant]["runs"]
        assert runs and all(r["lossless"] is True for r in runs), runs
    fanout = res["raw"]["fanout"]
    assert all(r["others_lost"] == 0 and r["stalled_lossless"] for rs in fanout.values() for r in rs)


SOAK = BENCH.parent / "soak.py"


@pytest.mark.timeout(330)
def test_short_soak_finds_nothing_and_prints_its_table():
    """One cycle of client sessions, floods, recordings and service kills under ``mushu up``, every value checked."""
    proc = subprocess.run([sys.executable, str(SOAK), "--short"], capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + proc.stderr[-2000:]
    assert "| what | count |" in out and "| service | kills |" in out, out[-3000:]
    assert "| failures (findings; occurrences) | 0; 0 |" in out, out[-3000:]
    sessions = next(line for line in out.splitlines() if line.startswith("| client sessions"))
    assert "| 8 (4 / 4) |" in sessions, sessions

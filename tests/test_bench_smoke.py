"""The amp benchmark runs end to end in a reduced form; only correctness is asserted, never speed."""

import importlib.util
from pathlib import Path

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

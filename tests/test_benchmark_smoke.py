"""The benchmark still runs and reports every figure (its numbers are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from .subproc import child_env

ROOT = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"


def test_quick_benchmark_run_reports_every_table_and_draws_the_chart(tmp_path):
    chart = tmp_path / "chart.svg"
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--quick",
         "--only", "raw,buffered,buffered_ack,sync", "--chart", str(chart)],
        capture_output=True, text=True, timeout=120, env=child_env(),
    )
    assert out.returncode == 0, out.stderr
    for row in ("| fresh dicts |", "| reused dicts |", "| raw |", "| buffered |",
                "| buffered_ack |", "| sync |", "| buffered/stuck | 1,000/s |",
                "| buffered/absent | burst of 5,000 |", "| buffered/flaky |", "| server stuck |"):
        assert row in out.stdout
    assert out.stdout.index("| fresh dicts |") < out.stdout.index("| reused dicts |")
    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    for workload in ("fresh", "reused"):
        buffered = results["throughput"][workload]["buffered"]
        assert buffered["records"] == 5000
        assert buffered["cpu_us_per_record"] > 0
    for state in ("healthy", "stuck", "absent", "flaky"):
        burst = results["latency"][f"buffered/{state}"]["burst"]
        assert burst["calls"] == 5000
        assert burst["p50_us"] <= burst["p99_us"] <= burst["p999_us"] <= burst["max_us"]

    root = ET.parse(chart).getroot()  # raises unless the SVG is well-formed XML
    assert root.tag == f"{SVG}svg"
    # One bar per contender and per latency row, each titled with the figure it draws.
    titles = [t.text or "" for t in root.iter(f"{SVG}title")]
    for name in ("raw", "buffered", "buffered_ack", "sync"):
        rate = results["throughput"]["fresh"][name]["e2e_rate"]
        assert f"{name}: {rate:,.0f} rec/s" in titles
    for state in ("healthy", "stuck", "absent", "flaky"):
        p99 = results["latency"][f"buffered/{state}"]["steady"]["p99_us"]
        assert f"buffered, server {state}: p99 {p99:.1f} µs" in titles
    widths = [float(r.get("width", "0")) for r in root.iter(f"{SVG}rect")]
    assert all(w >= 0 for w in widths) and max(widths) <= float(root.get("width", "0"))


def test_spool_window_benchmark_runs_and_loses_only_a_tail():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "spool_window.py"), "--rounds", "1",
         "--after", "0.3"],
        capture_output=True, text=True, timeout=120, env=child_env(),
    )
    assert out.returncode == 0, out.stderr
    (round_,) = json.loads(out.stdout.strip().splitlines()[-1])["rounds"]
    assert round_["posted"] > 0
    assert round_["arrived"] + round_["lost"] == round_["posted"]
    # What the killed process had posted comes back from the spool, save its last moment.
    assert round_["tail_only"]

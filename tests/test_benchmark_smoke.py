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
    for row in ("| raw |", "| buffered |", "| buffered_ack |", "| sync |",
                "| buffered/stuck |", "| buffered/absent |", "| server stuck |"):
        assert row in out.stdout
    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    assert results["throughput"]["buffered"]["records"] == 5000

    root = ET.parse(chart).getroot()  # raises unless the SVG is well-formed XML
    assert root.tag == f"{SVG}svg"
    # One bar per contender and per latency row, each titled with the figure it draws.
    titles = [t.text or "" for t in root.iter(f"{SVG}title")]
    for name in ("raw", "buffered", "buffered_ack", "sync"):
        rate = results["throughput"][name]["e2e_rate"]
        assert f"{name}: {rate:,.0f} rec/s" in titles
    for state in ("healthy", "stuck", "absent"):
        p99 = results["latency"][f"buffered/{state}"]["p99_us"]
        assert f"buffered, server {state}: p99 {p99:.1f} µs" in titles
    widths = [float(r.get("width", "0")) for r in root.iter(f"{SVG}rect")]
    assert all(w >= 0 for w in widths) and max(widths) <= float(root.get("width", "0"))

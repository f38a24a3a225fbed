"""The benchmark still runs and reports every figure (its numbers are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_run_reports_every_table():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--quick",
         "--only", "raw,buffered,buffered_ack,sync"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for row in ("| raw |", "| buffered |", "| buffered_ack |", "| sync |",
                "| buffered/stuck |", "| buffered/absent |", "| server stuck |"):
        assert row in out.stdout
    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    assert results["throughput"]["buffered"]["records"] == 5000

"""The soak and the failure scenarios still run and print their tables (figures not judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .subproc import child_env

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=child_env())


def test_a_short_soak_prints_its_table_and_counts_every_record():
    out = run("benchmarks/soak.py", "--duration", "3", "--rate", "2000")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "| minutes | RSS MiB | posted |" in out.stdout
    assert "RSS slope over the second half" in out.stdout
    assert "every record counted once: yes" in out.stdout


# Every scenario is run in quick mode by tests/test_benchmark_smoke.py.

"""Every benchmark script still runs and reports its figures (the numbers are not judged).

A script that no test runs rots unseen (scenarios.py once failed on an attribute the
client no longer had, and the docs kept quoting an old table): each one is run here in
its smallest configuration, and a script added to benchmarks/ without a test here fails
:func:`test_every_benchmark_script_has_a_smoke_test`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from fluentclient import BufferedClient

from .subproc import child_env

ROOT = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"

# Each script in benchmarks/, and the test that runs it (soak.py's lives beside the
# scenarios' older test).
SMOKED = {
    "compare.py": "test_quick_benchmark_run_reports_every_table_and_draws_the_chart",
    "spool_window.py": "test_spool_window_benchmark_runs_and_loses_only_a_tail",
    "scenarios.py": "test_every_scenario_runs_in_quick_mode",
    "odd_records.py": "test_odd_records_reports_a_cost_for_every_shape",
    "accounting.py": "test_accounting_against_the_embedded_server_counts_every_record",
    "forward_sink.py": "test_forward_sink_counts_what_it_is_sent",
    "fork_cost.py": "test_fork_cost_reports_every_case",
    "reader_steps.py": "test_reader_steps_times_every_step_both_ways",
    "soak.py": "tests/test_scenario_benchmarks.py::test_a_short_soak_prints_its_table_and_"
               "counts_every_record",
    "model_soak.py": "tests/test_model.py::test_the_soak_runner_runs_the_model_and_reports_"
                     "its_steps",
}


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=child_env())


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of each Markdown table row, header and separator left out."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in stdout.splitlines() if line.startswith("|")]
    return [r for r in rows if not set("".join(r)) <= set("-:")][1:]


def test_every_benchmark_script_has_a_smoke_test():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert scripts == set(SMOKED), "add a smoke test for each new benchmark script"
    here = Path(__file__).read_text()
    for script, test in SMOKED.items():
        path, _, name = test.rpartition("::")
        source = (ROOT / path).read_text() if path else here
        assert f"def {name or test}(" in source, f"{script}: no test {test}"


def test_interleaved_rounds_against_a_baseline_tree_report_medians_and_paired_ratios():
    """--rounds, --baseline, --workloads and --throughput-only, with the one-frame-per-
    record contenders: the same tree serves as the baseline here."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--records",
         "300", "--only", "raw_sync,sync", "--rounds", "2", "--workloads", "fresh",
         "--throughput-only", "--baseline", str(ROOT)],
        capture_output=True, text=True, timeout=120, env=child_env(),
    )
    assert out.returncode == 0, out.stderr
    assert [row[0] for row in table_rows(out.stdout)] == ["raw_sync", "sync", "sync@baseline"]
    assert "| reused dicts |" not in out.stdout and "| post() latency |" not in out.stdout
    assert "- sync / raw one-frame-per-record loop: end to end " in out.stdout
    assert "over 2 rounds" in out.stdout
    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    fresh = results["throughput"]["fresh"]
    assert set(fresh) == {"raw_sync", "sync", "sync@baseline"}
    assert all(len(r["rounds"]) == 2 and r["records"] == 300 for r in fresh.values())
    assert fresh["sync@baseline"]["package"] == str(ROOT / "fluentclient")


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


def test_every_scenario_runs_in_quick_mode():
    # Runs the script itself, so that the script's own code paths (the replay of a spool
    # left by a killed process among them) are what is checked.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import scenarios
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = run_script("benchmarks/scenarios.py", "--quick")
    assert out.returncode == 0, out.stderr
    rows = table_rows(out.stdout)
    names = [row[0] for row in rows]
    assert len(rows) == len(scenarios.SCENARIOS), out.stdout
    assert names[0] == "healthy"
    assert "kill -9 while sending, spool_dir set, require_ack=True" in names
    for row in rows:
        assert row[1] == "200", row  # records posted
        # Figures or "–" (a killed process reports nothing), and a time to exit.
        assert all(re.fullmatch(r"[\d,]+|–", v) for v in row[1:7]), row
        float(row[7])
    by_name = dict(zip(names, rows))
    assert by_name["healthy"][1:7] == ["200", "200", "0", "0", "0", "0"]
    assert by_name["fork with buffered records"][1:7] == ["200", "200", "0", "0", "0", "0"]
    assert "replayed by the next start" in by_name["kill -9 while sending, spool_dir set"][8]


def test_odd_records_reports_a_cost_for_every_shape():
    out = run_script("benchmarks/odd_records.py", "--records", "500", "--rounds", "1")
    assert out.returncode == 0, out.stderr
    rows = table_rows(out.stdout)
    assert [r[0] for r in rows] == ["flat, 7 fields", "flat, 7 fields, one NaN",
                                    "nested (3 levels)", "flat + a datetime, default=str"]
    for row in rows:
        assert re.fullmatch(r"\d+ ns", row[1]) and re.fullmatch(r"\d+ ns", row[2]), row
        assert float(row[4]) > 0


def test_odd_records_compares_both_paths_for_every_shape():
    out = run_script("benchmarks/odd_records.py", "--paths", "--records", "300",
                     "--rounds", "1")
    assert out.returncode == 0, out.stderr
    rows = table_rows(out.stdout)
    assert [r[0] for r in rows] == ["flat, 7 fields", "flat, 7 fields, one NaN",
                                    "nested (3 levels)", "flat + a datetime, default=str"]
    for row in rows:
        assert re.fullmatch(r"\d+ ns", row[1]) and re.fullmatch(r"\d+ ns", row[4]), row
    # Which path ran is said; without the extension the compiled cells say nan.
    assert "compiled packer: " in out.stdout


def test_accounting_against_the_embedded_server_counts_every_record():
    # The embedded server only: the real ones take seconds each to start, and have
    # their own accounting tests (tests/test_real_accounting.py).
    out = run_script("benchmarks/accounting.py", "--quick")
    assert out.returncode == 0, out.stderr
    rows = table_rows(out.stdout)
    modes = [(r[1], r[2]) for r in rows]
    assert modes == [(m, k) for m in ("plain", "require_ack")
                     for k in ("healthy x0", "restart x1", "kill x1")]
    for row in rows:
        posted, arrived, _dups, _sent, possibly_lost, _unsent, lost, _over = (
            int(v.replace(",", "")) for v in row[3:11])
        assert posted == 300 and arrived <= posted
        # The report counts every loss: what never arrived was reported possibly lost.
        assert possibly_lost >= lost, row


def test_forward_sink_counts_what_it_is_sent():
    sink = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "forward_sink.py")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(),
    )
    assert sink.stdin is not None and sink.stdout is not None
    try:
        word, port = sink.stdout.readline().split()
        assert word == "port"
        with BufferedClient("127.0.0.1", int(port), at_exit=False) as client:
            for i in range(100):
                client.post("bench.sink", {"i": i})
            assert client.flush(30)
        sink.stdin.write("wait 100 30\n")
        sink.stdin.flush()
        assert sink.stdout.readline().split()[0] == "reached"
        sink.stdin.write("count\n")
        sink.stdin.flush()
        assert sink.stdout.readline().strip() == "100"
    finally:
        sink.kill()
        sink.wait(10)


def test_fork_cost_reports_every_case():
    out = run_script(str(ROOT / "benchmarks" / "fork_cost.py"), "--forks", "3",
                     "--rounds", "1", "--json")
    assert out.returncode == 0, out.stderr
    assert [row[0] for row in table_rows(out.stdout)] == ["none", "dormant", "running", "held"]
    medians = json.loads(out.stdout.strip().splitlines()[-1])["medians_us"]
    assert set(medians) == {"none", "dormant", "running", "held"}
    assert all(m > 0 for m in medians.values())


def test_reader_steps_times_every_step_both_ways():
    out = run_script("benchmarks/reader_steps.py", "--batches", "3", "--batch", "64")
    assert out.returncode == 0, out.stderr
    rows = table_rows(out.stdout)
    assert [r[0] for r in rows] == ["before (Python loop, three scans)", "today"], out.stdout
    for row in rows:
        steps = [float(cell) for cell in row[1:]]
        assert all(x >= 0 for x in steps) and steps[1] > 0, out.stdout

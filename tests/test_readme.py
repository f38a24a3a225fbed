"""The README's reference tables say what the code does: options, variables, drop reasons,
report fields, links. A new option or reason without its line in the README fails here."""

from __future__ import annotations

import dataclasses
import inspect
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fluentclient import BufferedClient, ShutdownReport
from fluentclient.config import VARIABLES
from fluentclient.metrics import DROP_REASONS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)")


def section(title: str) -> str:
    """The text under a ``## title`` heading, up to the next heading of that level."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def table(text: str, header: str) -> list[list[str]]:
    """The rows (as cells) of the Markdown table whose header row starts with ``header``."""
    lines = text[text.index(header):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    assert rows, f"empty table {header!r}"
    return rows


def test_the_two_commands_are_the_ones_ci_runs():
    text = section("Two commands")
    assert "pip install -e '.[test]' && python -m fluentclient demo" in text
    assert "```sh\npython -m pytest -q\n```" in text


def test_fault_sections_are_filled():
    assert "docs/hostile.md" in section("Hostile input")
    assert "| scenario | records posted | delivered |" in section("Surviving faults")
    assert "to come" not in README


def test_the_options_table_names_every_option_of_buffered_client():
    documented = {name for row in table(section("Using it"), "| option |")
                  for name in NAME.findall(row[0])}
    options = set(inspect.signature(BufferedClient.__init__).parameters) - {"self"}
    assert documented == options


def test_the_environment_table_matches_the_variables_read():
    rows = table(section("Command line, environment and metrics"), "| variable |")
    pairs = {}
    for variables, options, _ in rows:
        for variable, option in zip(NAME.findall(variables), NAME.findall(options)):
            pairs[variable] = option
    assert pairs == {f"FLUENT_{suffix}": option for suffix, option in VARIABLES.items()}


def test_every_drop_reason_is_documented():
    metrics = section("Command line, environment and metrics")
    row = next(r for r in table(metrics, "| metric |") if "records_dropped_total" in r[0])
    assert set(NAME.findall(row[2].split(":", 1)[1])) == set(DROP_REASONS)
    guarantees = section("Guarantees")
    for reason in DROP_REASONS:
        assert f'dropped["{reason}"]' in guarantees, reason


def test_the_shutdown_report_fields_are_all_named():
    text = section("Reliability")
    sentence = text[text.index("`ShutdownReport` fields:"):]
    sentence = sentence[: sentence.index(".\n")]
    fields = {f.name for f in dataclasses.fields(ShutdownReport)} | {"complete"}
    assert set(NAME.findall(sentence)) - {"ShutdownReport"} == fields


def test_internal_links_point_at_headings():
    slugs = {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-")
             for h in re.findall(r"^#+ (.+)$", README, re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", README)
    assert links
    for link in links:
        assert link in slugs, link


def test_the_benchmark_chart_shown_is_there_and_well_formed():
    paths = re.findall(r"!\[[^\]]*\]\(([^)]+\.svg)\)", section("Benchmarks"))
    assert paths == ["docs/benchmark.svg"]
    root = ET.parse(ROOT / paths[0]).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    # The chart and the tables come from one run: each end-to-end figure is in both.
    titles = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}title"))
    rows = table(section("Benchmarks"), "| fresh dicts |")
    for name, _, _, e2e, *_ in rows:
        assert f"{name}: {e2e} rec/s" in titles


def test_the_migration_table_covers_every_fluent_logger_option():
    sender = pytest.importorskip("fluent.sender")
    from fluent import asyncsender, handler  # type: ignore[import-not-found]

    text = section("Migrating from fluent-logger")
    mapping = text[: text.index("<!-- migration-example -->")]
    for call in (sender.FluentSender.__init__, asyncsender.FluentSender.__init__,
                 handler.FluentHandler.__init__, handler.FluentRecordFormatter.__init__):
        for name, param in inspect.signature(call).parameters.items():
            if name == "self" or param.kind is param.VAR_KEYWORD:
                continue
            assert re.search(rf"\b{name}\b", mapping), f"{call.__qualname__}: {name}"
    for method in ("emit", "emit_with_time", "close", "last_error", "clear_last_error",
                   "setup", "EventTime", "Event", "FluentRecordFormatter"):
        assert f"{method}" in mapping, method


def test_the_metrics_table_names_exactly_the_metrics_exported(fluent_server):
    from prometheus_client import CollectorRegistry

    from fluentclient.metrics import register

    registry = CollectorRegistry()
    client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False)
    register(client, registry)
    exported = set()
    for family in registry.collect():
        kind_suffix = "_total" if family.type == "counter" else ""
        exported.add(family.name + kind_suffix)
    client.shutdown(5)
    rows = table(section("Command line, environment and metrics"), "| metric |")
    documented = {name for row in rows for name in re.findall(r"`(fluentclient_\w+)`", row[0])}
    assert documented == exported

"""The README and the documentation pages say what the code does: options, variables, drop
reasons, report fields, links. A new option or reason without its line in the docs fails here.

The README is the front door; the reference tables live in the pages under docs/, and each
check below reads the page that holds its table."""

from __future__ import annotations

import dataclasses
import inspect
import re
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fluentclient import BufferedClient, ShutdownReport
from fluentclient.config import VARIABLES
from fluentclient.metrics import DROP_REASONS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")
NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)")
# Every Markdown file a reader sees: the README and the site's pages.
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def page(name: str) -> str:
    """The text of a documentation page, by its path under docs/."""
    return (DOCS / name).read_text(encoding="utf-8")


def section(title: str, text: str = README) -> str:
    """The text under a ``## title`` heading of ``text``, up to the next heading of that
    level."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
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


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading (as MkDocs and GitHub do
    for the headings these pages use)."""
    text = re.sub(r"[`*]", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```$", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_the_two_commands_are_the_ones_ci_runs():
    text = section("Two commands")
    assert "pip install -e '.[test]' && python -m fluentclient demo" in text
    command = "python tests/run_both_paths.py -q"
    assert f"```sh\n{command}\n```" in text
    # CI's last line is the README's test command, word for word.
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == command


def test_the_readme_is_a_front_door():
    assert len(README.encode("utf-8")) <= 12 * 1024
    for heading in ("Why fluentclient", "Install", "Quick start", "Tested against",
                    "Documentation"):
        assert section(heading).strip(), heading


def test_the_home_page_repeats_the_readme_sections():
    # The site's home page and the README share their pitch and what was tested.
    home = page("index.md")
    for heading in ("Why fluentclient", "Tested against"):
        assert section(heading, home) == section(heading).replace("](docs/", "]("), heading


def test_every_public_module_has_a_reference_page():
    # Every public module, found rather than listed, so a new one cannot be forgotten. The
    # clients and errors are on the top page; the command line is documented as a tool.
    modules = sorted(
        path.stem for path in (ROOT / "fluentclient").glob("*.py")
        if not path.stem.startswith("_") and path.stem not in {"cli", "client", "sync", "errors"}
    )
    assert "loguru" in modules and "handler" in modules
    for module in modules:
        assert f"::: fluentclient.{module}\n" in page(f"reference/{module}.md"), module
    top = page("reference/fluentclient.md")
    for name in ("BufferedClient", "SyncClient", "Server", "shutdown_on_signal", "errors"):
        assert f"::: fluentclient.{name}\n" in top, name


def test_no_page_tells_users_to_install_from_an_index():
    # fluentclient is not on PyPI: installs are from a checkout.
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"pip install ['\"]?fluentclient", text), path


def test_fault_sections_are_filled():
    assert "docs/hostile.md" in README
    assert "| scenario | records posted | delivered |" in section(
        "Surviving faults", page("guarantees.md"))
    for path in PAGES:
        assert "to come" not in path.read_text(encoding="utf-8"), path


def test_the_options_table_names_every_option_of_buffered_client():
    text = section("Using the client", page("getting-started.md"))
    documented = {name for row in table(text, "| option |") for name in NAME.findall(row[0])}
    options = set(inspect.signature(BufferedClient.__init__).parameters) - {"self"}
    assert documented == options


def test_the_environment_table_matches_the_variables_read():
    text = section("Configuration from the environment", page("guides/operating.md"))
    pairs = {}
    # An option is a client keyword, or ``keyword.field`` of the object it takes.
    place = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*)")
    for variables, options, _ in table(text, "| variable |"):
        for variable, option in zip(NAME.findall(variables), place.findall(options)):
            pairs[variable] = option
    assert pairs == {f"FLUENT_{suffix}": option for suffix, option in VARIABLES.items()}


def test_every_drop_reason_is_documented():
    metrics = section("Prometheus metrics", page("guides/operating.md"))
    row = next(r for r in table(metrics, "| metric |") if "records_dropped_total" in r[0])
    assert set(NAME.findall(row[2].split(":", 1)[1])) == set(DROP_REASONS)
    guarantees = section("What happens when", page("guarantees.md"))
    for reason in DROP_REASONS:
        assert f'dropped["{reason}"]' in guarantees, reason


def test_the_shutdown_report_fields_are_all_named():
    text = section("The shutdown report", page("guides/reliability.md"))
    sentence = text[text.index("`ShutdownReport` fields:"):]
    sentence = sentence[: sentence.index(".\n")]
    fields = {f.name for f in dataclasses.fields(ShutdownReport)} | {"complete"}
    assert set(NAME.findall(sentence)) - {"ShutdownReport"} == fields


def test_links_point_at_files_and_headings():
    # The strict site build checks the pages' links too; this also covers the README,
    # which is not part of the site.
    checked = 0
    for path in PAGES:
        text = re.sub(r"^```.*?^```$", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.exists(), f"{path.name}: {target}"
            # The API reference's anchors are made from docstrings by the site build,
            # which checks links to them.
            if anchor and DOCS / "reference" not in linked.parents:
                assert anchor in anchors(linked), f"{path.name}: {target}"
            checked += 1
    assert checked > 50


def test_the_readme_links_into_every_guide():
    linked = set(re.findall(r"\]\(docs/([^)#]+)", README))
    guides = {f"guides/{p.name}" for p in (DOCS / "guides").glob("*.md")}
    assert guides <= linked


def test_the_benchmark_chart_shown_is_there_and_well_formed():
    text = page("benchmarks.md")
    paths = re.findall(r"!\[[^\]]*\]\(([^)]+\.svg)\)", text)
    assert paths == ["benchmark.svg"]
    root = ET.parse(DOCS / paths[0]).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    # The chart and the tables come from one run: each end-to-end figure is in both.
    titles = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}title"))
    rows = table(text, "| fresh dicts |")
    for name, _, _, e2e, *_ in rows:
        assert f"{name}: {e2e} rec/s" in titles


def test_the_readme_figures_come_from_the_benchmark_tables():
    text = page("benchmarks.md")
    rows = {row[0]: row for row in table(text, "| fresh dicts |")}
    for name in ("buffered", "raw"):
        assert rows[name][3] in section("Why fluentclient"), name


def test_the_migration_table_covers_every_fluent_logger_option():
    sender = pytest.importorskip("fluent.sender")
    from fluent import asyncsender, handler  # type: ignore[import-not-found]

    text = page("migration.md")
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
    text = section("Prometheus metrics", page("guides/operating.md"))
    rows = table(text, "| metric |")
    documented = {name for row in rows for name in re.findall(r"`(fluentclient_\w+)`", row[0])}
    assert documented == exported

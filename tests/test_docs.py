"""The documentation builds, and its examples work.

- The site builds with ``mkdocs build --strict``: a broken link, a missing anchor, a page
  left out of the nav or an API reference that no longer resolves fails here.
- Every ```python block of the README and of the pages compiles.
- A block right after an ``<!-- example -->`` line runs in its own process against a real
  server, and the server receives what its ``# server receives`` comments claim (the same
  rules as the migration examples, see test_migration.py).
- A block right after a ``<!-- pytest-example -->`` line is a test file: pytest runs it,
  with the package's ``fluent_server`` fixture, and it passes.
- A block right after a ``<!-- migration-example -->`` line runs in test_migration.py.
- Every other block runs too: a page's blocks run one after the other, each in a fresh
  namespace, in one process per page, against an embedded server that stands in for the
  hosts and ports the block names (``FLUENT_HOST``/``FLUENT_PORT`` point at it as well).
  A block that cannot run here says why in a ``<!-- not run: REASON -->`` line right
  before it, which the reader sees in the page's source.
"""

from __future__ import annotations

import functools
import html
import http.server
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from fluentclient.server import ForwardServer

from .certs import Pki, server_context
from .subproc import child_env
from .test_migration import Example, assert_claims_arrived, examples, run_example

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)
EXAMPLE = "<!-- example -->"
PYTEST_EXAMPLE = "<!-- pytest-example -->"
MIGRATION_EXAMPLE = "<!-- migration-example -->"
NOT_RUN = re.compile(r"<!-- not run: (\S.*?) -->")
# The hosts the pages' blocks name, all served here by one embedded server.
HOSTS = re.compile(r'"(?:fluentd\.internal|agg-1|agg-2|agg-dr|127\.0\.0\.1)"')
PORTS = re.compile(r"\b2422[45]\b")
# A path under /var (a spool directory, say): made inside the test's own directory.
VAR_PATHS = re.compile(r'"/var/[^"]*"')
# The server a page's blocks need, where the plain one will not do.
SECURE_PAGES = {"docs/guides/protocol.md"}
LIBRARY_WARNING = re.compile(r"^(WARNING|ERROR|CRITICAL)?\S*\s*fluentclient: ", re.M)


def name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def blocks() -> list[tuple[str, int, str]]:
    found = []
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            found.append((name(path), text.count("\n", 0, match.start()) + 1, match.group(1)))
    return found


def plain_blocks() -> list[tuple[str, list[tuple[int, str]]]]:
    """Each page's blocks that no marker claims, in page order: the runner runs them."""
    pages = []
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        found = []
        for match in FENCE.finditer(text):
            before = text[:match.start()].rstrip("\n").rpartition("\n")[2]
            if before in (EXAMPLE, PYTEST_EXAMPLE, MIGRATION_EXAMPLE) or NOT_RUN.fullmatch(before):
                continue
            found.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
        if found:
            pages.append((name(path), found))
    return pages


def marked(marker: str) -> list[tuple[str, Example]]:
    return [(name(path), example) for path in PAGES
            for example in examples(path.read_text(encoding="utf-8"), marker)]


BLOCKS = blocks()
EXAMPLES = marked(EXAMPLE)
PYTEST_EXAMPLES = marked(PYTEST_EXAMPLE)
PLAIN = plain_blocks()

# Runs a page's blocks, each in a fresh namespace; the first failure names its line.
RUNNER = """\
import json, sys, traceback
page, blocks = json.loads(sys.argv[1])
for line, code in blocks:
    try:
        exec(compile(code, f"{page} block at line {line}", "exec"), {"__name__": "__main__"})
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: {page} line {line}", file=sys.stderr)
        sys.exit(1)
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as ``mkdocs build --strict`` makes it, once for this module's tests."""
    pytest.importorskip("mkdocs", reason="the docs tools: pip install '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="the docs tools: pip install '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**child_env(), "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stdout + done.stderr, done.stdout + done.stderr
    return out


def test_mkdocs_build_is_strict_and_clean(site):
    assert (site / "reference" / "fluentclient" / "index.html").exists()


def test_every_page_has_the_layout_rules(site):
    # The rules that keep tables, identifiers and code inside the column (see the
    # browser test below for what they do).
    css = (site / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    rules = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    table = re.search(r"\.md-typeset table:not\(\[class\]\)[^{]*\{([^}]*)\}", rules)
    assert table is not None
    for declaration in ("display: block", "max-width: 100%", "overflow-x: auto"):
        assert declaration in table.group(1)
    code = re.search(r"\.md-typeset code \{([^}]*)\}", rules)
    assert code is not None
    assert "word-break: normal" in code.group(1) and "overflow-wrap: normal" in code.group(1)
    pages = [p for p in site.rglob("index.html") if "search" not in p.parts]
    assert len(pages) > 20
    for page in pages:
        assert "stylesheets/extra.css" in page.read_text(encoding="utf-8"), page


# Private names that may still show in a signature, each with its reason.
ALLOWED_PRIVATE = {
    "_Sender",  # FluentLogger(sender: _Sender): made by FluentLoggerFactory, not by hand
}


def test_the_api_reference_shows_no_private_names_or_self_assignments(site):
    for page in sorted((site / "reference").rglob("index.html")):
        text = page.read_text(encoding="utf-8")
        for block in re.findall(r'class="doc-signature[^"]*".*?</code>', text, re.S):
            words = html.unescape(re.sub(r"<[^>]+>", "", block))
            private = set(re.findall(r"(?<![\w.])_[A-Za-z]\w*", words)) - ALLOWED_PRIVATE
            assert not private, f"{page.parent.name}: {private} in {words!r}"
            # An attribute shown as "x = x" (set from the parameter of the same name).
            same = [m.group(0) for m in re.finditer(r"\b([a-z_]\w*) = \1\b", words)]
            assert not same, f"{page.parent.name}: {same}"
        assert "__slots__" not in text, page.parent.name


def _chromium() -> str:
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                  if shutil.which(n)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it", pytrace=False)
        pytest.skip("needs a headless Chromium (apt-get install chromium)")
    return found


# The pages with the widest tables and the most identifiers in them.
LAYOUT_PAGES = ["benchmarks/", "guarantees/", "guides/operating/", "hostile/"]


def measure_layout(site: Path, pages: list[str]) -> dict[str, Any]:
    """What tests/docs_layout/probe.html measures of ``pages`` in a real browser.

    The site is served over HTTP, so that the probe may look into its frames."""
    shutil.copy(Path(__file__).parent / "docs_layout" / "probe.html", site / "probe.html")
    handler = functools.partial(QuietHandler, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            url = (f"http://127.0.0.1:{httpd.server_address[1]}/probe.html#"
                   + urllib.parse.quote(json.dumps(pages)))
            done = subprocess.run(
                [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                 "--window-size=1400,1000", "--virtual-time-budget=10000", "--dump-dom", url],
                capture_output=True, text=True, timeout=120)
        finally:
            httpd.shutdown()
            thread.join(timeout=10)
    found = re.search(r'<pre id="report">(.+?)</pre>', done.stdout, re.S)
    assert found is not None, done.stdout[-2000:] + done.stderr[-2000:]
    report: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return report


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_tables_stay_inside_the_column_and_identifiers_never_break_in_a_browser(site):
    report = measure_layout(site, LAYOUT_PAGES)
    assert sorted(report) == sorted(LAYOUT_PAGES)
    scrolling = 0
    for page, found in report.items():
        assert found["tables"], page
        for i, table in enumerate(found["tables"]):
            assert table["right"] <= table["edge"] + 1, f"{page} table {i}: {table}"
            scrolling += table["scrolls"]
        assert found["broken"] == [], page
    # The benchmark tables are wider than the column: they are there, and scroll.
    assert scrolling >= 3, report


@pytest.mark.parametrize("where,line,code", BLOCKS, ids=[f"{w}:{n}" for w, n, _ in BLOCKS])
def test_python_block_compiles(where, line, code):
    compile(code, f"{where} line {line}", "exec")


def test_the_marked_examples_are_found():
    # A marker or fence typo would silently drop an example from the tests below.
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        assert len(examples(text, EXAMPLE)) == text.count(EXAMPLE), name(path)
        assert len(examples(text, PYTEST_EXAMPLE)) == text.count(PYTEST_EXAMPLE), name(path)
    where = {w for w, _ in EXAMPLES}
    assert {"README.md", "docs/getting-started.md", "docs/guides/logging.md",
            "docs/guides/structlog.md", "docs/guides/asyncio.md"} <= where
    for page, example in EXAMPLES:
        assert example.claims, f"{page} line {example.line}: an example claims nothing"
        assert re.search(r"\b24224\b", example.code), f"{page} line {example.line}: no port"
    assert PYTEST_EXAMPLES


def test_every_block_is_run_or_says_why_not():
    # Counted from the fences alone: a block no test runs and no marker excuses is an
    # error, whatever the markers above say.
    total = len(BLOCKS)
    plain = sum(len(found) for _, found in PLAIN)
    migration = len(examples((DOCS / "migration.md").read_text(encoding="utf-8"),
                             MIGRATION_EXAMPLE))
    excused = sum(len(NOT_RUN.findall(p.read_text(encoding="utf-8"))) for p in PAGES)
    assert total == plain + len(EXAMPLES) + len(PYTEST_EXAMPLES) + migration + excused
    assert any(where == "docs/guides/operating.md" for where, _ in PLAIN)


def substitute(code: str, server: ForwardServer, workdir: Path) -> str:
    code = HOSTS.sub(json.dumps(server.host), code)
    code = PORTS.sub(str(server.port), code)
    return VAR_PATHS.sub(lambda _: json.dumps(str(workdir / "var")), code)


def run_page(where: str, found: list[tuple[int, str]], server: ForwardServer,
             workdir: Path) -> subprocess.CompletedProcess[str]:
    blocks = [(line, substitute(code, server, workdir)) for line, code in found]
    env = {**child_env(), "FLUENT_HOST": server.host, "FLUENT_PORT": str(server.port)}
    return subprocess.run([sys.executable, "-c", RUNNER, json.dumps([where, blocks])],
                          cwd=workdir, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("where,found", PLAIN, ids=[w for w, _ in PLAIN])
def test_page_blocks_run(where, found, tmp_path, request):
    for module in ("loguru", "structlog", "prometheus_client"):
        if any(re.search(rf"^\s*(from|import) {module}\b", code, re.M) for _, code in found):
            pytest.importorskip(module, reason="the test extra: pip install -e '.[test]'")
    options = {}
    if where in SECURE_PAGES:
        # protocol.md's client: TLS trusting ca.pem (in the working directory), the
        # shared key and a user.
        pki: Pki = request.getfixturevalue("pki")
        shutil.copy(pki.ca_file, tmp_path / "ca.pem")
        options = {"ssl_context": server_context(pki), "shared_key": "s3cret",
                   "users": {"app": "pw"}}
    with ForwardServer("127.0.0.1", 0, **options) as server:
        done = run_page(where, found, server, tmp_path)
        assert done.returncode == 0, done.stderr
        # The library says nothing above INFO when all goes well (logging's last resort
        # prints its warnings as bare "fluentclient: ..." lines): one means the block did
        # not do what the page says (it could not connect, say).
        assert not LIBRARY_WARNING.search(done.stderr), done.stderr
        posts = any(re.search(r"\.(post|info|warning|exception)\(", code)
                    for _, code in found)
        if posts:
            assert server.wait_for_events(1, timeout=10), f"{where}: nothing arrived"


def test_a_failing_block_is_caught(fluent_server, tmp_path):
    """The runner can fail: a block that raises fails its page, naming the line."""
    done = run_page("page.md", [(3, "pass"), (7, "raise ValueError('no')")], fluent_server,
                    tmp_path)
    assert done.returncode == 1
    assert "FAILED: page.md line 7" in done.stderr
    # And a block that cannot reach its server is seen by what the library says.
    unreachable = ("from fluentclient import BufferedClient\n"
                   "BufferedClient('127.0.0.1', 1, shutdown_timeout=0.5).post('a.b', {})\n")
    done = run_page("page.md", [(1, unreachable)], fluent_server, tmp_path)
    assert done.returncode == 0
    assert LIBRARY_WARNING.search(done.stderr), done.stderr


@pytest.mark.parametrize("where,example", EXAMPLES,
                         ids=[f"{w}:{e.line}" for w, e in EXAMPLES])
def test_example_delivers_what_it_claims(where, example, fluent_server):
    done = run_example(example, fluent_server)
    assert done.returncode == 0, done.stderr
    assert_claims_arrived(example, fluent_server, where)


def _fixture_is_registered() -> bool:
    return any(ep.value == "fluentclient.pytest_plugin"
               for ep in importlib.metadata.entry_points(group="pytest11"))


@pytest.mark.parametrize("where,example", PYTEST_EXAMPLES,
                         ids=[f"{w}:{e.line}" for w, e in PYTEST_EXAMPLES])
def test_pytest_example_passes(where, example, tmp_path):
    (tmp_path / "test_example.py").write_text(example.code, encoding="utf-8")
    plugin = [] if _fixture_is_registered() else ["-p", "fluentclient.pytest_plugin"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin,
         "--rootdir", str(tmp_path), str(tmp_path / "test_example.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**child_env(), "PYTEST_ADDOPTS": ""})
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b1 passed\b", done.stdout), done.stdout

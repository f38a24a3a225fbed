"""The documentation builds, and its examples work.

- The site builds with ``mkdocs build --strict``: a broken link, a missing anchor, a page
  left out of the nav or an API reference that no longer resolves fails here.
- Every ```python block of the README and of the pages compiles.
- A block right after an ``<!-- example -->`` line runs in its own process against a real
  server, and the server receives what its ``# server receives`` comments claim (the same
  rules as the migration examples, see test_migration.py).
- A block right after a ``<!-- pytest-example -->`` line is a test file: pytest runs it,
  with the package's ``fluent_server`` fixture, and it passes.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .subproc import child_env
from .test_migration import Example, assert_claims_arrived, examples, run_example

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)
EXAMPLE = "<!-- example -->"
PYTEST_EXAMPLE = "<!-- pytest-example -->"


def name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def blocks() -> list[tuple[str, int, str]]:
    found = []
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            found.append((name(path), text.count("\n", 0, match.start()) + 1, match.group(1)))
    return found


def marked(marker: str) -> list[tuple[str, Example]]:
    return [(name(path), example) for path in PAGES
            for example in examples(path.read_text(encoding="utf-8"), marker)]


BLOCKS = blocks()
EXAMPLES = marked(EXAMPLE)
PYTEST_EXAMPLES = marked(PYTEST_EXAMPLE)


def test_mkdocs_build_is_strict_and_clean(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs tools: pip install '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="the docs tools: pip install '.[docs]'")
    env = {**child_env(), "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "fluentclient" / "index.html").exists()


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

"""The test command covers every Python version the package declares, and a version it
cannot test is never passed over in silence in CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from . import run_both_paths as runner

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
# CI's own interpreter runs passes 1 and 2 (.ci/run installs into python3).
CI_VERSION = "3.11"

pytestmark = pytest.mark.no_packing


def declared() -> set[str]:
    return set(re.findall(r'"Programming Language :: Python :: (3\.\d+)"', PYPROJECT))


def test_every_declared_version_has_a_pass():
    assert declared(), "no version classifiers in pyproject.toml"
    untested = declared() - {CI_VERSION, *runner.VERSIONS}
    assert not untested, f"declared in pyproject.toml but never tested: {sorted(untested)}"


def test_the_oldest_version_allowed_is_tested():
    oldest = re.search(r'requires-python = ">=(3\.\d+)"', PYPROJECT)
    assert oldest, "no requires-python in pyproject.toml"
    assert oldest.group(1) in runner.VERSIONS


def test_ci_makes_a_venv_for_each_version_the_runner_looks_for():
    script = (ROOT / ".ci" / "venvs").read_text(encoding="utf-8")
    listed = re.search(r"versions=\(([\d. ]+)\)", script)
    assert listed, ".ci/venvs lists no default versions"
    assert tuple(listed.group(1).split()) == runner.VERSIONS
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ".ci/venvs" in ci, ".ci/run does not make the venvs"
    assert ci.index(".ci/venvs") < len(ci) - 1, "the venvs are made after the tests run"


def test_a_missing_version_is_not_tested_and_fails_in_ci(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "VENVS", tmp_path)
    one = runner.version_pass("3.99", {"PATH": "/usr/bin"}, ())
    assert "3.99" in one.missing
    runner.run(one, 3, 6, [], tmp_path)  # starts nothing: there is nothing to run
    assert "NOT TESTED" in capsys.readouterr().out
    monkeypatch.delenv("CI", raising=False)
    assert one.ok, "outside CI a missing version is reported, not failed"
    monkeypatch.setenv("CI", "true")
    assert not one.ok, "in CI a missing version fails the run"


def test_the_venv_comes_first_on_the_path_of_its_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "VENVS", tmp_path)
    bin_dir = tmp_path / "py3.99" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to("/bin/true")
    one = runner.version_pass("3.99", {"PATH": "/usr/bin"}, ())
    assert not one.missing
    assert one.python == str(bin_dir / "python")
    assert one.env["PATH"].split(":")[0] == str(bin_dir)

"""Provenance says whether the package's files differ from the commit it names."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from resdyn.sweeps.store import _git_dirty, provenance

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                   check=True, capture_output=True)


def test_dirty_flag_follows_edits_and_new_files_of_the_package_only(tmp_path):
    repo = tmp_path / "repo"
    package = repo / "src" / "pkg"
    package.mkdir(parents=True)
    (package / "mod.py").write_text("x = 1\n")
    (repo / "notes.md").write_text("a\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    assert _git_dirty(package) is False
    (repo / "notes.md").write_text("b\n")  # outside the package: not the code that ran
    assert _git_dirty(package) is False
    (package / "mod.py").write_text("x = 2\n")
    assert _git_dirty(package) is True
    _git(repo, "commit", "-q", "-am", "second")
    assert _git_dirty(package) is False
    (package / "new.py").write_text("y = 1\n")  # an untracked module runs too
    assert _git_dirty(package) is True


def test_outside_a_checkout_the_flag_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    (tmp_path / "pkg").mkdir()
    assert _git_dirty(tmp_path / "pkg") is None


def test_provenance_carries_the_flag():
    record = provenance("float32", "cpu")
    assert record["git_dirty"] in (True, False, None)
    assert (record["git_dirty"] is None) == (record["git_commit"] is None)

"""Names that become paths: nothing is written outside the folder it belongs in."""

import base64
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from resdyn._paths import PathEscapeError, check_name, inside, safe_file_name
from resdyn.cli.main import main
from resdyn.sweeps import SpecError, parse_spec
from resdyn.sweeps.store import Store

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
HOSTILE = ["../../..", "../../x", "/abs/x", "a/b", "a\nb", "a\x00b", "x" * 5000, "", ".hidden", "..",
           "C:\\x", " spaced", "naïve"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_or_mapped_inside(tmp_path, name):
    with pytest.raises(ValueError, match=r"must be 1-128 characters from A-Z a-z 0-9 \. _ -"):
        check_name("spec name", name)
    safe = safe_file_name(name)
    assert check_name("mapped", safe) == safe
    assert inside(tmp_path, safe + ".png").parent == tmp_path.resolve()


def test_safe_names_stay_distinct_and_good_names_stay_as_they_are():
    assert safe_file_name("depth-quick") == "depth-quick"
    assert len({safe_file_name(n) for n in HOSTILE}) == len(HOSTILE)
    assert safe_file_name("a/b") != safe_file_name("a_b")


def test_inside_refuses_escapes_through_dots_absolute_paths_and_symlinks(tmp_path):
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path, tmp_path / "out" / "link")
    for p in ("../x", "/etc/passwd", "link/x", "a/../../x"):
        with pytest.raises(PathEscapeError, match="outside the folder"):
            inside(tmp_path / "out", p)
    assert inside(tmp_path / "out", "a/b.png") == (tmp_path / "out" / "a" / "b.png").resolve()


@pytest.mark.parametrize("name", ["/abs/x", "../../x", "a\nb", "a\x00b", "x" * 5000, ""])
def test_a_spec_name_that_is_not_a_plain_name_is_refused_before_any_file(tmp_path, monkeypatch, name):
    raw = {"name": name, "data": {"name": "two_spirals"}, "model": {"family": "resnet"}, "train": {},
           "sweep": {"sample_size": [8]}}
    with pytest.raises(SpecError, match=r"^spec key name: must be 1-128 characters") as err:
        parse_spec(raw)
    assert "\n" not in str(err.value)
    # Through the command line: one line, and no runs/ folder or store anywhere.
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "' + name.replace("\\", "\\\\").replace("\n", "\\n").replace("\x00", "\\u0000")
                    + '"\n[data]\nname = "two_spirals"\n[model]\nfamily = "resnet"\n[train]\n'
                    "[sweep]\nsample_size = [8]\n")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["run", str(spec), "--quiet"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and "spec key name: must be" in lines[0], res.output
    assert os.listdir(tmp_path) == ["spec.toml"]


def test_a_spec_without_a_name_gets_a_safe_one_from_its_file(tmp_path):
    raw = {"data": {"name": "two_spirals"}, "model": {"family": "resnet"}, "train": {},
           "sweep": {"sample_size": [8]}}
    assert parse_spec(raw, source=str(tmp_path / "my spec.toml")).name == safe_file_name("my spec")
    assert parse_spec(raw, source="depth-quick.toml").name == "depth-quick"


@pytest.mark.parametrize("name", ["../../../evil", "/tmp/evil-abs", "a/../../b", "..", "x\n/y"])
def test_report_figures_of_a_crafted_stored_outcome_stay_inside_out(tmp_path, name):
    store = tmp_path / "s.sqlite"
    with Store(store) as st:
        st.save_outcome(name, {"name": name, "tables": {}, "claims": [], "data": {},
                               "figures": {"fig": PNG}})
    before = set(Path("/tmp").iterdir())
    out = tmp_path / "deep" / "er" / "out"
    res = CliRunner().invoke(main, ["report", str(store), "--out", str(out)])
    assert res.exit_code == 0, res.output
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    outside = {p for p in written if out not in p.parents and not p.name.startswith("s.sqlite")}
    assert outside == set()
    pngs = [p for p in written if p.suffix == ".png" or "png" in p.name]
    assert pngs and all(out in p.parents for p in pngs)
    assert set(Path("/tmp").iterdir()) - before <= {p for p in Path("/tmp").iterdir()
                                                     if p.name.startswith("pytest")}

"""docs/specs.md: its generated lists match the registries, and its example is a valid spec."""

import re
from pathlib import Path

from resdyn.data.registry import INFO
from resdyn.models.registry import FAMILIES
from resdyn.reports.specdoc import update
from resdyn.sweeps.grid import expand
from resdyn.sweeps.measures import measure_names, tracker_names
from resdyn.sweeps.spec import load_spec

DOC = Path(__file__).parents[1] / "docs" / "specs.md"


def _section(text: str, block: str) -> str:
    m = re.search(rf"<!-- BEGIN GENERATED {block} -->\n(.*?)<!-- END GENERATED {block} -->", text,
                  re.S)
    assert m, block
    return m.group(1)


def test_generated_lists_are_in_sync_with_the_registries():
    text = DOC.read_text()
    assert update(text) == text, "run: python -m resdyn.reports.specdoc docs/specs.md"
    # and independently of the generator: every registered name appears in its section
    for block, names in (("datasets", INFO), ("measures", measure_names()),
                         ("trackers", tracker_names()), ("families", FAMILIES)):
        section = _section(text, block)
        for name in names:
            assert f"`{name}`" in section or f'"{name}"' in section, (block, name)
        listed = set(re.findall(r"^\| `([\w-]+)` \|", section, re.M))
        if block in ("datasets", "measures", "trackers"):
            assert listed == set(names), (block, listed ^ set(names))


def test_the_annotated_example_is_a_valid_spec(tmp_path):
    text = DOC.read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "my-sweep.toml").write_text(example)
    spec = load_spec(tmp_path / "my-sweep.toml")
    cells = expand(spec)
    assert len(cells) == 4 * 3 * 2 * 2
    digits = [c for c in cells if c.config["data"]["name"] == "digits"]
    assert {c.config["model"]["in_dim"] for c in digits} == {64}
    assert {c.config["model"]["out_dim"] for c in digits} == {10}

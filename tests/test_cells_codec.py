"""The one codec between a typed cell and its stored config: every shipped spec's cells and every
cell of the old fixture store decode to the same config and id; the store hands back typed
records; between spec and store the model is built once per cell."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import resdyn.models.registry as registry
from resdyn.cli.main import main
from resdyn.sweeps import Store, expand, load_spec
from resdyn.sweeps.cells import CellDecodeError, cell_hash, decode_cell, flat_settings
from resdyn.sweeps.spec import SpecError

SPECS = sorted((Path(registry.__file__).parents[1] / "specs").glob("*.toml"))
FIXTURE = Path(__file__).parent / "fixtures" / "store-main"
# Shipped specs that expand here (no image files, no certificate spec): checked by name, so a
# spec that stops expanding fails the test instead of being skipped silently.
EXPANDABLE = {"dead-zone", "dead-zone-quick", "depth", "depth-quick", "dnl-convergence",
              "dnl-convergence-quick", "mean-field", "mean-field-diagnostics", "mean-field-gd",
              "mean-field-quick", "sample-size", "sample-size-quick"}


def _stored(config: dict) -> dict:
    """A config as a store row gives it back: JSON with sorted keys, decoded."""
    return json.loads(json.dumps(config, sort_keys=True))


def _cells_of(path: Path):
    try:
        return expand(load_spec(path))
    except (SpecError, FileNotFoundError, ValueError):
        return None  # image data files absent, or not a sweep spec (certificates)


def test_every_shipped_spec_cell_decodes_to_its_config_and_id():
    checked = {}
    for path in SPECS:
        cells = _cells_of(path)
        if cells is None:
            continue
        for c in cells:
            back = decode_cell(_stored(c.config))
            assert back.config == c.config, (path.stem, c.cell_id)
            assert back.cell_id == c.cell_id and back.group_key == c.group_key
            assert back.model == c.model and back.settings == flat_settings(c.config)
            assert (back.warm_from, back.warm_init, back.init_seed) == (c.warm_from, c.warm_init,
                                                                         c.init_seed)
        checked[path.stem] = len(cells)
    assert set(checked) >= EXPANDABLE, sorted(EXPANDABLE - set(checked))
    # warm starts (dnl-convergence), control, data options and init strides are among them
    cells = [c for p in SPECS if p.stem in ("dnl-convergence-quick", "mean-field-quick")
             for c in _cells_of(p)]
    assert any(c.warm_from for c in cells) and any(not c.warm_init for c in cells if c.warm_from)
    assert any(c.training.control is not None for c in cells)
    assert any(c.training.init_seed_stride for c in cells)


def test_the_fixture_store_cells_decode_to_their_stored_config_and_row_id():
    with Store(FIXTURE / "store.sqlite", create=False, readonly=True) as st:
        rows = st.rows()
        records = st.records()
    assert len(rows) == 4
    for row, rec in zip(rows, records, strict=True):
        # written before lr_schedule / warmup_steps existed: they are absent and take defaults
        assert "lr_schedule" not in row["config"]["train"]
        assert rec.cell.training.config.lr_schedule == "constant"
        assert rec.cell.config == row["config"]
        assert rec.cell.cell_id == row["cell_id"] == rec.cell_id
        assert cell_hash(row["config"]) == row["cell_id"]
        assert rec.cell.model.depth == 3 and rec.cell.model.width == 8
        assert rec.cell.data.name == "two_spirals" and rec.cell.sample_size in (32, 64)
        assert rec.metrics == row["metrics"] and rec.weights == row["weights"]


@pytest.mark.parametrize(("change", "named"), [
    (lambda c: c["train"].update(momentumm=0.9), "momentumm"),
    (lambda c: c["model"].update(family="no_such_family"), "no_such_family"),
    (lambda c: c.pop("dtype"), "'dtype'"),
    (lambda c: c.update(sample_size="32"), "sample_size"),
    (lambda c: c["data"].update(sample="shuffled"), "sample"),
])
def test_a_config_that_is_not_a_cell_is_one_error_naming_the_fault(change, named):
    with Store(FIXTURE / "store.sqlite", create=False, readonly=True) as st:
        config = st.rows()[0]["config"]
    change(config)
    with pytest.raises(CellDecodeError, match=named):
        decode_cell(config)


def test_a_stored_row_whose_config_is_not_a_cell_is_a_store_error_naming_the_row(tmp_path):
    path = tmp_path / "s.sqlite"
    shutil.copy(FIXTURE / "store.sqlite", path)
    with sqlite3.connect(path) as db:
        (cid, text), *_ = db.execute("SELECT cell_id, config FROM cells ORDER BY cell_id")
        config = json.loads(text)
        config["train"]["momentumm"] = 0.9
        db.execute("UPDATE cells SET config = ? WHERE cell_id = ?", (json.dumps(config), cid))
    db.close()
    from resdyn.sweeps.store import StoreError

    with Store(path, create=False) as st, pytest.raises(StoreError, match=f"{cid}.*momentumm"):
        st.records()


def _count_build_model(monkeypatch) -> list[str]:
    """Count every call of ``build_model``, patched in every resdyn module that looks it up."""
    original = registry.build_model
    calls: list[str] = []

    def counted(family, **options):
        calls.append(family)
        return original(family, **options)

    for name, module in list(sys.modules.items()):
        if name.startswith("resdyn") and getattr(module, "build_model", None) is original:
            monkeypatch.setattr(module, "build_model", counted)
    return calls


def test_a_run_builds_the_model_once_per_cell(tmp_path, monkeypatch):
    spec = tmp_path / "spec.toml"
    spec.write_text((FIXTURE / "spec.toml").read_text().replace("steps = 40", "steps = 4"))
    calls = _count_build_model(monkeypatch)
    res = CliRunner().invoke(main, ["run", str(spec), "--store", str(tmp_path / "s.sqlite"),
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    assert "4 trained now" in res.output
    assert calls == ["resnet"] * 4
    # what was written is what the cells say: typed records with the run's models
    with Store(tmp_path / "s.sqlite", create=False) as st:
        records = st.records()
        model, params = st.load_weights(records[0])
    assert len(records) == 4 and {r.cell.sample_size for r in records} == {32, 64}
    assert model == records[0].cell.model and params["A"].shape[0] == model.width

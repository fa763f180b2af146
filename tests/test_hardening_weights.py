"""Weights are read only through Store.load_weights: inside the store's folder, sha256 checked,
shapes of the row's model. Rows that point elsewhere are one error line, nothing is loaded."""

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import resdyn
from helpers import one_cell_spec
from resdyn.cli.main import main
from resdyn.models.io import save_params
from resdyn.models.registry import build_model
from resdyn.sweeps import Store, expand, parse_spec
from resdyn.sweeps.runner import train_group
from resdyn.sweeps.store import StoreError

BASE = one_cell_spec("w", 20)


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    """A one-cell store and its cell id."""
    spec = parse_spec(BASE)
    (result,) = train_group(expand(spec))
    path = tmp_path_factory.mktemp("base") / "s.sqlite"
    with Store(path) as st:
        st.write(spec.name, result)
    return path, result.cell_id


def _copy(base_store, tmp_path) -> tuple[Path, str]:
    path, cid = base_store
    dest = tmp_path / "store" / "s.sqlite"
    dest.parent.mkdir()
    shutil.copy(path, dest)
    shutil.copytree(Path(str(path) + ".d"), Path(str(dest) + ".d"))
    return dest, cid


def _set(path: Path, sql: str, *args) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql, args)
    db.close()


def _outside_file(tmp_path: Path, base_store) -> Path:
    """A genuine weights file of the same cell, outside the store."""
    src = Path(str(base_store[0]) + ".d") / "weights" / f"{base_store[1]}.safetensors"
    out = tmp_path / "elsewhere" / "w.safetensors"
    out.parent.mkdir()
    shutil.copy(src, out)
    return out


def _hostile(kind: str, tmp_path: Path, base_store, store: Path) -> str:
    if kind == "dotdot":
        return "../../etc/passwd"
    if kind == "absolute":
        return "/etc/passwd"
    if kind == "genuine_outside":
        return str(_outside_file(tmp_path, base_store))
    if kind == "genuine_outside_dotdot":
        return os.path.relpath(_outside_file(tmp_path, base_store), Path(str(store) + ".d"))
    link = Path(str(store) + ".d") / "weights" / "link.safetensors"
    link.symlink_to(_outside_file(tmp_path, base_store))
    return "weights/link.safetensors"


KINDS = ("dotdot", "absolute", "genuine_outside", "genuine_outside_dotdot", "symlink_out")


@pytest.mark.parametrize("kind", KINDS)
def test_a_row_whose_weights_lie_outside_the_store_is_one_error_line(tmp_path, base_store, kind):
    store, cid = _copy(base_store, tmp_path)
    rel = _hostile(kind, tmp_path, base_store, store)
    if kind.startswith("genuine"):  # the row even records the outside file's true sha256
        digest = hashlib.sha256((tmp_path / "elsewhere" / "w.safetensors").read_bytes()).hexdigest()
        _set(store, "UPDATE cells SET weights = ?, sha256 = ?", rel, digest)
    else:
        _set(store, "UPDATE cells SET weights = ?", rel)
    with pytest.raises(StoreError, match="outside the store's folder") as err:
        resdyn.load_cell(store, cid)
    assert "\n" not in str(err.value) and "resdyn status --verify" in str(err.value)
    res = CliRunner().invoke(main, ["bound", str(store), cid])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: store {store}"), res.output
    assert cid in lines[0] and "outside the store's folder" in lines[0]
    verify = CliRunner().invoke(main, ["status", str(store), "--verify"])
    assert verify.exit_code == 1 and "is outside" in verify.output


def test_a_weights_file_whose_sha256_differs_from_the_row_is_refused(tmp_path, base_store):
    store, cid = _copy(base_store, tmp_path)
    wfile = Path(str(store) + ".d") / "weights" / f"{cid}.safetensors"
    model = build_model(**{"family": "resnet", "in_dim": 2, "out_dim": 2, "width": 4, "depth": 2})
    params = resdyn.load_cell(base_store[0], cid).params
    save_params(wfile, model, {k: v[0] * 2 for k, v in params.items()})  # valid file, other numbers
    with pytest.raises(StoreError, match=r"has sha256 [0-9a-f]{64}, the row records"):
        resdyn.load_cell(store, cid)


def test_a_re_signed_weights_file_with_the_wrong_shapes_is_refused(tmp_path, base_store):
    store, cid = _copy(base_store, tmp_path)
    wfile = Path(str(store) + ".d") / "weights" / f"{cid}.safetensors"
    model = build_model(**{"family": "resnet", "in_dim": 2, "out_dim": 2, "width": 4, "depth": 2})
    params = resdyn.load_cell(base_store[0], cid).params
    save_params(wfile, model, {k: v[0][..., :1] for k, v in params.items()})
    _set(store, "UPDATE cells SET sha256 = ?", hashlib.sha256(wfile.read_bytes()).hexdigest())
    with pytest.raises(StoreError, match=r"holds [A-Za-z] of shape \(.*\) and dtype .*, not shape") as err:
        resdyn.load_cell(store, cid)
    assert "\n" not in str(err.value)
    res = CliRunner().invoke(main, ["bound", str(store), cid])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output


def test_a_genuine_row_still_loads_and_bounds(tmp_path, base_store):
    store, cid = _copy(base_store, tmp_path)
    cell = resdyn.load_cell(store, cid)
    assert cell.params["A"].shape == (1, 4, 2)
    res = CliRunner().invoke(main, ["bound", str(store), cid])
    assert res.exit_code == 0 and "test_error_bound" in res.output, res.output
    assert torch.isfinite(cell.module()(torch.zeros(3, 2))).all()

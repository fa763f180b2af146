"""The runner's provenance hook: what the native kernels report about a group reaches each of its
rows under "native", the usage counters reset before the group trains."""

from __future__ import annotations

import shutil

import pytest

import resdyn.models.native as native
from helpers import one_cell_spec
from resdyn.sweeps import Store, parse_spec, run_sweep


def test_native_provenance_of_each_group_is_stored_with_its_rows(tmp_path, monkeypatch):
    events: list[str] = []
    groups = iter([{"kernel": "first"}, {"kernel": "second"}])

    def reset_usage() -> None:
        events.append("reset")

    def provenance() -> dict:
        events.append("report")
        return next(groups)

    monkeypatch.setattr(native, "reset_usage", reset_usage)
    monkeypatch.setattr(native, "provenance", provenance)
    raw = one_cell_spec("prov", 3)
    raw["sweep"]["seed"] = [0, 1]
    raw["run"] = {"group_size": 1}  # two groups of one cell
    spec = parse_spec(raw)
    assert run_sweep(spec, tmp_path / "s.sqlite").trained == 2
    assert events == ["reset", "report", "reset", "report"]
    with Store(tmp_path / "s.sqlite", create=False) as st:
        got = sorted(r.provenance["native"]["kernel"] for r in st.records())
        assert all("torch" in r.provenance for r in st.records())  # the run's provenance kept
    assert got == ["first", "second"]


def test_a_real_run_records_whether_the_kernel_ran(tmp_path, monkeypatch):
    # tanh runs through the kernel (float32, width 4, where a C compiler exists); gelu has no
    # kernel and takes the torch path.
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler: the kernel cannot run here")
    monkeypatch.delenv("RESDYN_NATIVE", raising=False)
    ran = {}
    for act in ("tanh", "gelu"):
        raw = one_cell_spec(f"prov-{act}", 3)
        raw["model"]["activation"] = act
        run_sweep(parse_spec(raw), tmp_path / f"{act}.sqlite")
        with Store(tmp_path / f"{act}.sqlite", create=False) as st:
            (rec,) = st.records()
        ran[act] = rec.provenance["native"]["native_kernel"]
        assert rec.provenance["native"]["enabled"] is True
    assert ran == {"tanh": True, "gelu": False}

"""scripts/explore_prior_schedule.py's summary: the log KL ratios of each variant, by hand, and a
cell given twice refused."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "explore_prior_schedule.py"


@pytest.fixture()
def explore():
    spec = importlib.util.spec_from_file_location("explore_prior_schedule", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(variant: str, kls: dict[tuple[int, int], float]) -> list[dict]:
    return [{"variant": variant, "seed": s, "L": L, "kl": kl, "certificate": 0.01 * L ** 0.5}
            for (s, L), kl in kls.items()]


def test_summary_gives_each_variants_log_ratios(explore, tmp_path, capsys):
    rows = _rows("cosine", {(0, 16): 0.2, (0, 256): 0.4, (1, 16): 0.5, (1, 256): 0.25, (2, 16): 0.3})
    rows += _rows("constant", {(0, 16): 1.0, (0, 256): 3.0, (1, 16): 1.0, (1, 256): 1.0})
    out = tmp_path / "rows.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    explore.summary([out])
    lines = capsys.readouterr().out.splitlines()
    constant, cosine = lines
    # Seed 2 has no L = 256 cell: left out. Ratios 2 and 1/2: mean log 0, SD sqrt(2) ln 2.
    assert cosine.startswith("cosine: 2 seeds; KL(256) / KL(16) 2.00, 0.50; mean log 0.000, ")
    assert f"SD {math.sqrt(2) * math.log(2):.3f}" in cosine
    assert f"mean log {math.log(3) / 2:.3f}, SD {math.log(3) / math.sqrt(2):.3f}" in constant
    assert "certificate ratios 4.000, 4.000" in constant


def test_summary_refuses_a_cell_given_twice(explore, tmp_path):
    rows = _rows("cosine", {(0, 16): 0.2, (0, 256): 0.4})
    out = tmp_path / "rows.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]))
    with pytest.raises(SystemExit, match="seed 0, L = 16 appears twice"):
        explore.summary([out])

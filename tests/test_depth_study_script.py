"""scripts/depth_certificates.py's continued recipe: a deeper rung's prior mean starts from the
shallower one, deepened, and the claims of a sequential recipe are tested at 6 alpha / (pi^2 k^2)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "depth_certificates.py"


@pytest.fixture()
def study(monkeypatch):
    spec = importlib.util.spec_from_file_location("depth_certificates", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # A small plan: 200 two-spirals points, width 4, 30 prior-mean steps, 20 posterior steps.
    monkeypatch.setattr(mod, "PLANS", {"two_spirals": (200, 4, 30, 16)})
    monkeypatch.setattr(mod, "POSTERIOR_STEPS", 20)
    monkeypatch.setattr(mod, "ROUNDS", 1)
    monkeypatch.setattr(mod, "TEST_ROUNDS", 1)
    return mod


def test_a_continued_rung_starts_from_the_deepened_shallower_prior_mean(study, monkeypatch, tmp_path):
    monkeypatch.setattr(study, "CONTINUED", {3: (0, 1e-2)})  # no refinement: the start is the mean
    rows4, mean4 = study.cell("two_spirals", 0, 4, False, ("brownian",), 3)
    assert rows4[0]["continued_from"] is None and rows4[0]["attempts"] == 15
    saved = tmp_path / "L4.pt"
    torch.save(mean4, saved)
    rows16, mean16 = study.cell("two_spirals", 0, 16, False, ("brownian",), 3, saved)
    assert rows16[0]["continued_from"] == 4 and rows16[0]["L"] == 16
    model4 = study.ResNet(in_dim=2, out_dim=2, width=4, depth=4, activation="tanh")
    _, expected = model4.deepened(mean4, 16)
    for k in expected:
        assert torch.equal(mean16[k], expected[k]), k
    # The rung's prior-mean rate is CONTINUED's, the shallowest rung's PRIOR_LR.
    rates = []
    real = study.certify_sample

    def spy(model, start, base, idx, seed, lr, *rest):
        rates.append(lr)
        return real(model, start, base, idx, seed, lr, *rest)

    monkeypatch.setattr(study, "CONTINUED", {3: (0, 3e-3)})
    monkeypatch.setattr(study, "certify_sample", spy)
    study.cell("two_spirals", 0, 16, False, ("brownian",), 3, saved)
    study.cell("two_spirals", 0, 4, False, ("brownian",), 3)
    assert rates == [3e-3, study.PRIOR_LR]
    # A continued rung without the rung above it is refused, not trained from scratch.
    with pytest.raises(ValueError, match="pass its saved prior mean"):
        study.cell("two_spirals", 0, 16, False, ("brownian",), 3)
    # Recipe 2 at L = 16 trains its own prior mean from the initialisation: a different one.
    _, own = study.cell("two_spirals", 0, 16, False, ("brownian",), 2)
    assert not torch.equal(own["W"], mean16["W"])


def test_sequential_recipes_test_the_kth_look_at_its_share_of_alpha(study):
    assert study.level("two_spirals", 3) == pytest.approx(6 * 0.05 / (math.pi**2 * 16))
    assert study.level("two_spirals", 2) == pytest.approx(0.05 / 3)  # alpha / looks
    assert study.level("mnist", 3) == pytest.approx(6 * 0.05 / math.pi**2)  # a first look

"""The mean-field KL-ball number on trained networks is a plug-in estimate, labelled as such."""

from __future__ import annotations

import torch

from resdyn.data.base import Dataset
from resdyn.data.synthetic import two_spirals
from resdyn.models import init_params
from resdyn.models.meanfield import MeanFieldResNet
from resdyn.sweeps.measures import MeasureContext, get_measure
from resdyn.training import TrainConfig


def test_plugin_measure_reports_raw_and_clipped_radii_under_its_own_name():
    x, y = two_spirals(96, seed=1)
    data = Dataset("two_spirals", x[:64], y[:64], x[64:], y[64:], 2)
    m = MeanFieldResNet(in_dim=2, depth=2, width=64, predictor_width=64)
    p = init_params(m, [0, 1, 2, 3], torch.float64)
    idx = [torch.arange(32)] * 4
    ctx = MeasureContext(m, p, data, idx, TrainConfig(), {}, [0, 1, 2, 3], {})
    out = get_measure("meanfield_kl_plugin")(ctx)
    assert "plugin" in out and not any(k.startswith("bound") for k in out)
    for r in ("r1", "r2"):
        assert torch.equal(out[f"plugin.{r}"], out[f"plugin.{r}_raw"].clamp_min(0.0))
    neg = (out["plugin.r1_raw"] < 0).double() + (out["plugin.r2_raw"] < 0).double()
    assert torch.equal(out["plugin.clipped"], neg)
    # at initialisation the null-corrected estimates scatter around 0: some are clipped
    assert float(out["plugin.clipped"].sum()) >= 1

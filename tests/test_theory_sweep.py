"""The assembled test-error bound against measured test error over small sample-size sweeps
(two spirals and digits; S doubling, two seeds), each grid trained as one batched group."""

import math

import pytest
import torch

from resdyn.analysis.fits import fit_loglog
from resdyn.data import load, subsample
from resdyn.models import ResNet, init_params
from resdyn.sweeps.measures import BOUND_MEASURES as MEASURES
from resdyn.sweeps.measures import MeasureContext
from resdyn.training import TrainConfig, train


def _sweep(data, model, sizes, seeds, steps, lr):
    cells = [(S, s) for S in sizes for s in seeds]
    idx = [subsample(data, S, s) for S, s in cells]
    cell_seeds = [1000 * S + s for S, s in cells]
    params = init_params(model, cell_seeds)
    cfg = TrainConfig(steps=steps)
    res = train(model, params, data, idx, lr=lr, config=cfg, seeds=cell_seeds)
    ctx = MeasureContext(model, res.params, data, idx, cfg, res.metrics, cell_seeds, {"delta": 0.05})
    return cells, res.metrics, MEASURES["test_error_bound"](ctx), MEASURES["path_norm_bound"](ctx)


def _report(name, cells, metrics, bound, pn, capsys):
    test_err = 1.0 - metrics["test_acc"]
    gap = metrics["train_acc"] - metrics["test_acc"]
    lines = []
    for e, (S, s) in enumerate(cells):
        g = float(gap[e])
        ratio = f"{float(bound['test_error_bound'][e]) / g:9.1f}" if g > 0 else "   (gap<=0)"
        fam = ("path_norm", "spectral", "marion")[int(bound["test_error_bound.family"][e])]
        lines.append(f"S={S:4d} seed={s}: test err {float(test_err[e]):.3f} gap {g:+.3f} "
                     f"bound {float(bound['test_error_bound'][e]):.3f} ({fam}; margin "
                     f"{float(bound['test_error_bound.margin_loss'][e]):.3f} + complexity "
                     f"{float(bound['test_error_bound.complexity'][e]):.3f} + conf "
                     f"{float(bound['test_error_bound.confidence'][e]):.3f}) bound/gap {ratio}; "
                     f"path-norm Rad {float(pn['path_norm_bound'][e]):.3g}")
    fit = fit_loglog([S for S, _ in cells], bound["test_error_bound"].numpy(),
                     clusters=[s for _, s in cells])
    with capsys.disabled():
        print(f"\n[{name}] " + f"\n[{name}] ".join(lines))
        print(f"[{name}] slope of the bound in S (per-seed slopes): {fit.slope:.3f} "
              f"CI {fit.ci95[0]:.3f}..{fit.ci95[1]:.3f}")
    assert torch.all(bound["test_error_bound"] >= test_err.to(torch.float64))
    _assembled(bound)


def _assembled(bound) -> None:
    """The bound is finite, its terms add up to it, and the complexity term is paid (> 0): a
    bound that dropped a term would still be above these test errors (every bound here is > 1)."""
    total = bound["test_error_bound"]
    parts = (bound["test_error_bound.margin_loss"] + bound["test_error_bound.complexity"]
             + bound["test_error_bound.confidence"])
    assert torch.all(torch.isfinite(total))
    assert torch.allclose(total, parts, rtol=1e-12, atol=0)
    assert torch.all(bound["test_error_bound.complexity"] > 0)
    margin = bound["test_error_bound.margin_loss"]
    assert torch.all((margin >= 0) & (margin <= 1))


def test_two_spirals_sweep_bound_above_test_error(capsys):
    data = load("two_spirals")
    model = ResNet(in_dim=2, out_dim=2, width=8, depth=4, activation="relu")
    cells, metrics, bound, pn = _sweep(data, model, [32, 64, 128, 256, 512], [0, 1], 300, 0.01)
    _report("two_spirals", cells, metrics, bound, pn, capsys)


def test_digits_sweep_bound_above_test_error(capsys):
    data = load("digits")
    model = ResNet(in_dim=data.in_dim, out_dim=data.num_classes, width=16, depth=4,
                   activation="soft_threshold", tau=0.1)
    cells, metrics, bound, pn = _sweep(data, model, [64, 128, 256, 512], [0, 1], 200, 0.01)
    _report("digits", cells, metrics, bound, pn, capsys)
    assert math.isfinite(float(pn["path_norm_bound"][0]))


@pytest.mark.parametrize("activation", ["tanh"])
def test_default_activation_gets_a_finite_bound(activation):
    data = load("two_spirals")
    model = ResNet(in_dim=2, out_dim=2, width=8, depth=2, activation=activation)
    _, metrics, bound, pn = _sweep(data, model, [64], [0], 50, 0.01)
    assert torch.isnan(pn["path_norm_bound"]).all()  # tanh has no relu expansion
    assert float(bound["test_error_bound"][0]) >= 1.0 - float(metrics["test_acc"][0])
    _assembled(bound)


def test_a_bound_measure_with_its_own_options_is_not_served_another_ones_cache():
    """Two bound measures of one cell with different delta: test_error_bound{delta = 0.5} is the
    same beside path_norm_bound{delta = 0.01} as alone (the terms are cached per option set)."""
    from resdyn.sweeps import expand, parse_spec
    from resdyn.sweeps.runner import train_group

    def run(measures: dict) -> dict:
        spec = parse_spec({"name": "b", "data": {"name": "two_spirals"},
                           "model": {"family": "resnet", "width": 4, "depth": 2},
                           "train": {"steps": 20, "lr": 1e-2}, "sweep": {"sample_size": [64], "seed": [0]},
                           "measures": measures})
        return train_group(expand(spec))[0].measures

    alone = run({"test_error_bound": {"delta": 0.5}})
    both = run({"path_norm_bound": {"delta": 0.01}, "test_error_bound": {"delta": 0.5}})
    for key in ("test_error_bound", "test_error_bound.confidence"):
        assert both[key] == alone[key]
    other = run({"test_error_bound": {"delta": 0.01}})
    assert other["test_error_bound.confidence"] > alone["test_error_bound.confidence"]

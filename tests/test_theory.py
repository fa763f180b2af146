"""Bounds of docs/theory.md against cases whose true value is known or estimated from below."""

import itertools
import math

import numpy as np
import pytest
import torch

from resdyn.analysis.fits import fit_loglog
from resdyn.data.base import Dataset
from resdyn.models import ODEResNet, ResNet, init_params
from resdyn.models.paths import SmoothPath
from resdyn.sweeps.measures import BOUND_MEASURES as MEASURES
from resdyn.sweeps.measures import MeasureContext
from resdyn.theory.bounds import bound_terms, margins, ramp_loss
from resdyn.theory.covering import (
    dudley,
    marion_levels,
    marion_rademacher,
    spectral_capacity,
    spectral_levels,
)
from resdyn.theory.pathnorm import continuous_path_norm, flow_path_norm, path_norm_rademacher, path_norm_state
from resdyn.theory.rademacher import (
    exact_linear_rademacher,
    frobenius_member,
    path_norm_member,
    spectral_member,
)
from resdyn.training import TrainConfig
from resdyn.training.rademacher import mc_rademacher

SQRT2 = math.sqrt(2.0)


def _sq(x):
    return (x.to(torch.float64) ** 2).sum(-1) + 1.0


@pytest.mark.parametrize("S", [4, 8, 12, 16])
def test_depth0_bound_vs_exact_rademacher(S, capsys):
    """Depth-0 class {v . x~ : ||v|| <= Q}: exact Rad by all 2^S signs; bound / exact in [1, sqrt 2]
    (Jensen above, Szarek's optimal Khintchine-Kahane constant 1/sqrt 2 below)."""
    ratios = []
    for trial in range(5):
        g = torch.Generator().manual_seed(100 * S + trial)
        x = torch.randn(S, 3, generator=g, dtype=torch.float64) * (1 + trial)
        exact = exact_linear_rademacher(x, Q=2.5)
        bound = float(path_norm_rademacher(2.5, _sq(x), residual=False))
        ratios.append(bound / exact)
    with capsys.disabled():
        print(f"\n[depth0] S={S}: bound/exact in [{min(ratios):.4f}, {max(ratios):.4f}]")
    assert all(1.0 - 1e-12 <= r <= SQRT2 for r in ratios)


def test_depth0_class_is_the_path_norm_ball():
    """A depth-L ResNet with V = 0 is a depth-0 network whose path norm is the norm of its v."""
    m = ResNet(in_dim=3, out_dim=1, width=4, depth=2, activation="relu")
    p = init_params(m, [1], torch.float64)
    p["V"] = torch.zeros_like(p["V"])
    v = (p["R"][0] @ torch.cat([p["A"][0], p["c"][0][:, None]], 1))[0]
    P = float(path_norm_state(m, p).P[0])
    assert float(v.norm() + p["r"][0].abs()[0]) - 1e-12 <= P
    # and the single-unit embedding (m = 1) attains it
    m1 = ResNet(in_dim=3, out_dim=1, width=1, depth=1, activation="relu")
    p1 = init_params(m1, [2], torch.float64)
    p1["V"] = torch.zeros_like(p1["V"])
    p1["r"] = torch.zeros_like(p1["r"])
    v1 = p1["R"][0, 0, 0] * torch.cat([p1["A"][0, 0], p1["c"][0]])
    assert float(path_norm_state(m1, p1).P[0]) == pytest.approx(float(v1.norm()))


def _tiny(act, seed, width, tied=False):
    return ResNet(in_dim=2, out_dim=1, width=width, hidden=width, depth=1, activation=act, tau=0.3,
                  tied=tied, init_scale=1.0)


def test_path_norm_rademacher_by_hand():
    """(Q / S)(sqrt(sum ||x~||^2) + (c - 1) sqrt(sum_A ||x~||^2)), c = kappa / (kappa - 2)
    (docs/theory.md, Thm 2.1), on squared norms 1, 4, 4 (S = 3, sqrt of the sum 3)."""
    sq = torch.tensor([1.0, 4.0, 4.0], dtype=torch.float64)
    # kappa = 4: c = 2, every sample active: Q c 3 / S = 2 * 2 * 3 / 3
    assert float(path_norm_rademacher(2.0, sq)) == pytest.approx(4.0, rel=1e-15)
    # kappa = 6: c = 3/2
    assert float(path_norm_rademacher(2.0, sq, kappa=6.0)) == pytest.approx(3.0, rel=1e-15)
    # only the last two active: (2 / 3)(3 + (2 - 1) sqrt 8)
    active = torch.tensor([False, True, True])
    assert float(path_norm_rademacher(2.0, sq, active=active)) == pytest.approx(
        (2 / 3) * (3 + math.sqrt(8)), rel=1e-15)
    assert float(path_norm_rademacher(2.0, sq, residual=False)) == pytest.approx(2.0, rel=1e-15)
    with pytest.raises(ValueError):
        path_norm_rademacher(2.0, sq, kappa=2.0)


def test_every_complexity_bound_above_monte_carlo(capsys):
    """Tiny networks (one residual step, width <= 4), S = 10: each bound >= MC - 3 se; the path-norm
    bound is within a factor 50 of its MC estimate on at least one case."""
    best_ratio = math.inf
    lines = []
    for case, (act, width) in enumerate([("relu", 2), ("relu", 4), ("soft_threshold", 3),
                                         ("shifted_relu", 4)]):
        g = torch.Generator().manual_seed(case)
        S = 10
        x = torch.randn(S, 2, generator=g, dtype=torch.float64)
        sq = _sq(x)
        m = _tiny(act, case, width)
        p = init_params(m, [case + 7], torch.float64)
        # path-norm class at the network's own level
        Q = float(path_norm_state(m, p).P[0])
        mc = mc_rademacher(m, x, path_norm_member(m, Q), n_signs=24, restarts=2, steps=150, seed=case)
        pn = float(path_norm_rademacher(Q, sq))
        assert pn >= mc.mean - 3 * mc.stderr
        best_ratio = min(best_ratio, pn / mc.mean)
        # spectral class at its levels
        s, b, dims = spectral_levels(m, p)
        Gam, radius = spectral_capacity(m, s, b, dims, sq.sum().sqrt().reshape(1))
        sb = float(dudley(Gam, radius, S)[0])
        mcs = mc_rademacher(m, x, spectral_member(m, s[0], b[0]), n_signs=24, restarts=2, steps=150,
                            seed=case)
        assert sb >= mcs.mean - 3 * mcs.stderr
        # Lipschitz-in-depth class at its levels, estimated with tied members (K = 0)
        lv = marion_levels(m, p)
        mb = float(marion_rademacher(m, lv, sq.max().sqrt().reshape(1), S)[0][0])
        mt = _tiny(act, case, width, tied=True)
        mcm = mc_rademacher(mt, x, frobenius_member(mt, {k: float(v[0]) for k, v in lv.items()}),
                            n_signs=24, restarts=2, steps=150, seed=case)
        assert mb >= mcm.mean - 3 * mcm.stderr
        lines.append(f"{act}/w{width}: path {pn:.3f} vs MC {mc.mean:.3f}+-{mc.stderr:.3f} "
                     f"(x{pn / mc.mean:.2f}); spectral {sb:.3f} vs {mcs.mean:.3f}+-{mcs.stderr:.3f}; "
                     f"marion {mb:.3g} vs {mcm.mean:.3f}+-{mcm.stderr:.3f}")
    with capsys.disabled():
        print("\n[MC] " + "\n[MC] ".join(lines) + f"\n[MC] tightest bound / MC = {best_ratio:.2f}")
    assert best_ratio <= 50


def _smooth_params(L, scale, seed=0):
    """A ResNet of depth L whose layer l samples one fixed smooth path at t_l = l h, and the path."""
    m = ResNet(in_dim=2, out_dim=2, width=3, hidden=3, depth=L, activation="soft_threshold", tau=0.1)
    g = torch.Generator().manual_seed(seed)
    paths = {n: SmoothPath.sample(g, shape, scale, m.horizon, modes=3)
             for n, shape in (("W", (3, 3)), ("b", (3,)), ("V", (3, 3)))}
    io = init_params(m, [seed], torch.float64)
    io = {k: io[k] for k in ("A", "c", "R", "r")}
    t = m.layer_times()
    p = {**io, **{n: path(t).unsqueeze(0) for n, path in paths.items()}}
    return m, p, io, paths


def test_discrete_path_norm_converges_at_first_order(capsys):
    scale = 0.09
    _, _, io, paths = _smooth_params(4, scale)
    from resdyn.models.activations import get_activation

    act = get_activation("soft_threshold", tau=0.1)

    def theta(t):
        tt = torch.tensor([t], dtype=torch.float64)
        return {n: path(tt) for n, path in paths.items()}

    ref = float(continuous_path_norm(theta, io, act, 1.0, steps=8192)[0])
    Ls = [32, 64, 128, 256, 512, 1024]
    errs, last = [], None
    for L in Ls:
        m, p, _, _ = _smooth_params(L, scale)
        last = float(path_norm_state(m, p).P[0])
        errs.append(abs(math.log(last) - math.log(ref)))
    fit = fit_loglog(Ls, errs)
    # the spectral scale of the path times T: kappa A_act max_t || |V(t)| |W(t)| ||_2 * T
    ts = torch.linspace(0, 1, 201, dtype=torch.float64)
    spec = max(float(torch.linalg.matrix_norm(paths["V"](ts[i:i + 1])[0].abs()
                                              @ paths["W"](ts[i:i + 1])[0].abs(), ord=2))
               for i in range(201)) * 4.0 * 2.0
    rel = abs(last / ref - 1)
    with capsys.disabled():
        print(f"\n[flow] slope of |log P_h - log P| vs L: {fit.slope:.4f} (se {fit.stderr:.4f}); "
              f"errors {[f'{e:.2e}' for e in errs]}; spectral scale x T = {spec:.3f}; "
              f"rel. error at L=1024: {rel:.2e}")
    assert -1.1 <= fit.slope <= -0.9
    assert spec <= 1.0
    assert rel < 0.01


def test_flow_bound_dominates_discrete_and_linear_majorant_is_upper():
    m, p, _, _ = _smooth_params(16, 0.5)
    disc = float(path_norm_state(m, p).P[0])
    flow = float(flow_path_norm(m, p).P[0])
    assert flow >= disc  # (1 + x) <= e^x, entrywise for nonnegative matrices
    # ODEResNet with piecewise-linear theta: the majorant is above a fine RK4 solve of the same ODE
    om = ODEResNet(in_dim=2, out_dim=2, width=3, hidden=3, knots=4, interpolation="linear",
                   activation="relu")
    op = init_params(om, [3], torch.float64)
    maj = float(flow_path_norm(om, op, substeps=4).P[0])
    fine = float(flow_path_norm(om, op, substeps=64).P[0])
    from resdyn.theory.pathnorm import _layer, _names

    def theta(t):
        q = min(int(t / om.knot_step), om.knots - 1)
        s = (t - q * om.knot_step) / om.knot_step
        lft, rgt = _layer(op, _names(om), q), _layer(op, _names(om), q + 1)
        return {n: lft[n] + s * (rgt[n] - lft[n]) for n in lft}

    ref = float(continuous_path_norm(theta, op, om.act, om.horizon, steps=4000)[0])
    assert maj >= fine >= ref * (1 - 1e-9)
    assert fine <= ref * 1.2  # the majorant tightens as the pieces shrink


def _dead_case(tau, scale=0.05, v_scale=1.0):
    m = ResNet(in_dim=2, out_dim=2, width=4, depth=2, activation="soft_threshold", tau=tau)
    p = init_params(m, [0], torch.float64)
    for n in ("W", "b", "A"):
        p[n] = p[n] * scale
    p["V"] = p["V"] * v_scale
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    return m, p, x, y


def test_dead_zone_term(capsys):
    # no dead zone: zero (tanh: not even a band; relu: its dead zone is not a band around 0)
    for act in ("tanh", "gelu", "relu"):
        m = ResNet(in_dim=2, out_dim=2, width=4, depth=2, activation=act)
        p = init_params(m, [0], torch.float64)
        x = torch.randn(32, 2, dtype=torch.float64)
        assert bound_terms(m, p, x, (x[:, 0] > 0).long())["dead_zone"] == 0.0
    taus = [0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
    vals, fracs = [], []
    for tau in taus:
        m, p, x, y = _dead_case(tau)
        t = bound_terms(m, p, x, y)
        vals.append(t["dead_zone"])
        fracs.append(t["dead_zone.dead_fraction"])
        assert 0.0 <= t["dead_zone"] <= t["path_norm_bound"]
        assert t["dead_zone.refined"] == pytest.approx(t["path_norm_bound"] - t["dead_zone"])
        # Removing dead samples never takes the bound below its depth-0 reduction.
        assert t["dead_zone.refined"] >= t["path_norm_bound.depth0"] * (1 - 1e-12)
    with capsys.disabled():
        print("\n[dead zone] tau: term (dead fraction) " +
              ", ".join(f"{a}: {v:.4g} ({f:.2f})" for a, v, f in zip(taus, vals, fracs, strict=True)))
    assert vals[0] == 0.0
    assert all(b >= a for a, b in itertools.pairwise(vals))
    assert vals[-1] > 0 and fracs[-1] > 0.4
    # with every sample dead the refined bound is the depth-0 value times Q: the residual part is gone
    m, p, x, y = _dead_case(5.0, v_scale=1e-3)
    t = bound_terms(m, p, x, y)
    assert t["dead_zone.dead_fraction"] == 1.0
    assert t["dead_zone.refined"] == pytest.approx(t["path_norm_bound.depth0"])


def test_margins_and_ramp():
    out = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0]])
    rho = margins(out, torch.tensor([0, 0]))
    assert rho.tolist() == [1.0, -3.0]
    assert margins(torch.tensor([[0.7], [0.2]]), torch.tensor([0, 1])).tolist() == pytest.approx([-0.7, 0.2])
    r = ramp_loss(torch.tensor([1.0, -3.0, 0.25]), torch.tensor([0.5, 2.0], dtype=torch.float32))
    assert r.tolist() == pytest.approx([(0 + 1 + 0.5) / 3, (0.5 + 1 + 0.875) / 3])


def test_measures_interface_and_model_isolation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    data = Dataset("toy", x[:150], y[:150], x[150:], y[150:], 2)
    m = ResNet(in_dim=2, out_dim=2, width=4, depth=3, activation="soft_threshold", tau=0.2)
    params = init_params(m, [0, 1, 2], torch.float64)
    idx = [torch.arange(0, 40), torch.arange(40, 100), torch.arange(100, 150)]
    ctx = MeasureContext(m, params, data, idx, TrainConfig(steps=1), {}, [0, 1, 2], {"delta": 0.1})
    res = {name: fn(ctx) for name, fn in MEASURES.items()}
    for name, terms in res.items():
        assert name in terms and all(v.shape == (3,) for v in terms.values())
    assert "test_error_bound.margin_loss" in res["test_error_bound"]
    # model 1 alone on its own sample gives the same numbers
    sub = {k: v[1:2] for k, v in params.items()}
    ctx1 = MeasureContext(m, sub, data, idx[1:2], TrainConfig(steps=1), {}, [1], {"delta": 0.1})
    one = MEASURES["test_error_bound"](ctx1)
    for k, v in one.items():
        assert float(v[0]) == pytest.approx(float(res["test_error_bound"][k][1]), nan_ok=True)
    with pytest.raises(ValueError, match="unknown bound option"):
        MEASURES["dead_zone"](MeasureContext(m, params, data, idx, TrainConfig(steps=1), {}, [0, 1, 2],
                                             {"gama": 1}))


def test_delta_and_grid_enter_confidence():
    m, p, x, y = _dead_case(0.1, scale=1.0)
    a = bound_terms(m, p, x, y, {"delta": 0.05, "families": ("path_norm",)})
    b = bound_terms(m, p, x, y, {"delta": 0.005, "families": ("path_norm",)})
    S = 64
    # confidence = 3 sqrt((ln(2/delta) + ln|grid|) / 2S): the difference of squares isolates ln 10
    d2 = (b["test_error_bound.confidence"] ** 2 - a["test_error_bound.confidence"] ** 2) * 2 * S / 9
    assert d2 == pytest.approx(math.log(10.0))
    assert np.isfinite(a["test_error_bound"])
    # The value itself (docs/theory.md): one family takes all of delta; the grid is 61 margins
    # times 61 levels of Q times, with a dead band (soft threshold), 61 levels of mu*.
    assert a["test_error_bound.confidence"] == pytest.approx(
        3 * math.sqrt((math.log(2 / 0.05) + 3 * math.log(61)) / (2 * S)), rel=1e-12)
    relu = ResNet(in_dim=2, out_dim=2, width=4, depth=2, activation="relu")
    r = bound_terms(relu, init_params(relu, [0], torch.float64), x, y,
                    {"delta": 0.05, "families": ("path_norm",)})
    assert r["test_error_bound.confidence"] == pytest.approx(
        3 * math.sqrt((math.log(2 / 0.05) + 2 * math.log(61)) / (2 * S)), rel=1e-12)  # no mu* grid


def test_cli_bound_prints_every_bound(tmp_path):
    from click.testing import CliRunner

    from resdyn.cli.main import main
    from resdyn.data import load, subsample
    from resdyn.models.io import save_params
    from resdyn.training import train

    data = load("two_spirals")
    m = ResNet(in_dim=2, out_dim=2, width=4, depth=2, activation="soft_threshold", tau=0.1)
    idx = subsample(data, 64, 3)
    res = train(m, init_params(m, [3]), data, [idx], lr=0.01, config=TrainConfig(steps=20))
    ck = tmp_path / "m.safetensors"
    save_params(ck, m, res.params)
    out = CliRunner().invoke(main, ["bound", str(ck), "--data", "two_spirals", "-S", "64", "--seed", "3"])
    assert out.exit_code == 0, out.output
    for name in ("path_norm_bound", "flow_bound", "dead_zone", "spectral_bound", "marion_bound",
                 "test_error_bound", "margin_loss", "confidence"):
        assert name in out.output
    x = data.prepare(data.x[idx], torch.float64, "cpu")
    ref = bound_terms(m, {k: v[:1] for k, v in res.params.items()}, x, data.y[idx])
    assert f"{ref['test_error_bound']:.6g}" in out.output
    bad = CliRunner().invoke(main, ["bound", str(ck), "--data", "nope", "-S", "64"])
    assert bad.exit_code != 0 and "unknown data set" in bad.output

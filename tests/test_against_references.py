"""Models and optimisers against references written apart from them: torch.optim.Adam, a textbook
L-BFGS two-loop recursion (Nocedal and Wright, Alg. 7.4), integrals by hand, and the promised
moments of the smooth random paths. Each assertion failed under a small bug injected into the
code under test (no bias correction, decay applied twice, the L-BFGS scaling, the knot
interpolation's scale, the path's variance, the penalty's quadrature weight, one permutation
reused every epoch) while the suite passed. (ConvResNet's h = T / L: tests/test_models.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resdyn.models import ODEResNet, ResNet, init_params
from resdyn.models.knot_resnet import KnotResNet
from resdyn.models.paths import SmoothPath
from resdyn.models.volterra import SmoothKernel
from resdyn.training.control import continuous_penalty
from resdyn.training.engine import _Minibatches
from resdyn.training.optim import LBFGS, SGD, Adam, StepContext

F64 = torch.float64


def _context(lrs: list[float], t: int) -> StepContext:
    return StepContext(torch.tensor(lrs, dtype=F64), t, torch.ones(len(lrs), dtype=torch.bool), {})


@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_adam_is_torch_adam_per_model(decay):
    """20 steps of random gradients, two models with their own rates: torch.optim.Adam's iterates
    (same L2-style weight decay), one model at a time."""
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(2, 5, generator=gen, dtype=F64)
    grads = [torch.randn(2, 5, generator=gen, dtype=F64) for _ in range(20)]
    lrs = [1e-2, 3e-3]
    opt = Adam(betas=(0.9, 0.999), eps=1e-8, weight_decay=decay)
    p = {"w": p0.clone()}
    state = opt.init_state(p)
    for t, g in enumerate(grads, 1):
        p, state = opt.step(p, {"w": g}, state, _context(lrs, t))
    for e in range(2):
        w = torch.nn.Parameter(p0[e].clone())
        ref = torch.optim.Adam([w], lr=lrs[e], betas=(0.9, 0.999), eps=1e-8, weight_decay=decay)
        for g in grads:
            w.grad = g[e].clone()
            ref.step()
        assert torch.allclose(p["w"][e], w.detach(), rtol=0, atol=1e-12)


def test_sgd_weight_decay_one_step_by_hand():
    """p - lr (g + wd p): 1 - 0.1 (0.5 + 0.1 * 1) = 0.94; the flat path from 0.8: 0.742."""
    opt = SGD(weight_decay=0.1)
    q, _ = opt.step({"w": torch.tensor([[1.0]], dtype=F64)}, {"w": torch.tensor([[0.5]], dtype=F64)}, {},
                    _context([0.1], 1))
    assert q["w"].item() == pytest.approx(0.94, abs=1e-15)
    flat, _ = opt.flat_step(torch.tensor([0.8], dtype=F64), torch.tensor([0.5], dtype=F64), {},
                            torch.tensor([0.1], dtype=F64), torch.tensor([True]), 1)
    assert flat.item() == pytest.approx(0.742, abs=1e-15)


def _textbook_lbfgs(hess: np.ndarray, x: np.ndarray, steps: int, m: int = 5) -> np.ndarray:
    """Nocedal and Wright, Alg. 7.4, unit steps on 1/2 x' diag(hess) x: H_0 = gamma I with
    gamma = s'y / y'y from the newest pair (the first step: min(1, 1 / |g|_1) times -g)."""
    S, Y, xp, gp = [], [], None, None
    for _ in range(steps):
        g = hess * x
        if xp is not None:
            s, y = x - xp, g - gp
            if s @ y > 1e-10:
                S, Y = [*S, s][-m:], [*Y, y][-m:]
        q, alphas = g.copy(), []
        for s, y in reversed(list(zip(S, Y, strict=True))):
            a = (s @ q) / (y @ s)
            alphas.append(a)
            q -= a * y
        r = ((S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) if S else min(1.0, 1.0 / np.abs(g).sum())) * q
        for (s, y), a in zip(zip(S, Y, strict=True), reversed(alphas), strict=True):
            r += s * (a - (y @ r) / (y @ s))
        d = -r if g @ -r < 0 else -g
        xp, gp, x = x, g, x + d
    return x


def test_lbfgs_matches_the_textbook_two_loop_recursion_on_an_ill_conditioned_quadratic():
    # On diag(1, 10, 100) the scaling gamma = s'y / y'y is not 1, unlike on the identity.
    hess = np.array([1.0, 10.0, 100.0])
    want = _textbook_lbfgs(hess, np.ones(3), 3)
    assert want == pytest.approx([0.957916317, 0.621867616, -0.059899085], abs=1e-9)
    x = {"w": torch.ones(1, 3, dtype=F64)}
    opt = LBFGS(history=5, line_search=None)
    state = opt.init_state(x)
    for t in range(1, 4):
        x, state = opt.step(x, {"w": torch.tensor(hess) * x["w"]}, state, _context([1.0], t))
    assert x["w"][0].numpy() == pytest.approx(want, abs=1e-12)


def test_linear_knot_ode_with_euler_steps_is_the_knot_resnet_of_that_depth():
    """P = 3 knots, r = 4 Euler steps per knot, T = 1.5: the same network as KnotResNet(linear)
    over ResNet(depth = P r) on the same parameters."""
    P, r = 3, 4
    ode = ODEResNet(in_dim=2, out_dim=2, width=4, knots=P, interpolation="linear", method="euler",
                    steps_per_knot=r, horizon=1.5)
    knot = KnotResNet(ResNet(in_dim=2, out_dim=2, width=4, depth=P * r, horizon=1.5), knots=P,
                      interpolation="linear")
    q = init_params(ode, [0, 1], F64)
    x = torch.randn(2, 7, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ode.forward(q, x), knot.forward(q, x), rtol=0, atol=1e-12)


def test_smooth_paths_and_kernels_have_the_promised_mean_square():
    """(1/T) int theta(t)^2 dt, averaged over many independent entries, is std^2 (0.49 here;
    20,000 paths and 4,000 kernels: a few per cent of sampling error)."""
    path = SmoothPath.sample(torch.Generator().manual_seed(0), (20000,), 0.7, 2.0)
    t = (torch.arange(4000, dtype=F64) + 0.5) * 2.0 / 4000
    assert float(path(t).square().mean()) == pytest.approx(0.49, rel=0.03)
    kernel = SmoothKernel.sample(torch.Generator().manual_seed(0), (4000,), 0.7, 2.0)
    g = (torch.arange(100, dtype=F64) + 0.5) * 2.0 / 100
    tt, ss = torch.meshgrid(g, g, indexing="ij")
    assert float(kernel(tt.flatten(), ss.flatten()).square().mean()) == pytest.approx(0.49, rel=0.03)


def test_continuous_penalty_of_a_resnet_layout_by_hand():
    """N = 2 layers on T = 1, theta = (1, 3), alpha = beta = 1:
    int_0^1/2 (1 - s)(1 + 4 s)^2 ds + int_1/2^1 9 (1 - s) ds + int_0^1/2 16 (1 - s) ds
    = 35/24 + 9/8 + 6."""
    val = continuous_penalty(ResNet(width=1, depth=2, horizon=1.0, block="one_layer"),
                             torch.tensor([1.0, 3.0], dtype=F64).view(1, 2, 1), 1.0, 1.0).item()
    assert val == pytest.approx(35 / 24 + 9 / 8 + 6, abs=1e-12)


def test_each_epoch_of_minibatches_is_a_new_permutation_of_the_sample():
    mb = _Minibatches([torch.arange(64)], [0], 16)
    epochs = [torch.cat([mb.at(t)[0] for t in range(4 * k, 4 * k + 4)]) for k in range(3)]
    for ep in epochs:
        assert sorted(ep.tolist()) == list(range(64))
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])

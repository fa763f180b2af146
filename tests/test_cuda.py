"""The engine's invariants on a CUDA device (skipped without one).

On a GPU a model's numbers inside a group are not promised bitwise (kernels may pick other
algorithms for other batch shapes), so independence is checked to 1e-6; the flat update is
element-wise and checked bitwise; no step may synchronise with the host.
"""

import pytest
import torch

from resdyn.models import ResNet, init_params
from resdyn.training import LBFGS, Objective, TrainConfig, train
from resdyn.training.flat import FlatLayout
from resdyn.training.optim import Adam, StepContext

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")
SIZES, SEEDS = [64, 16, 100, 256], [11, 3, 5, 8]


def _idx(sizes, seeds):
    return [torch.randperm(2048, generator=torch.Generator().manual_seed(s))[:S]
            for s, S in zip(seeds, sizes, strict=True)]


def _on(p):
    return {k: v.to(CUDA) for k, v in p.items()}


@pytest.mark.parametrize("opt", [None, LBFGS(history=4)])
def test_model_in_a_group_matches_the_model_alone_to_1e6(spirals, opt):
    model = ResNet(width=8, depth=4)
    idx = _idx(SIZES, SEEDS)
    lr = torch.tensor([1e-2, 3e-3, 1e-2, 2e-2]) if opt is None else torch.ones(4)
    obj = Objective(penalty=lambda p: 1e-3 * sum(v.flatten(1).square().sum(1) for v in p.values()))
    cfg = TrainConfig(steps=200 if opt is None else 20)
    group = train(model, _on(init_params(model, SEEDS)), spirals, idx, lr=lr.to(CUDA), config=cfg,
                  seeds=SEEDS, objective=obj, optimizer=opt)
    for e in (0, 3):
        alone = train(model, _on(init_params(model, [SEEDS[e]])), spirals, [idx[e]],
                      lr=lr[e:e + 1].to(CUDA), config=cfg, seeds=[SEEDS[e]], objective=obj, optimizer=opt)
        for k in alone.params:
            assert torch.allclose(alone.params[k][0], group.params[k][e], atol=1e-6, rtol=0), k
    assert torch.all(group.state.loss_history[-1] < group.state.loss_history[0])


def test_a_nan_model_on_the_gpu_leaves_the_others_bitwise_alone(spirals):
    model = ResNet(width=8, depth=3)
    idx = _idx(SIZES, SEEDS)
    clean = _on(init_params(model, SEEDS))
    poisoned = {k: v.clone() for k, v in clean.items()}
    poisoned["W"][2, 1, 0, 0] = float("nan")
    a = train(model, clean, spirals, idx, lr=1e-2, config=TrainConfig(steps=50), seeds=SEEDS)
    b = train(model, poisoned, spirals, idx, lr=1e-2, config=TrainConfig(steps=50), seeds=SEEDS)
    for e in (0, 1, 3):
        for k in a.params:
            assert torch.equal(a.params[k][e], b.params[k][e]), k
    assert b.metrics["diverged_step"].tolist() == [-1, -1, 0, -1]


def test_no_training_step_synchronises_with_the_host(spirals):
    model = ResNet(width=8, depth=3)
    idx = _idx(SIZES, SEEDS)
    steps = 20

    def guard(step, state):
        # from step 1 on, any synchronising call inside a step raises
        torch.cuda.set_sync_debug_mode("error" if step < steps else "default")

    try:
        res = train(model, _on(init_params(model, SEEDS)), spirals, idx, lr=1e-2,
                    config=TrainConfig(steps=steps), seeds=SEEDS, hooks=[(1, guard)])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(res.state.loss_history).all()


def test_flat_update_on_the_gpu_is_bitwise_the_per_tensor_update():
    gen = torch.Generator().manual_seed(0)
    shapes = {"W": (4, 3, 8, 8), "b": (4, 3, 8), "R": (4, 2, 8)}
    params = {k: torch.randn(s, generator=gen).to(CUDA) for k, s in shapes.items()}
    lr = torch.tensor([1e-2, 3e-3, 1e-1, 2e-2], device=CUDA)
    opt, active = Adam(), torch.ones(4, dtype=torch.bool, device=CUDA)
    state = opt.init_state(params)
    flat = FlatLayout(list(params), params)
    x, slots, rate = flat.flatten(params), {s: flat.flatten(state, f"{s}.") for s in opt.slots}, \
        flat.rate(lr, {"W": 2.5})
    for t in range(1, 101):
        grads = {k: torch.randn(s, generator=gen).to(CUDA) for k, s in shapes.items()}
        params, state = opt.step(params, grads, state, StepContext(lr, t, active, {"W": 2.5}))
        x, slots = opt.flat_step(x, flat.flatten(grads), slots, rate, flat.per_element(active), t)
    for k, v in flat.views(x).items():
        assert torch.equal(v, params[k]), k

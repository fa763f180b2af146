"""The flat-buffer optimiser update is bitwise the per-tensor one."""

import pytest
import torch

from resdyn.training.flat import FlatLayout
from resdyn.training.optim import SGD, Adam, StepContext

SHAPES = {"A": (5, 16, 2), "c": (5, 16), "W": (5, 8, 16, 16), "b": (5, 8, 16), "R": (5, 2, 16)}


@pytest.mark.parametrize("opt", [Adam(), Adam(betas=(0.8, 0.99), weight_decay=1e-2),
                                 SGD(momentum=0.9, weight_decay=1e-3), SGD()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flat_update_is_bitwise_the_per_tensor_update_for_100_steps(opt, dtype):
    gen = torch.Generator().manual_seed(0)
    params = {k: torch.randn(s, generator=gen, dtype=dtype) for k, s in SHAPES.items()}
    lr = torch.tensor([1e-2, 3e-3, 1e-1, 2e-2, 5e-4], dtype=dtype)
    scales = {"W": 3.7, "R": 0.3}
    state = opt.init_state(params)
    flat = FlatLayout(list(params), params)
    x = flat.flatten(params)
    slots = {s: flat.flatten(state, f"{s}.") for s in opt.slots}
    rate = flat.rate(lr, scales)
    active = torch.ones(5, dtype=torch.bool)
    for t in range(1, 101):
        grads = {k: torch.randn(s, generator=gen, dtype=dtype) for k, s in SHAPES.items()}
        if t == 40:  # model 3 diverges: a NaN gradient freezes it in both paths
            grads["W"][3, 0, 0, 0] = float("nan")
            active = active.clone()
            active[3] = False
        g = flat.flatten(grads)
        ok = flat.per_model_all_finite(g)
        assert ok.tolist() == [not (t == 40 and e == 3) for e in range(5)]
        params, state = opt.step(params, grads, state, StepContext(lr, t, active, scales))
        x, slots = opt.flat_step(x, g, slots, rate, flat.per_element(active), t)
    views = flat.views(x)
    for k in params:
        assert torch.equal(views[k], params[k]), k
        for s in opt.slots:
            assert torch.equal(flat.views(slots[s], f"{s}.")[f"{s}.{k}"], state[f"{s}.{k}"]), (s, k)
    assert torch.isfinite(x).all()
    assert not torch.equal(views["W"][0], views["W"][0] * 0)  # something was trained

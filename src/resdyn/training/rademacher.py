"""Monte-Carlo lower estimate of an empirical Rademacher complexity, trained by the engine.

Rad_S(F) = E_eps sup_{f in F} (1/S) sum_i eps_i f(x_i). For each of ``n_signs`` sign vectors
eps (drawn from ``seed``), ``restarts`` scalar-output ResNets theta are trained at once (one model
axis) to maximise C(theta) = (1/S) sum_i eps_i f_{m(theta)}(x_i), where m = ``member`` maps any
parameters into the class F (``resdyn.theory.rademacher``: path-norm, spectral or Frobenius
members). Training is the engine with the per-sample loss 'correlation' (-eps_i f(x_i)) and the
member as the objective's ``sample`` hook, so the forward takes m(theta); Adam with the given rate.
The estimate for a sign vector is the largest C seen over all steps and restarts: every value is
attained by a member, so it is <= the supremum, and the mean over sign vectors is a lower estimate
of Rad_S(F), with its standard error.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data.base import Dataset
from ..models.base import init_params
from ..models.resnet import ResNet
from ..theory.rademacher import MCResult, Member
from .engine import TrainConfig, train
from .objective import Objective
from .optim import Adam

__all__ = ["mc_rademacher"]


def mc_rademacher(
    model: ResNet,
    x: Tensor,
    member: Member,
    n_signs: int = 32,
    restarts: int = 2,
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
) -> MCResult:
    """Monte-Carlo lower estimate of Rad_S of the class that ``member`` maps into (module
    docstring). ``model`` must have out_dim = 1 (the coordinate class Pi_1); its ``depth``
    counts stored layers (a tied model stores one). C is recorded at the parameters before each
    of ``steps`` + 1 updates (the initial ones included)."""
    if model.out_dim != 1:
        raise ValueError(f"mc_rademacher needs a scalar-output model (out_dim=1), got {model.out_dim}")
    for name, v in (("n_signs", n_signs), ("restarts", restarts), ("steps", steps)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    x = x.to(torch.float64).flatten(1)
    S = x.shape[0]
    g = torch.Generator().manual_seed(int(seed))
    eps = torch.randint(0, 2, (n_signs, S), generator=g)  # 1 -> +1, 0 -> -1
    E = n_signs * restarts
    params = init_params(model, [seed * 100003 + i for i in range(E)], torch.float64)
    # The pool holds one copy of the sample per sign vector, labelled by its signs; model e
    # (sign vector e // restarts) trains on its own copy.
    data = Dataset("rademacher", x.repeat(n_signs, 1), eps.flatten(), x[:0], eps[0, :0], 2)
    idx = [torch.arange(S) + (e // restarts) * S for e in range(E)]
    res = train(model, params, data, idx, lr=lr, config=TrainConfig(steps=steps + 1, chunk_size=S),
                seeds=[seed * 100003 + i for i in range(E)], evaluate_test=False,
                objective=Objective(loss="correlation", sample=lambda p, t, s: member(p)),
                optimizer=Adam())
    best = (-res.state.loss_history).amax(0)  # NaN where a model diverged, as a max would give
    values = best.view(n_signs, restarts).amax(-1)
    se = float(values.std(unbiased=True) / math.sqrt(n_signs)) if n_signs > 1 else float("nan")
    return MCResult(float(values.mean()), se, values)

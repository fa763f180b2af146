"""Training as optimal control: the regularised objective of a DNL network and its continuum limit
(docs/dnl.md, section 4; resdyn's formulation, a reconstruction, not the paper's).

Controls theta = (K, b) live on the pairs 0 <= j < k <= N of the depth grid, h = T / N; the readout
W = (R, r) is regularised separately; the embedding (A, c) is fixed (``frozen``). For data
(x_i, y_i), i = 1..n,

    J_N(theta, W) = (1/n) sum_i loss(g_W(z_N^(i)), y_i) + R_N(theta) + gamma (|R|^2 + |r|^2),
    R_N(theta)    = alpha h^2 sum_{j<k} |theta_{k,j}|^2
                  + beta ( sum_{j<k<N} |theta_{k+1,j} - theta_{k,j}|^2
                           + sum_{j+1<k} |theta_{k,j+1} - theta_{k,j}|^2 ),

a discrete H^1(Delta) norm (the differences inside the index triangle; |.| the Frobenius norm,
summed over K and b). Its continuum counterpart, for controls on the triangle Delta = {0 <= s <= t <= T},

    J(theta, W) = (1/n) sum_i loss(g_W(z^(i)(T)), y_i) + alpha ||theta||^2_{L^2(Delta)}
                  + beta ||grad_(t,s) theta||^2_{L^2(Delta)} + gamma (|R|^2 + |r|^2),

with z solving the Volterra equation (``resdyn.models.volterra``), is evaluated at the P1 extension
Pi theta_N of discrete controls: the norms exactly (``p1_norms``), the state equation by the
trapezoid rule on a fine grid. ``prolongate`` maps theta_N to theta_{2N} = Pi theta_N at the nodes
of grid 2N, the warm start of the deeper problem.

The ResNet baseline (``ResNet(block='one_layer')``, per-layer controls theta_j, j < N) is the DNL
restricted to theta_{k,j} = theta_j; R_N restricted to it is

    alpha h^2 sum_j (N - j) |theta_j|^2 + beta sum_{j <= N-2} (N - j - 1) |theta_{j+1} - theta_j|^2,

and its continuum counterpart alpha int_0^T (T - s) |theta(s)|^2 ds + beta int_0^T (T - s) |theta'(s)|^2 ds
(the H^1(Delta) norm of theta(t, s) = theta(s)), with theta the P1 interpolant of the nodes s_j = j h,
constant on [t_{N-1}, T].

Training: the engine (``resdyn.training.train``) with :func:`control_objective`: batched Adam on
all models of a group (per-model learning rates), then the engine's batched L-BFGS (each model its
own history and Armijo step, ``resdyn.training.optim.LBFGS``).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._checks import Interval, check_int, declare, validate
from ..data.base import Dataset
from ..models.base import Params
from ..models.blocks import embed, readout
from ..models.dnl import DNLNet, VolterraDNL
from ..models.resnet import ResNet
from ..models.volterra import march, p1_at_grid, p1_norms, pair_count, pair_index
from .engine import TrainConfig, train
from .losses import correct, per_sample_loss
from .objective import LOSS, Objective
from .optim import GRAD_TOL, HISTORY, LBFGS, Adam, Optimizer

__all__ = [
    "CONTROLS",
    "READOUT",
    "ControlConfig",
    "ControlResult",
    "ControlWeights",
    "can_prolong",
    "continuous_objective",
    "continuous_penalty",
    "control_diagnostics",
    "control_l2_distance",
    "control_objective",
    "controls_distance",
    "h1_penalty",
    "h1_penalty_layers",
    "h1_seminorm",
    "lift",
    "objective",
    "prolong_to",
    "prolongate",
    "train_control",
]

CONTROLS = ("K", "b")
READOUT = ("R", "r")
# A penalty weight (alpha, beta, gamma) and the lifting's scale: finite and >= 0.
_WEIGHT = Interval(0, None, closed="left")
_COUNT = Interval(0, None, integer=True)


@dataclass(frozen=True)
class ControlWeights:
    """alpha (L^2 weight of the controls), beta (weight of their differences), gamma (readout)."""

    alpha: float = declare(1e-3, _WEIGHT)
    beta: float = declare(1e-2, _WEIGHT)
    gamma: float = declare(1e-3, _WEIGHT)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ControlConfig:
    """A training problem J_N as a sweep cell states it (``[train.control]`` of a spec): the
    weights ``alpha``, ``beta``, ``gamma`` (:class:`ControlWeights`); ``lbfgs_iters`` steps of the
    engine's L-BFGS after the Adam steps (``history_size`` pairs, ``grad_tol``); the frozen lifting
    z_0 = A x + c with A = ``lift_scale`` Q, Q the orthonormal (m x d) factor of a standard normal
    matrix drawn from ``lift_seed`` (:func:`lift`), c = 0 (``lift_scale`` = 0: the model's own
    initial A, c, still frozen); ``fine_steps``: the fine grid on which each trained model's
    continuous objective J(Pi theta) is recorded (0: not recorded; a multiple of every depth)."""

    alpha: float = declare(1e-3, _WEIGHT)
    beta: float = declare(1e-2, _WEIGHT)
    gamma: float = declare(1e-3, _WEIGHT)
    lbfgs_iters: int = declare(500, _COUNT)
    history_size: int = declare(20, HISTORY)
    grad_tol: float = declare(1e-9, GRAD_TOL)
    lift_scale: float = declare(0.0, _WEIGHT)
    lift_seed: int = declare(0, _COUNT)
    fine_steps: int = declare(0, _COUNT)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def weights(self) -> ControlWeights:
        return ControlWeights(self.alpha, self.beta, self.gamma)


def lift(params: Params, scale: float, seed: int) -> Params:
    """``params`` with the embedding replaced by A = ``scale`` Q, c = 0 for every model: Q (m, d)
    the orthonormal factor (QR) of a standard normal float64 matrix from ``torch.Generator``
    seeded with ``seed``, the same for every model and every depth."""
    E, m, d = params["A"].shape
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(m, d, generator=g, dtype=torch.float64))
    A = (scale * Q).to(dtype=params["A"].dtype, device=params["A"].device)
    return {**params, "A": A.expand(E, m, d).clone(), "c": torch.zeros_like(params["c"])}


def _check_model(model) -> str:
    if isinstance(model, DNLNet):
        if model.operator != "dense" and model.op.param_names:
            raise ValueError("the control objective handles operators without shared parameters; "
                             f"got operator={model.operator!r}")
        return "triangle"
    if isinstance(model, ResNet) and model.block == "one_layer" and not model.tied:
        return "layers"
    raise ValueError("model must be a DNLNet or a ResNet with block='one_layer' and tied=False, got "
                     f"{type(model).__name__}")


# ----------------------------------------------------------------------------- penalties


@functools.lru_cache(maxsize=32)
def _diff_pairs(N: int) -> tuple[Tensor, Tensor]:
    """Packed index pairs of the k-differences and the j-differences of grid N, each (2, count)."""
    kd, jd = [], []
    for k in range(1, N + 1):
        for j in range(k):
            if k + 1 <= N:
                kd.append((pair_index(k, j), pair_index(k + 1, j)))
            if j + 1 < k:
                jd.append((pair_index(k, j), pair_index(k, j + 1)))
    def as_t(x):
        return torch.tensor(x, dtype=torch.long).T if x else torch.zeros(2, 0, dtype=torch.long)

    return as_t(kd), as_t(jd)


def h1_penalty(theta: Tensor, N: int, horizon: float, alpha: float, beta: float) -> Tensor:
    """R_N(theta) of the module docstring for packed controls ``theta`` (B, N (N + 1) / 2, ...): (B,)."""
    check_int("N", N, 1)
    if theta.shape[1] != pair_count(N):
        raise ValueError(f"theta must have {pair_count(N)} pairs on axis 1 for N={N}, "
                         f"got shape {tuple(theta.shape)}")
    h = horizon / N
    flat = theta.reshape(theta.shape[0], theta.shape[1], -1)
    out = alpha * h * h * flat.square().sum((1, 2))
    for pairs in _diff_pairs(N):
        if pairs.shape[1]:
            p = pairs.to(theta.device)
            out = out + beta * (flat.index_select(1, p[1]) - flat.index_select(1, p[0])).square().sum((1, 2))
    return out


def h1_penalty_layers(theta: Tensor, N: int, horizon: float, alpha: float, beta: float) -> Tensor:
    """R_N restricted to theta_{k,j} = theta_j, for per-layer controls ``theta`` (B, N, ...): (B,)."""
    check_int("N", N, 1)
    if theta.shape[1] != N:
        raise ValueError(f"theta must have N={N} layers on axis 1, got shape {tuple(theta.shape)}")
    h = horizon / N
    flat = theta.reshape(theta.shape[0], theta.shape[1], -1)
    j = torch.arange(N, dtype=theta.dtype, device=theta.device)
    out = alpha * h * h * ((N - j) * flat.square().sum(2)).sum(1)
    if N > 1:
        d = (flat[:, 1:] - flat[:, :-1]).square().sum(2)
        out = out + beta * ((N - 1 - j[:-1]) * d).sum(1)
    return out


def _layer_p1(theta: Tensor, N: int, Nf: int) -> Tensor:
    """The P1 interpolant of layer values at s_j = j h (constant after t_{N-1}) at s = j' T / Nf,
    j' = 0..Nf: shape (B, Nf + 1, ...)."""
    r = Nf // N
    jf = torch.arange(Nf + 1)
    q = torch.clamp(jf // r, max=N - 1)
    w = ((jf - q * r).double() / r).clamp(max=1.0)
    w = torch.where(q >= N - 1, torch.zeros_like(w), w)
    q1 = torch.clamp(q + 1, max=N - 1)
    shape = (1, -1, *([1] * (theta.dim() - 2)))
    w = w.to(theta).view(shape)
    lo = theta.index_select(1, q.to(theta.device))
    return lo * (1 - w) + theta.index_select(1, q1.to(theta.device)) * w


def continuous_penalty(model, theta: Tensor, alpha: float, beta: float) -> Tensor:
    """alpha ||Pi theta||^2_{L^2(Delta)} + beta ||grad Pi theta||^2_{L^2(Delta)}, exact: (B,)."""
    N, T = model.depth, model.horizon
    if _check_model(model) == "triangle":
        l2, dirichlet = p1_norms(p1_at_grid(theta, N, N, diagonal=True), N, T)
        return alpha * l2 + beta * dirichlet
    h = T / N
    flat = theta.reshape(theta.shape[0], theta.shape[1], -1)
    sq = flat.square().sum(2)  # (B, N)
    s = torch.arange(N, dtype=theta.dtype, device=theta.device) * h
    out = alpha * sq[:, -1] * h * h / 2  # last interval, theta constant, int (T - s) ds = h^2 / 2
    if N > 1:
        mid = 0.5 * (flat[:, 1:] + flat[:, :-1])
        simpson = (T - s[:-1]) * sq[:, :-1] + 4 * (T - s[:-1] - h / 2) * mid.square().sum(2) \
            + (T - s[1:]) * sq[:, 1:]
        out = out + alpha * h / 6 * simpson.sum(1)
        d = (flat[:, 1:] - flat[:, :-1]).square().sum(2)
        out = out + beta * (d * (T - s[:-1] - h / 2) / h).sum(1)
    return out


def _penalties(model, params: Params, weights: ControlWeights, continuous: bool) -> Tensor:
    layout = _check_model(model)
    out = 0.0
    for name in CONTROLS:
        if continuous:
            out = out + continuous_penalty(model, params[name], weights.alpha, weights.beta)
        elif layout == "triangle":
            out = out + h1_penalty(params[name], model.depth, model.horizon, weights.alpha, weights.beta)
        else:
            out = out + h1_penalty_layers(params[name], model.depth, model.horizon, weights.alpha,
                                          weights.beta)
    ro = sum(params[n].flatten(1).square().sum(1) for n in READOUT)
    return out + weights.gamma * ro


def _data_terms(out: Tensor, y: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    yy = y.expand(out.shape[0], -1)
    return per_sample_loss(out, yy, loss).mean(1), correct(out, yy).mean(1)


def _expand(x: Tensor, B: int) -> Tensor:
    return x.unsqueeze(0).expand(B, *x.shape) if x.dim() == 2 else x


def control_objective(model, weights: ControlWeights, loss: str = "cross_entropy",
                      frozen: tuple[str, ...] = ("A", "c")) -> Objective:
    """J_N as the engine's :class:`Objective`: per-sample ``loss``, penalty R_N(theta) + gamma
    (|R|^2 + |r|^2) per model, ``frozen`` names not trained."""
    _check_model(model)
    return Objective(loss=loss, penalty=functools.partial(_penalties, model, weights=weights,
                                                          continuous=False),
                     frozen=frozenset(frozen))


def objective(model, params: Params, x: Tensor, y: Tensor, weights: ControlWeights,
              loss: str = "cross_entropy") -> dict[str, Tensor]:
    """J_N of every model (all on the same data ``x`` (n, d), labels ``y`` (n,)): a dict of (B,)
    tensors 'J', 'loss', 'penalty', 'acc'."""
    LOSS.check("loss", loss)
    B = params["R"].shape[0]
    out = model.forward(params, _expand(x, B))
    data, acc = _data_terms(out, y, loss)
    pen = _penalties(model, params, weights, continuous=False)
    return {"J": data + pen, "loss": data, "penalty": pen, "acc": acc}


def continuous_objective(model, params: Params, x: Tensor, y: Tensor, weights: ControlWeights,
                         fine_steps: int, loss: str = "cross_entropy", rule: str = "trapezoid"
                         ) -> dict[str, Tensor]:
    """J(Pi theta_N) of the module docstring: the state equation on ``fine_steps`` steps (a multiple
    of N) by ``rule``, the penalties exactly. A dict of (B,) tensors 'J', 'loss', 'penalty', 'acc'."""
    layout = _check_model(model)
    check_int("fine_steps", fine_steps, 1)
    if fine_steps % model.depth:
        raise ValueError(f"fine_steps must be a multiple of depth, got {fine_steps} and {model.depth}")
    B = params["R"].shape[0]
    xb = _expand(x, B)
    with torch.no_grad():
        if layout == "triangle":
            # every option of the discrete model (operator included) carries over
            fine = VolterraDNL(**{f.name: getattr(model, f.name) for f in dataclasses.fields(DNLNet)},
                               steps=fine_steps, rule=rule)
            out = fine.forward(params, xb)
        else:
            Nf, diag = fine_steps, rule == "trapezoid"
            from ..models.volterra import pair_nodes  # local: only this path needs it

            _, jf = pair_nodes(Nf, diagonal=diag)
            jf = jf.to(params["K"].device)
            K = _layer_p1(params["K"], model.depth, Nf).index_select(1, jf)
            b = _layer_p1(params["b"], model.depth, Nf).index_select(1, jf)
            zs, _ = march(embed(params, xb), K, b, Nf, model.horizon / Nf, model.act, form="A",
                          rule=rule)
            out = readout(params, zs[-1])
        data, acc = _data_terms(out, y, loss)
        pen = _penalties(model, params, weights, continuous=True)
    return {"J": data + pen, "loss": data, "penalty": pen, "acc": acc}


# ----------------------------------------------------------------------------- grids


def prolongate(model, params: Params):
    """(model of depth 2N, params): the controls Pi theta_N at the nodes of grid 2N; embedding and
    readout copied. Works for DNLNet (P1 on the triangle) and the one-layer ResNet (P1 in s)."""
    _check_model(model)
    deeper = _replace(model, depth=2 * model.depth)
    return deeper, prolong_to(model, params, deeper)


def can_prolong(model) -> bool:
    """Whether :func:`prolong_to` handles ``model`` (a DNLNet without shared operator parameters,
    or a one-layer untied ResNet)."""
    try:
        _check_model(model)
    except ValueError:
        return False
    return True


def prolong_to(model, params: Params, deeper) -> Params:
    """Pi theta_N at the nodes of ``deeper`` (``model`` with a depth a multiple of N): the P1
    extension on the triangle (DNLNet) or in s (one-layer ResNet); embedding and readout copied."""
    if _check_model(model) == "triangle":
        return model.prolong(params, deeper)  # DNLNet's own P1 extension on the triangle
    if _replace(deeper, depth=model.depth) != model or deeper.depth % model.depth:
        raise ValueError(f"prolong_to: the deeper model must equal this one but for a depth that is a "
                         f"multiple of {model.depth}; got {deeper!r}")
    N, Nf = model.depth, deeper.depth
    return {**params, **{name: _layer_p1(params[name], N, Nf)[:, :Nf] for name in CONTROLS}}


def _as_triangle(model, theta: Tensor) -> Tensor:
    """Controls as packed triangle controls: theta(t, s) = theta(s) for the ResNet layout."""
    if _check_model(model) == "triangle":
        return theta
    from ..models.volterra import pair_nodes  # local: only this path needs it

    _, j = pair_nodes(model.depth)
    return theta.index_select(1, j.to(theta.device))


def controls_distance(model_a, a: Params, model_b, b: Params) -> Tensor:
    """||Pi theta_a - Pi theta_b||_{L^2(Delta)} over the controls K and b of two models of one
    layout (depths one a multiple of the other), exactly on the common refinement: (B,)."""
    total = 0.0
    for name in CONTROLS:
        d = control_l2_distance(_as_triangle(model_a, a[name]), model_a.depth,
                                _as_triangle(model_b, b[name]), model_b.depth, model_a.horizon)
        total = total + d.square()
    return torch.sqrt(total)


def h1_seminorm(model, params: Params) -> Tensor:
    """||grad Pi theta||_{L^2(Delta)} over the controls K and b, exactly: (B,)."""
    total = 0.0
    for name in CONTROLS:
        th = _as_triangle(model, params[name])
        _, d = p1_norms(p1_at_grid(th, model.depth, model.depth, diagonal=True), model.depth,
                        model.horizon)
        total = total + d
    return torch.sqrt(total)


def control_diagnostics(model, params: Params, x: Tensor, y: Tensor, weights: ControlWeights,
                        fine_steps: int = 0, loss: str = "cross_entropy") -> dict[str, Tensor]:
    """Per model (E,) CPU tensors: ``h1_seminorm`` and, with ``fine_steps`` > 0, the continuous
    objective ``J_cont`` and its data term ``loss_cont`` (:func:`continuous_objective`). Each model
    is evaluated alone (leading axis 1), so its numbers do not depend on its batch-mates."""
    E = params["R"].shape[0]
    out: dict[str, list[float]] = {"h1_seminorm": []}
    for e in range(E):
        one = {k: v[e : e + 1] for k, v in params.items()}
        out["h1_seminorm"].append(float(h1_seminorm(model, one)[0]))
        if fine_steps:
            cont = continuous_objective(model, one, x, y, weights, fine_steps, loss)
            out.setdefault("J_cont", []).append(float(cont["J"][0]))
            out.setdefault("loss_cont", []).append(float(cont["loss"][0]))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


def _replace(model, **changes):
    import dataclasses

    return dataclasses.replace(model, **changes)


def control_l2_distance(theta_a: Tensor, Na: int, theta_b: Tensor, Nb: int, horizon: float) -> Tensor:
    """||Pi theta_a - Pi theta_b||_{L^2(Delta)} for packed triangle controls of grids Na and Nb (one
    a multiple of the other, or both powers of two), exactly on the common refinement: (B,)."""
    Nf = Na * Nb // _gcd(Na, Nb)
    Va = p1_at_grid(theta_a, Na, Nf, diagonal=True)
    Vb = p1_at_grid(theta_b, Nb, Nf, diagonal=True)
    l2, _ = p1_norms(Va - Vb, Nf, horizon)
    return l2.clamp(min=0).sqrt()


def _gcd(a: int, b: int) -> int:
    import math

    return math.gcd(a, b)


# ----------------------------------------------------------------------------- training


@dataclass
class ControlResult:
    """params: trained (leading axis E); per-model (E,) CPU tensors: J, loss, penalty, acc,
    grad_norm (Euclidean norm of grad J_N over the trained parameters), adam_J (J after Adam),
    lbfgs_iters (L-BFGS iterations taken), init_J, init_loss, init_grad_norm (at the initial
    parameters); history: J of every model after each Adam step."""

    params: Params
    metrics: dict[str, Tensor] = field(default_factory=dict)
    history: Tensor | None = None


def _grad_norms(model, params: Params, x, y, weights, loss, trained) -> tuple[dict, Tensor]:
    leaves = {k: (v.detach().requires_grad_(True) if k in trained else v.detach())
              for k, v in params.items()}
    res = objective(model, leaves, x, y, weights, loss)
    grads = torch.autograd.grad(res["J"].sum(), [leaves[k] for k in trained])
    gn = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in grads))
    return {k: v.detach() for k, v in res.items()}, gn.detach()


def train_control(
    model,
    params: Params,
    x: Tensor,
    y: Tensor,
    weights: ControlWeights,
    *,
    adam_steps: int = 1000,
    lr: float | Tensor = 1e-2,
    lbfgs_iters: int = 500,
    frozen: tuple[str, ...] = ("A", "c"),
    loss: str = "cross_entropy",
    grad_tol: float = 1e-9,
    history_size: int = 20,
    optimizer: Optimizer | None = None,
) -> ControlResult:
    """Minimise J_N for every model of ``params`` (leading axis E) with the engine: ``adam_steps``
    of batched Adam (learning rate ``lr``, one number or one per model), then ``lbfgs_iters`` steps
    of the engine's batched L-BFGS (``resdyn.training.optim.LBFGS``: each model its own history of
    ``history_size`` pairs and its own Armijo step from length 1; a model stops moving once
    max |grad| <= ``grad_tol``). ``frozen`` parameters are not trained. The objective is
    :func:`control_objective` (data loss + R_N + readout penalty). A model whose objective stops
    being finite is frozen at its last finite parameters; an L-BFGS run that ends worse (or not
    finite) is discarded. ``optimizer``: the first stage (default: ``Adam()``). Metrics also hold
    each model's objective, data loss and gradient norm at its initial parameters (``init_J``,
    ``init_loss``, ``init_grad_norm``; each model evaluated alone)."""
    _check_model(model)
    check_int("adam_steps", adam_steps, 0)
    _COUNT.check("lbfgs_iters", lbfgs_iters)
    LOSS.check("loss", loss)
    obj = control_objective(model, weights, loss, frozen)
    trained, _ = obj.split(params)
    fixed = {k: params[k].detach() for k in frozen}
    E = params["R"].shape[0]
    data = Dataset("control", x, y, x[:0], y[:0], max(int(y.max()) + 1, 2) if len(y) else 2)
    idx = [torch.arange(len(y))] * E
    cfg = TrainConfig(steps=adam_steps, loss=loss, chunk_size=max(len(y), 1))
    init = [_grad_norms(model, {k: v[e : e + 1] for k, v in params.items()}, x, y, weights, loss,
                        trained) for e in range(E)]
    adam = train(model, params, data, idx, lr=lr, config=cfg, evaluate_test=False, objective=obj,
                 optimizer=Adam() if optimizer is None else optimizer)
    cur = {k: adam.params[k] for k in trained}
    after_adam, _ = _grad_norms(model, {**fixed, **cur}, x, y, weights, loss, trained)

    iters = torch.zeros(E, dtype=torch.long)
    if lbfgs_iters:
        second = train(model, {**fixed, **cur}, data, idx, lr=1.0,
                       config=dataclasses.replace(cfg, steps=lbfgs_iters), evaluate_test=False,
                       objective=obj, optimizer=LBFGS(history=history_size, grad_tol=grad_tol))
        with torch.no_grad():
            J_new = objective(model, second.params, x, y, weights, loss)["J"]
        better = torch.isfinite(J_new) & (J_new <= after_adam["J"])
        cur = {k: torch.where(better.view(-1, *([1] * (v.dim() - 1))), second.params[k], v)
               for k, v in cur.items()}
        iters = torch.where(better, second.state.opt_state["lbfgs.iters"], 0).cpu()
    final = {**fixed, **cur}
    res, gn = _grad_norms(model, final, x, y, weights, loss, trained)
    metrics = {k: v.cpu() for k, v in res.items()}
    metrics.update(grad_norm=gn.cpu(), adam_J=after_adam["J"].cpu(), lbfgs_iters=iters,
                   init_J=torch.cat([r["J"] for r, _ in init]).cpu(),
                   init_loss=torch.cat([r["loss"] for r, _ in init]).cpu(),
                   init_grad_norm=torch.cat([g for _, g in init]).cpu())
    return ControlResult({k: v.detach() for k, v in final.items()}, metrics,
                         adam.state.loss_history.cpu())

"""Batched optimisers: one update for E models, each with its own learning rate.

Every optimiser is a frozen dataclass with two methods (the :class:`Optimizer` protocol):
``init_state(params)`` returns its state as a dict of tensors with a leading model axis E (so a
group's state splits into per-model checkpoints), and ``step(params, grads, state, ctx)``
returns the new parameters and state. ``ctx`` (:class:`StepContext`) carries the (E,) rates, the
step number, the (E,) active mask, per-name rate scales, the (E,) objective at ``params`` and a
function that evaluates the objective at other parameters (for line searches).

Learning rates are a tensor of shape (E,) applied inside the update (scaling a loss would do
nothing under Adam, which is invariant to it). A model may scale the rate of a parameter by name
(``lr_scales``), e.g. the mean-field rates eta L M. Frozen models keep their parameters and
optimiser state: updates are selected with ``torch.where``, never multiplied by a 0/1 mask, which
would turn a NaN into NaN rather than into the old value.

Adam:  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
       p <- p - lr_e s_name (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
SGD:   u <- mu u + g;  p <- p - lr_e s_name u        (plain gradient descent when mu = 0)
Weight decay adds wd * p to g in both.

L-BFGS (per model e, on the flat vector x_e of its trainable parameters): the two-loop recursion
over model e's own last ``history`` pairs (s, y) = (x_{t} - x_{t-1}, g_t - g_{t-1}), kept only
when s . y > ``curvature_eps`` (so the inverse-Hessian estimate stays positive definite), with
initial scaling gamma = s . y / y . y of the newest pair (min(1, 1 / |g|_1) before any pair),
gives a direction d_e; a non-descent direction (g . d >= 0) is replaced by -g. The step length:

* ``line_search='armijo'``: a_e = lr_e, halved until J_e(x_e + a_e d_e) <= J_e(x_e) + c1 a_e g.d
  (at most ``max_backtracks`` trials; a model with no acceptable trial does not move this step);
* ``line_search=None``: the fixed rate a_e = lr_e.

A model with max |g_e| <= ``grad_tol`` does not move. Each model's trials use its own values only,
so its step is the same whatever its batch-mates; the Armijo loop stops early once every model has
accepted, which costs one host synchronisation per trial (the only one in the engine's step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .._checks import Interval, ListOf, Options, OrNone, declare, validate
from ..models.base import Params

__all__ = ["BETAS", "EPS", "GRAD_TOL", "HISTORY", "LBFGS", "MOMENTUM", "OPTIMIZER", "OPTIMIZERS", "SGD",
           "WEIGHT_DECAY", "Adam", "Optimizer", "OptimizerSpec", "StepContext", "init_state",
           "update"]

OPTIMIZERS = ("adam", "sgd")
OPTIMIZER = Options(*OPTIMIZERS)

# The valid values of each optimiser constant, declared once: the optimisers' fields, TrainConfig's
# and ControlConfig's, and a spec's [train] table are all checked against these.
_UNIT = Interval(0, 1, closed="left")
BETAS = ListOf(_UNIT, 2, "a list of two numbers in [0, 1)")
EPS = Interval(0, None, closed="neither")
MOMENTUM = _UNIT
WEIGHT_DECAY = Interval(0, None, closed="left")
HISTORY = Interval(1, None, integer=True)
GRAD_TOL = Interval(0, None, closed="left")


@dataclass(frozen=True)
class StepContext:
    """lr (E,): per-model rates; step: counts from 1; active (E,): models still updated;
    scales: per-name rate factors; loss (E,): the objective at the current parameters;
    evaluate(params) -> (E,): the objective at other parameters (same step, same batch)."""

    lr: Tensor
    step: int
    active: Tensor
    scales: Mapping[str, float]
    loss: Tensor | None = None
    evaluate: Callable[[Params], Tensor] | None = None


class Optimizer(Protocol):
    def init_state(self, params: Params) -> dict[str, Tensor]: ...

    def step(self, params: Params, grads: Mapping[str, Tensor], state: dict[str, Tensor],
             ctx: StepContext) -> tuple[Params, dict[str, Tensor]]: ...


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _prepare(k: str, p: Tensor, g: Tensor, ctx: StepContext, weight_decay: float
             ) -> tuple[Tensor, Tensor, Tensor]:
    """(active mask, gradient with weight decay, rate) of parameter ``k``, broadcast like ``p``."""
    if weight_decay:
        g = g + weight_decay * p
    return _bcast(ctx.active, p), g, _bcast(ctx.lr, p) * ctx.scales.get(k, 1.0)


@dataclass(frozen=True)
class Adam:
    """Adam with per-model rates (module docstring)."""

    betas: tuple[float, float] = declare((0.9, 0.999), BETAS)
    eps: float = declare(1e-8, EPS)
    weight_decay: float = declare(0.0, WEIGHT_DECAY)

    def __post_init__(self) -> None:
        validate(self)

    def init_state(self, params: Params) -> dict[str, Tensor]:
        return {f"{s}.{k}": torch.zeros_like(v) for k, v in params.items() for s in ("m", "v")}

    def step(self, params: Params, grads: Mapping[str, Tensor], state: dict[str, Tensor],
             ctx: StepContext) -> tuple[Params, dict[str, Tensor]]:
        b1, b2 = self.betas
        new_params: Params = {}
        new_state: dict[str, Tensor] = {}
        for k, p in params.items():
            keep, g, rate = _prepare(k, p, grads[k], ctx, self.weight_decay)
            m = b1 * state[f"m.{k}"] + (1 - b1) * g
            v = b2 * state[f"v.{k}"] + (1 - b2) * g * g
            denom = torch.sqrt(v / (1 - b2**ctx.step)) + self.eps
            step_k = rate * (m / (1 - b1**ctx.step)) / denom
            new_state[f"m.{k}"] = torch.where(keep, m, state[f"m.{k}"])
            new_state[f"v.{k}"] = torch.where(keep, v, state[f"v.{k}"])
            new_params[k] = torch.where(keep, p - step_k, p)
        return new_params, new_state

    slots = ("m", "v")

    def flat_step(self, x: Tensor, g: Tensor, state: dict[str, Tensor], rate: Tensor, keep: Tensor,
                  step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`step` on flat buffers (``resdyn.training.flat``): the same operations in the
        same order on every element, so bitwise the same result."""
        b1, b2 = self.betas
        if self.weight_decay:
            g = g + self.weight_decay * x
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        denom = torch.sqrt(v / (1 - b2**step)) + self.eps
        step_x = rate * (m / (1 - b1**step)) / denom
        return torch.where(keep, x - step_x, x), {"m": torch.where(keep, m, state["m"]),
                                                  "v": torch.where(keep, v, state["v"])}


@dataclass(frozen=True)
class SGD:
    """(Momentum) gradient descent with per-model rates (module docstring)."""

    momentum: float = declare(0.0, MOMENTUM)
    weight_decay: float = declare(0.0, WEIGHT_DECAY)

    def __post_init__(self) -> None:
        validate(self)

    def init_state(self, params: Params) -> dict[str, Tensor]:
        if self.momentum == 0.0:
            return {}
        return {f"u.{k}": torch.zeros_like(v) for k, v in params.items()}

    def step(self, params: Params, grads: Mapping[str, Tensor], state: dict[str, Tensor],
             ctx: StepContext) -> tuple[Params, dict[str, Tensor]]:
        new_params: Params = {}
        new_state: dict[str, Tensor] = {}
        for k, p in params.items():
            keep, g, rate = _prepare(k, p, grads[k], ctx, self.weight_decay)
            if self.momentum:
                u = self.momentum * state[f"u.{k}"] + g
                new_state[f"u.{k}"] = torch.where(keep, u, state[f"u.{k}"])
                step_k = rate * u
            else:
                step_k = rate * g
            new_params[k] = torch.where(keep, p - step_k, p)
        return new_params, new_state

    @property
    def slots(self) -> tuple[str, ...]:
        return ("u",) if self.momentum else ()

    def flat_step(self, x: Tensor, g: Tensor, state: dict[str, Tensor], rate: Tensor, keep: Tensor,
                  step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`step` on flat buffers, bitwise the same."""
        if self.weight_decay:
            g = g + self.weight_decay * x
        if not self.momentum:
            return torch.where(keep, x - rate * g, x), {}
        u = self.momentum * state["u"] + g
        return torch.where(keep, x - rate * u, x), {"u": torch.where(keep, u, state["u"])}


def _flat(params: Mapping[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([params[k].reshape(params[k].shape[0], -1) for k in names], 1)


def _unflat(x: Tensor, like: Params) -> Params:
    out, at = {}, 0
    for k, v in like.items():
        n = v[0].numel()
        out[k] = x[:, at : at + n].reshape(v.shape)
        at += n
    return out


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


@dataclass(frozen=True)
class LBFGS:
    """Batched L-BFGS (module docstring): each model its own history and step length.

    ``lr`` given to ``train`` is the initial (Armijo) or fixed step length, usually 1.0."""

    history: int = declare(20, HISTORY)
    line_search: str | None = declare("armijo", OrNone(Options("armijo")))
    c1: float = declare(1e-4, Interval(0, None, closed="neither"))
    max_backtracks: int = declare(20, Interval(1, None, integer=True))
    grad_tol: float = declare(1e-9, GRAD_TOL)
    curvature_eps: float = declare(1e-10, Interval(0, None, closed="left"))

    def __post_init__(self) -> None:
        validate(self)

    def init_state(self, params: Params) -> dict[str, Tensor]:
        p0 = next(iter(params.values()))
        E = p0.shape[0]
        n = sum(v[0].numel() for v in params.values())
        z = {"dtype": p0.dtype, "device": p0.device}
        return {
            "lbfgs.s": torch.zeros(E, self.history, n, **z),
            "lbfgs.y": torch.zeros(E, self.history, n, **z),
            "lbfgs.rho": torch.zeros(E, self.history, **z),
            "lbfgs.valid": torch.zeros(E, self.history, dtype=torch.bool, device=p0.device),
            "lbfgs.x_prev": torch.zeros(E, n, **z),
            "lbfgs.g_prev": torch.zeros(E, n, **z),
            "lbfgs.has_prev": torch.zeros(E, dtype=torch.bool, device=p0.device),
            "lbfgs.iters": torch.zeros(E, dtype=torch.long, device=p0.device),
        }

    def _push(self, state: dict[str, Tensor], take: Tensor, s: Tensor, y: Tensor, sy: Tensor
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Shift the new pair into the histories of the models in ``take`` (newest last)."""
        t3 = take.view(-1, 1, 1)
        t2 = take.view(-1, 1)
        S = torch.where(t3, torch.cat([state["lbfgs.s"][:, 1:], s.unsqueeze(1)], 1), state["lbfgs.s"])
        Y = torch.where(t3, torch.cat([state["lbfgs.y"][:, 1:], y.unsqueeze(1)], 1), state["lbfgs.y"])
        inv = torch.where(take, 1.0 / torch.where(take, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        rho = torch.where(t2, torch.cat([state["lbfgs.rho"][:, 1:], inv.unsqueeze(1)], 1),
                          state["lbfgs.rho"])
        valid = torch.where(t2, torch.cat([state["lbfgs.valid"][:, 1:], take.unsqueeze(1)], 1),
                            state["lbfgs.valid"])
        return S, Y, rho, valid

    def _direction(self, g: Tensor, S: Tensor, Y: Tensor, rho: Tensor, valid: Tensor) -> Tensor:
        zero = torch.zeros((), dtype=g.dtype, device=g.device)
        q = g
        alphas = [zero] * self.history
        for i in reversed(range(self.history)):
            a = torch.where(valid[:, i], rho[:, i] * _rowdot(S[:, i], q), zero)
            alphas[i] = a
            q = q - a.unsqueeze(1) * Y[:, i]
        yy = _rowdot(Y[:, -1], Y[:, -1])
        sy_last = torch.where(valid[:, -1], 1.0 / torch.where(valid[:, -1], rho[:, -1], 1.0), zero)
        first = torch.clamp(1.0 / g.abs().sum(1), max=1.0)
        gamma = torch.where(valid[:, -1], sy_last / torch.where(valid[:, -1], yy, 1.0), first)
        r = gamma.unsqueeze(1) * q
        for i in range(self.history):
            b = torch.where(valid[:, i], rho[:, i] * _rowdot(Y[:, i], r), zero)
            r = r + S[:, i] * (alphas[i] - b).unsqueeze(1)
        return -r

    def step(self, params: Params, grads: Mapping[str, Tensor], state: dict[str, Tensor],
             ctx: StepContext) -> tuple[Params, dict[str, Tensor]]:
        if any(v != 1.0 for v in ctx.scales.values()):
            raise ValueError("LBFGS takes no per-parameter rate scales (the model's lr_scales); "
                             "use Adam or SGD for such a model")
        if self.line_search is not None and (ctx.loss is None or ctx.evaluate is None):
            raise ValueError("LBFGS(line_search='armijo') needs the objective and an evaluate "
                             "function in its StepContext")
        names = list(params)
        x = _flat(params, names)
        g = _flat(grads, names)
        active = ctx.active
        s = x - state["lbfgs.x_prev"]
        y = g - state["lbfgs.g_prev"]
        sy = _rowdot(s, y)
        take = active & state["lbfgs.has_prev"] & (sy > self.curvature_eps)
        S, Y, rho, valid = self._push(state, take, s, y, sy)

        d = self._direction(g, S, Y, rho, valid)
        gd = _rowdot(g, d)
        descent = gd < 0
        d = torch.where(descent.unsqueeze(1), d, -g)
        gd = torch.where(descent, gd, -_rowdot(g, g))
        move = active & (g.abs().amax(1) > self.grad_tol)
        zero = torch.zeros_like(ctx.lr)
        if self.line_search is None:
            length = torch.where(move, ctx.lr, zero)
        else:
            length = zero
            trial = ctx.lr
            done = ~move
            for _ in range(self.max_backtracks):
                f = ctx.evaluate(_unflat(x + trial.unsqueeze(1) * d, params))
                ok = ~done & (f <= ctx.loss + self.c1 * trial * gd)  # False for a NaN trial
                length = torch.where(ok, trial, length)
                done = done | ok
                if bool(done.all()):
                    break
                trial = torch.where(done, trial, 0.5 * trial)
        moved = move & (length > 0)
        x_new = torch.where(moved.unsqueeze(1), x + length.unsqueeze(1) * d, x)
        keep = active.unsqueeze(1)
        new_state = {
            "lbfgs.s": S, "lbfgs.y": Y, "lbfgs.rho": rho, "lbfgs.valid": valid,
            "lbfgs.x_prev": torch.where(keep, x, state["lbfgs.x_prev"]),
            "lbfgs.g_prev": torch.where(keep, g, state["lbfgs.g_prev"]),
            "lbfgs.has_prev": state["lbfgs.has_prev"] | active,
            "lbfgs.iters": state["lbfgs.iters"] + moved.long(),
        }
        return _unflat(x_new, params), new_state


# ----------------------------------------------------------------------------- TrainConfig names


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimiser fields of a ``TrainConfig``; :meth:`build` makes the optimiser object."""

    name: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.0
    weight_decay: float = 0.0

    def build(self) -> Adam | SGD:
        OPTIMIZER.check("optimizer", self.name)
        if self.name == "adam":
            return Adam(tuple(self.betas), self.eps, self.weight_decay)
        return SGD(self.momentum, self.weight_decay)


def init_state(spec: OptimizerSpec, params: Params) -> dict[str, Tensor]:
    return spec.build().init_state(params)


def update(
    spec: OptimizerSpec,
    params: Params,
    grads: Mapping[str, Tensor],
    state: dict[str, Tensor],
    lr: Tensor,
    step: int,
    active: Tensor,
    lr_scales: Mapping[str, float] | None = None,
) -> tuple[Params, dict[str, Tensor]]:
    """One step for every model; ``step`` counts from 1; models with ``active[e]`` False are kept."""
    return spec.build().step(params, grads, state, StepContext(lr, step, active, lr_scales or {}))

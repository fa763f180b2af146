"""What the engine minimises: a per-sample loss, per-model penalties, frozen names, a stochastic
forward and an optional combination rule (docs/engine.md, "Objective").

For model e with trainable parameters theta_e (every name not in ``frozen``), fixed parameters
phi_e (the names in ``frozen``) and its batch B_e at step t,

    w_e        = sample(theta, t, seeds)_e          (theta_e itself when ``sample`` is None)
    L_e        = (1 / |B_e|) sum_{i in B_e} loss(f((w_e, phi_e); x_i), y_i)
    J_e        = combine(L, theta)_e                 (L_e + penalty(theta)_e by default;
                                                     L_e when both are None)

and the engine differentiates sum_e J_e with respect to theta only. Every callable must keep the
models apart: entry e of its output may depend on model e's inputs alone (and, for ``sample``, on
model e's own random stream ``resdyn._seeds.generator_for(seeds[e], ...)``). That is what keeps a
model's numbers the same whatever its batch-mates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from .._checks import Options
from ..models.base import Params
from .losses import LOSSES, LossFn

__all__ = ["LOSS", "Objective"]

#: A per-sample loss named by a string (``TrainConfig.loss``, ``Objective.loss`` when not a function).
LOSS = Options(*LOSSES)


@dataclass(frozen=True)
class Objective:
    """loss: per-sample loss name (``training.losses.LOSSES``) or a function (out, y) -> losses.
    penalty(theta) -> (E,): added to the mean data loss. frozen: parameter names never updated
    (no gradient is taken for them).
    sample(theta, t, seeds) -> the parameters the model's forward takes at step t (frozen ones
    are added by the engine); called inside the differentiated graph. combine(L, theta) -> (E,):
    the objective from the (E,) mean data loss, replacing L + penalty. ``theta`` is always the
    dict of trainable parameters (leading model axis E)."""

    loss: str | LossFn = "cross_entropy"
    penalty: Callable[[Params], Tensor] | None = None
    frozen: frozenset[str] = frozenset()
    sample: Callable[[Params, int, Sequence[int]], Params] | None = None
    combine: Callable[[Tensor, Params], Tensor] | None = None

    def __post_init__(self) -> None:
        if not callable(self.loss):
            LOSS.check("loss", self.loss)
        if isinstance(self.frozen, str):
            raise ValueError(f"frozen must be a set of parameter names, got the string {self.frozen!r}")
        object.__setattr__(self, "frozen", frozenset(self.frozen))
        for name in ("penalty", "sample", "combine"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise ValueError(f"{name} must be a callable or None, got {type(fn).__name__}")

    def split(self, params: Params) -> tuple[list[str], list[str]]:
        """(trainable names, frozen names) of ``params``; unknown frozen names are an error."""
        unknown = sorted(self.frozen - set(params))
        if unknown:
            raise ValueError(f"frozen names unknown parameters {unknown}; allowed: {sorted(params)}")
        trainable = [k for k in params if k not in self.frozen]
        if not trainable:
            raise ValueError(f"every parameter is frozen ({sorted(params)}); nothing to train")
        return trainable, [k for k in params if k in self.frozen]

    def forward_params(self, trainable: Params, fixed: Params, step: int, seeds: Sequence[int]
                       ) -> Params:
        """The parameters the model's forward takes at ``step``."""
        if self.sample is None:
            return {**fixed, **trainable}
        return {**fixed, **self.sample(trainable, step, seeds)}

    def value(self, data_loss: Tensor, trainable: Params) -> Tensor:
        """J (E,) from the mean data loss L (E,); L itself (not L + 0) when there is no penalty."""
        if self.combine is not None:
            return self.combine(data_loss, trainable)
        if self.penalty is None:
            return data_loss
        return data_loss + self.penalty(trainable)

"""The flow map of dz/dt = F(z; theta(t)) with theta given on P knot intervals, by torchdiffeq.

Interval p = [t_p, t_{p+1}], t_p = p T / P, is one ``odeint`` call whose vector field closes over
the integer p, so a knot is never found by a floating-point time lookup and every knot is a jump
time of an adaptive solver. Fixed-step methods take ``steps_per_knot`` equal steps per interval;
'dopri5' adapts its steps to ``rtol``/``atol``. With ``adjoint_params`` the gradient is computed by
the adjoint ODE instead of through the solver's operations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._checks import check_bool, check_choice, check_int, check_positive

__all__ = ["FIXED_METHODS", "METHODS", "check_knot_options", "knot_flow", "knot_times"]

FIXED_METHODS = ("euler", "midpoint", "rk4")
METHODS = (*FIXED_METHODS, "dopri5")

VectorField = Callable[[Tensor, Tensor], Tensor]
INTERPOLATIONS = ("constant", "linear")


def check_knot_options(opts: object) -> None:
    """Check the solver options every continuous-time family shares: knots, interpolation,
    method, steps_per_knot, rtol, atol, adjoint."""
    check_int("knots", opts.knots, 1)
    check_choice("interpolation", opts.interpolation, INTERPOLATIONS)
    check_choice("method", opts.method, METHODS)
    check_int("steps_per_knot", opts.steps_per_knot, 1)
    check_positive("rtol", opts.rtol)
    check_positive("atol", opts.atol)
    check_bool("adjoint", opts.adjoint)


def knot_times(knots: int, horizon: float, interpolation: str) -> Tensor:
    """Times of the parameter sets, t_p = p T / P: p < P ('constant') or p <= P ('linear')."""
    n = knots + (interpolation == "linear")
    return torch.arange(n, dtype=torch.float64) * (horizon / knots)


def knot_flow(
    field_at: Callable[[int], VectorField],
    z0: Tensor,
    *,
    knots: int,
    knot_step: float,
    method: str,
    steps_per_knot: int = 1,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    adjoint_params: Sequence[Tensor] | None = None,
    return_knots: bool = False,
) -> Tensor:
    """Phi_T(z0) (or the states at every knot, stacked on a new leading axis of length P + 1).

    field_at(p) is the vector field f(t, z) on interval p.
    """
    # Imported here: torchdiffeq pulls in scipy.integrate (0.4 s), which the discrete families
    # never need.
    from torchdiffeq import odeint, odeint_adjoint

    if method in FIXED_METHODS:
        opts: dict = {"method": method, "options": {"step_size": knot_step / steps_per_knot}}
    else:
        opts = {"method": method, "rtol": rtol, "atol": atol}
    z, out = z0, [z0]
    for p in range(knots):
        t = torch.tensor([p * knot_step, (p + 1) * knot_step], dtype=z0.dtype, device=z0.device)
        if adjoint_params is not None:
            z = odeint_adjoint(field_at(p), z, t, adjoint_params=tuple(adjoint_params), **opts)[-1]
        else:
            z = odeint(field_at(p), z, t, **opts)[-1]
        out.append(z)
    return torch.stack(out) if return_knots else z

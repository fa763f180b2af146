"""Per-sample losses and correctness for (n_chunks, C, k) outputs and (n_chunks, C) labels.

cross_entropy: -log softmax(f)_y.
squared: (1/2) ||f - t||^2 with t the one-hot code of y when k > 1, and t = 2y - 1 in {-1, +1}
when k = 1 (binary labels, the mean-field family's convention).
correlation: -t f for a scalar output f (k = 1) and t = 2y - 1 in {-1, +1}: its mean over a sample
is minus the correlation (1/S) sum_i t_i f(x_i) that the Rademacher estimator maximises.
Correct: argmax f = y for k > 1, sign(f) = t for k = 1.

Heads: outputs of shape (n_chunks, C, H, k) are H predictions of every sample (e.g. one knot
path evaluated at H depths, :class:`resdyn.models.knot_resnet.DepthStack`); the per-sample loss and
correctness are then the means over the H heads, (1/H) sum_h loss(f_h(x_i), y_i).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["LOSSES", "LossFn", "correct", "per_sample_loss"]

#: A per-sample loss given as a function: (outputs (n_chunks, C, k), labels (n_chunks, C)) ->
#: losses (n_chunks, C). Entry i may depend on sample i alone, which keeps models apart.
LossFn = Callable[[Tensor, Tensor], Tensor]

LOSSES = ("cross_entropy", "squared", "correlation")


def _targets(out: Tensor, y: Tensor) -> Tensor:
    if out.shape[-1] == 1:
        return (2 * y - 1).to(out.dtype).unsqueeze(-1)
    return torch.nn.functional.one_hot(y, out.shape[-1]).to(out.dtype)


def _heads(out: Tensor, y: Tensor) -> Tensor | None:
    """Labels broadcast over a heads axis of ``out`` (n_chunks, C, H, k), or None without one."""
    if out.dim() == y.dim() + 2:
        return y.unsqueeze(-1).expand(out.shape[:-1])
    if out.dim() != y.dim() + 1:
        raise ValueError(f"outputs of shape {tuple(out.shape)} do not fit labels of shape "
                         f"{tuple(y.shape)}: expected (..., k) or (..., H, k) over the labels' axes")
    return None


def per_sample_loss(out: Tensor, y: Tensor, loss: str | LossFn) -> Tensor:
    """The per-sample loss named ``loss`` (one of :data:`LOSSES`), or ``loss(out, y)`` when it is
    a callable (e.g. the bounded cross-entropy of a PAC-Bayes objective); the mean over the heads
    when ``out`` has a heads axis (see the module docstring)."""
    yh = _heads(out, y)
    if yh is not None:
        return per_sample_loss(out, yh, loss).mean(-1)
    if callable(loss):
        return loss(out, y)
    if loss == "cross_entropy":
        if out.shape[-1] < 2:
            raise ValueError("loss 'cross_entropy' needs out_dim >= 2; use loss 'squared' for k = 1")
        return -torch.log_softmax(out, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if loss == "squared":
        return 0.5 * (out - _targets(out, y)).square().sum(-1)
    if loss == "correlation":
        if out.shape[-1] != 1:
            raise ValueError(f"loss 'correlation' needs out_dim = 1, got {out.shape[-1]}")
        return -(_targets(out, y) * out).squeeze(-1)
    raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}; got {loss!r}")


def correct(out: Tensor, y: Tensor) -> Tensor:
    """1.0 where the prediction is right, else 0.0, in the dtype of ``out`` (the fraction of
    heads that are right when ``out`` has a heads axis)."""
    yh = _heads(out, y)
    if yh is not None:
        return correct(out, yh).mean(-1)
    if out.shape[-1] == 1:
        return ((out.squeeze(-1) > 0) == (y > 0)).to(out.dtype)
    return (out.argmax(-1) == y).to(out.dtype)

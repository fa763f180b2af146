"""Nonlinear Volterra integral equations in depth, and the triangle grid they live on (docs/dnl.md).

The continuous-time DNL model (resdyn's formulation, docs/dnl.md section 3) is

    form A:  z(t) = z_0 + int_0^t ( K(t, s)[act(z(s))] + b(t, s) ) ds,
    form B:  z(t) = z_0 + int_0^t act( K(t, s)[z(s)] + b(t, s) ) ds,        0 <= t <= T,

with kernels given on the triangle Delta = {0 <= s <= t <= T}. On the grid t_k = k h, h = T / N, a
quadrature rule with weights w_{k,j} gives

    z_k = z_0 + sum_{j <= k} w_{k,j} F(t_k, t_j, z_j),   F = K[act(z)] + b (A) or act(K[z] + b) (B).

* rectangle (left rule, explicit, first order): w_{k,j} = h for j < k, w_{k,k} = 0. This is the
  discrete DNL network itself (``resdyn.models.dnl.DNLNet``).
* trapezoid (second order): w_{k,0} = w_{k,k} = h / 2, w_{k,j} = h for 0 < j < k. The diagonal
  term makes step k implicit whenever K(t_k, t_k) or b(t_k, t_k) is not zero; it is solved by the
  fixed-point iteration z <- E_k + (h / 2) F(t_k, t_k, z) from the predictor
  E_k + (h / 2) F(t_k, t_k, z_{k-1}) (a contraction when (h / 2) Lip(act) |K(t_k, t_k)| < 1), or
  by that predictor and a fixed number of corrector steps (``implicit='pc'``).

Packed layouts of the pairs (k, j) of the grid, rows k in increasing order, j increasing within a
row: without the diagonal (0 <= j < k <= N; index k (k - 1) / 2 + j; N (N + 1) / 2 pairs) and with
it (0 <= j <= k <= N; index k (k + 1) / 2 + j; (N + 1)(N + 2) / 2 pairs). :func:`pair_index` is
the one place this index is computed; :func:`pair_nodes` is its inverse.

The piecewise-linear (P1) extension of values on the pairs j < k of grid N to the whole triangle:
the diagonal nodes are filled by the first sub-diagonal, theta_{k,k} = theta_{k,k-1}, and
theta_{0,0} = theta_{1,0} (constant extrapolation along s into the strip t - h < s <= t); each
grid square [t_{k-1}, t_k] x [t_j, t_{j+1}] is cut along its diagonal parallel to s = t, and the
extension is linear on each triangle. Grids whose N divides N' nest, so a P1 function of grid N is
P1 on grid N' and its values at the nodes of N' represent it exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from .._checks import check_choice, check_int, check_positive
from .activations import Activation, get_activation
from .base import Params
from .dnl_ops import Operator

__all__ = [
    "FORMS",
    "IMPLICIT",
    "RULES",
    "SmoothKernel",
    "VolterraSolution",
    "march",
    "p1_at_grid",
    "p1_norms",
    "pair_count",
    "pair_index",
    "pair_nodes",
    "solve_volterra",
]

FORMS = ("A", "B")
RULES = ("rectangle", "trapezoid")
IMPLICIT = ("fixed_point", "pc")

KernelFn = Callable[[Tensor, Tensor], Tensor]
Index = TypeVar("Index", int, Tensor)


# ----------------------------------------------------------------------------- the triangle grid


def pair_count(N: int, diagonal: bool = False) -> int:
    """Number of pairs of grid N: N (N + 1) / 2 without the diagonal, (N + 1)(N + 2) / 2 with it."""
    return pair_index(N + 1, 0, diagonal)  # where row N + 1 would start


@functools.lru_cache(maxsize=64)
def _pair_nodes(N: int, diagonal: bool) -> tuple[Tensor, Tensor]:
    if diagonal:
        k = torch.cat([torch.full((i + 1,), i, dtype=torch.long) for i in range(N + 1)])
        j = torch.cat([torch.arange(i + 1) for i in range(N + 1)])
    else:
        k = torch.cat([torch.full((i,), i, dtype=torch.long) for i in range(1, N + 1)])
        j = torch.cat([torch.arange(i) for i in range(1, N + 1)])
    return k, j


def pair_nodes(N: int, diagonal: bool = False) -> tuple[Tensor, Tensor]:
    """Row and column indices (k, j) of the packed pairs of grid N (see the module docstring)."""
    check_int("N", N, 1)
    k, j = _pair_nodes(N, bool(diagonal))
    return k.clone(), j.clone()


def pair_index(k: Index, j: Index, diagonal: bool = False) -> Index:
    """Packed index of the pair (k, j): k (k - 1) / 2 + j for 0 <= j < k (no diagonal), and
    k (k + 1) / 2 + j for 0 <= j <= k (with it); the inverse of :func:`pair_nodes`.

    ``k`` and ``j`` are ints or integer tensors of one shape (elementwise). A pair outside the
    layout (j < 0, or j >= k without the diagonal, j > k with it) is a ValueError.
    """
    top = k if diagonal else k - 1
    bad = (j < 0) | (j > top)
    if bool(bad.any()) if isinstance(bad, Tensor) else bad:
        rule = "0 <= j <= k" if diagonal else "0 <= j < k"
        raise ValueError(f"a packed pair needs {rule} (diagonal={bool(diagonal)}), got k={k}, j={j}")
    return (k * (k + 1) if diagonal else k * (k - 1)) // 2 + j


@functools.lru_cache(maxsize=64)
def _p1_stencil(N: int, Nf: int, diagonal: bool) -> tuple[Tensor, Tensor]:
    """Indices into the packed (no-diagonal) values of grid N and weights, both (3, P_f), that give
    the P1 extension at the pairs of grid Nf (N divides Nf), by exact integer arithmetic."""
    r = Nf // N
    kf, jf = _pair_nodes(Nf, diagonal)
    kk = torch.clamp((kf + r - 1) // r, min=1)            # t in [t_{kk-1}, t_kk]
    a_num = kf - (kk - 1) * r                              # a = a_num / r in [0, 1]
    jj = torch.minimum(jf // r, kk - 1)                    # s in [t_jj, t_{jj+1}]
    c_num = jf - jj * r
    lower = c_num <= a_num
    a, c = a_num.double() / r, c_num.double() / r
    # lower triangle: (kk-1, jj) 1-a, (kk, jj) a-c, (kk, jj+1) c
    # upper triangle: (kk-1, jj) 1-c, (kk-1, jj+1) c-a, (kk, jj+1) a
    n1k, n1j = kk - 1, jj
    n2k = torch.where(lower, kk, kk - 1)
    n2j = jj + torch.where(lower, 0, 1)
    n3k, n3j = kk, jj + 1
    w1 = torch.where(lower, 1 - a, 1 - c)
    w2 = torch.where(lower, a - c, c - a)
    w3 = torch.where(lower, c, a)
    # Nodes with zero weight may lie outside the triangle (e.g. (kk, kk) is a ghost node, fine;
    # (kk-1, kk) never has weight); clamp column indices before the ghost map.
    ks = torch.stack([n1k, n2k, n3k])
    js = torch.minimum(torch.stack([n1j, n2j, n3j]), ks)
    # ghost map: full node (k, j), j <= k -> packed no-diagonal index of its value
    kg = torch.clamp(ks, min=1)
    jg = torch.where(js >= kg, kg - 1, js)
    src = pair_index(kg, jg)
    return src, torch.stack([w1, w2, w3])


def p1_at_grid(theta: Tensor, N: int, Nf: int, diagonal: bool = False) -> Tensor:
    """The P1 extension of ``theta`` (B, N (N + 1) / 2, ...) on grid N, evaluated at the pairs of
    grid Nf (a multiple of N), with or without the diagonal: shape (B, pair_count(Nf, diagonal), ...).

    With Nf = N and no diagonal it returns ``theta``; with Nf = 2 N it is the prolongation.
    """
    check_int("N", N, 1)
    check_int("Nf", Nf, 1)
    if Nf % N:
        raise ValueError(f"Nf must be a multiple of N, got N={N}, Nf={Nf}")
    if theta.shape[1] != pair_count(N):
        raise ValueError(f"theta must have {pair_count(N)} pairs on axis 1 for N={N}, "
                         f"got shape {tuple(theta.shape)}")
    src, w = _p1_stencil(N, Nf, bool(diagonal))
    src = src.to(theta.device)
    w = w.to(device=theta.device, dtype=theta.dtype)
    shape = (1, -1, *([1] * (theta.dim() - 2)))
    out = theta.index_select(1, src[0]) * w[0].view(shape)
    out = out + theta.index_select(1, src[1]) * w[1].view(shape)
    return out + theta.index_select(1, src[2]) * w[2].view(shape)


@functools.lru_cache(maxsize=64)
def _triangles(N: int) -> tuple[Tensor, Tensor]:
    """Vertex indices (into the full packed layout of grid N) of every triangle: lower triangles
    (v00, v10, v11) and upper triangles (v00, v01, v11), each of shape (3, count)."""
    def at(k: int, j: int) -> int:
        return pair_index(k, j, diagonal=True)

    lo, up = [], []
    for k in range(1, N + 1):
        for j in range(k):
            lo.append((at(k - 1, j), at(k, j), at(k, j + 1)))
            if j <= k - 2:
                up.append((at(k - 1, j), at(k - 1, j + 1), at(k, j + 1)))
    lo_t = torch.tensor(lo, dtype=torch.long).T
    up_t = torch.tensor(up, dtype=torch.long).T if up else torch.zeros(3, 0, dtype=torch.long)
    return lo_t, up_t


def p1_norms(V: Tensor, N: int, horizon: float) -> tuple[Tensor, Tensor]:
    """Exact int_Delta |f|^2 and int_Delta |grad f|^2 of the P1 function f with values ``V``
    (B, (N + 1)(N + 2) / 2, ...) at every node of grid N (diagonal included): two (B,) tensors.

    On a triangle of area a with vertex values v1, v2, v3: int f^2 = a / 6 (sum v_i^2 + sum_{i<j}
    v_i v_j); the gradient is constant, and on the lower triangle (v00, v10, v11) of a cell
    int |grad f|^2 = (|v10 - v00|^2 + |v11 - v10|^2) / 2 (independent of h), likewise on the upper.
    """
    if V.shape[1] != pair_count(N, diagonal=True):
        raise ValueError(f"V must have {pair_count(N, True)} nodes on axis 1 for N={N}, "
                         f"got shape {tuple(V.shape)}")
    h = horizon / N
    area = 0.5 * h * h
    Vf = V.reshape(V.shape[0], V.shape[1], -1)
    l2 = V.new_zeros(V.shape[0])
    dirichlet = V.new_zeros(V.shape[0])
    for tri in _triangles(N):
        if tri.shape[1] == 0:
            continue
        a, b, c = (Vf.index_select(1, i.to(V.device)) for i in tri)
        l2 = l2 + area / 6 * (a * a + b * b + c * c + a * b + a * c + b * c).sum((1, 2))
        # lower (v00, v10, v11): edges v10 - v00 and v11 - v10; upper (v00, v01, v11): v01 - v00,
        # v11 - v01. In both, the two edges are (b - a) and (c - b).
        dirichlet = dirichlet + 0.5 * ((b - a).square() + (c - b).square()).sum((1, 2))
    return l2, dirichlet


# ----------------------------------------------------------------------------- smooth kernels


@dataclass(frozen=True)
class SmoothKernel:
    """A smooth random kernel on the triangle, for initialisation and tests:

        K(t, s) = sum_{a, b < J} coef[a, b] phi_a(t) phi_b(s),   coef[a, b] = std g_ab c_a c_b,

    phi_0 = 1, phi_a(t) = sqrt(2) cos(pi a t / T), c_a = (1 + a)^{-1} / sqrt(sum_i (1 + i)^{-2}),
    g_ab ~ N(0, 1): the two-dimensional analogue of ``resdyn.models.paths.SmoothPath``, with mean
    square std^2 over the square [0, T]^2. The draws do not depend on any grid.
    """

    coef: Tensor
    horizon: float

    @classmethod
    def sample(cls, generator: torch.Generator, shape: tuple[int, ...], std: float, horizon: float,
               modes: int = 4) -> SmoothKernel:
        g = torch.randn((modes, modes, *shape), generator=generator, dtype=torch.float64)
        c = torch.tensor([1.0 / (1 + j) for j in range(modes)], dtype=torch.float64)
        c = c / torch.sqrt((c * c).sum())
        cc = (c[:, None] * c[None, :]).view(modes, modes, *([1] * len(shape)))
        return cls(std * g * cc, horizon)

    def _basis(self, t: Tensor) -> Tensor:
        J = self.coef.shape[0]
        j = torch.arange(J, dtype=self.coef.dtype)
        phi = math.sqrt(2.0) * torch.cos(math.pi * t.to(self.coef)[:, None] * j / self.horizon)
        phi[:, 0] = 1.0
        return phi

    def __call__(self, t: Tensor, s: Tensor) -> Tensor:
        """K(t_i, s_i) for paired times: shape (len(t), *shape)."""
        pt, ps = self._basis(t), self._basis(s)
        return torch.einsum("pa,pb,ab...->p...", pt, ps, self.coef)


# ----------------------------------------------------------------------------- the march


@functools.lru_cache(maxsize=64)
def _columns(N: int, diagonal: bool) -> tuple[Tensor, Tensor, list[int]]:
    """Packed indices of the off-diagonal pairs in column order (j = 0..N-1, then k = j+1..N), of
    the diagonal pairs (k, k), k = 0..N (empty without the diagonal), and the column lengths."""
    cols = [pair_index(k, j, diagonal) for j in range(N) for k in range(j + 1, N + 1)]
    diag = [pair_index(k, k, True) for k in range(N + 1)] if diagonal else []
    return (torch.tensor(cols, dtype=torch.long), torch.tensor(diag, dtype=torch.long),
            [N - j for j in range(N)])


@dataclass(frozen=True)
class _Terms:
    """The quadrature terms w F(t_k, t_j, z_j) of one march: F = K[act(z)] + b (form A) or
    act(K[z] + b) (form B), K the operator ``op`` with pair weights W; states (B, n, m)."""

    act: Activation
    form: str
    op: Operator
    op_params: Params
    B: int
    n: int
    m: int

    def features(self, z: Tensor) -> Tensor:
        """The operator's features of act(z) (form A) or z (form B): (B, n M, F)."""
        return self.op.features(self.op_params, self.act(z) if self.form == "A" else z)

    def column(self, W: Tensor, b: Tensor | None, phi: Tensor, w: float) -> Tensor:
        """w F(t_k, t_j, z_j) for the rows k of a column: W (B, K, C, F), b (B, K, m), phi
        (B, n M, F) -> (B, n, K, m)."""
        B, n, m, M, C = self.B, self.n, self.m, self.op.M, self.op.channels
        K = W.shape[1]
        if self.form == "A":  # w (W phi + b) = (w W) phi + w b: scale the small factors
            W = w * W
            b = None if b is None else w * b
        out = torch.bmm(phi, W.permute(0, 3, 1, 2).reshape(B, W.shape[3], K * C))
        out = out.view(B, n, M, K, C)
        out = (out.squeeze(2) if M == 1 else out.transpose(2, 3)).reshape(B, n, K, m)
        if b is not None:
            out = out + b.unsqueeze(1)
        return out if self.form == "A" else w * self.act(out)

    def pair(self, W: Tensor, b: Tensor | None, phi: Tensor, w: float) -> Tensor:
        """w F(t_k, t_j, z_j) for one pair: W (B, C, F), b (B, m) -> (B, n, m)."""
        return self.column(W.unsqueeze(1), None if b is None else b.unsqueeze(1), phi, w).squeeze(2)


@dataclass(frozen=True)
class _Implicit:
    """How a trapezoid step with a diagonal term is solved (see :func:`march`)."""

    method: str
    tol: float
    max_iter: int
    corrections: int


def _diagonal_terms(weights: Tensor, bias: Tensor | None,
                    diag: Tensor) -> list[tuple[Tensor, Tensor | None] | None]:
    """(W_kk, b_kk) of every diagonal pair k = 0..N, or None where both vanish (the step is then
    explicit). Which steps are implicit depends on the weights only: decided once, not per step."""
    Wd = weights.index_select(1, diag).unbind(1)
    bd = [None] * len(Wd) if bias is None else bias.index_select(1, diag).unbind(1)
    return [(W, b) if bool(torch.any(W != 0)) or (b is not None and bool(torch.any(b != 0))) else None
            for W, b in zip(Wd, bd, strict=True)]


def _implicit_step(terms: _Terms, E: Tensor, diagonal: tuple[Tensor, Tensor | None], phi: Tensor,
                   hw: float, how: _Implicit, where: tuple[int, int]) -> tuple[Tensor, int]:
    """Solve z = E + hw F(t_k, t_k, z) from the predictor E + hw F(t_k, t_k, z_{k-1}) (``phi``
    holds the features of z_{k-1}): (z_k, the iterations it took). ``where``: (k, N), for the error."""
    W, b = diagonal
    z = E + terms.pair(W, b, phi, hw)  # predictor
    if how.method == "pc":
        for _ in range(how.corrections):
            z = E + terms.pair(W, b, terms.features(z), hw)
        return z, how.corrections
    for it in range(how.max_iter):
        z_new = E + terms.pair(W, b, terms.features(z), hw)
        delta = float((z_new - z).abs().max())
        z = z_new
        if delta <= how.tol * (1.0 + float(z.abs().max())):
            return z, it + 1
        if it == how.max_iter - 1 or not math.isfinite(delta):
            raise RuntimeError(
                f"trapezoid fixed-point iteration did not converge at step {where[0]} of "
                f"{where[1]} within max_iter={how.max_iter} (last change {delta:.3e}); "
                "take more steps or use implicit='pc'")
    return z, 0  # max_iter = 0: the predictor alone


def march(
    z0: Tensor,
    weights: Tensor,
    bias: Tensor | None,
    steps: int,
    scale: float,
    act: Activation,
    *,
    form: str = "A",
    op: Operator | None = None,
    op_params: Params | None = None,
    rule: str = "rectangle",
    implicit: str = "fixed_point",
    tol: float = 1e-13,
    max_iter: int = 100,
    corrections: int = 1,
) -> tuple[list[Tensor], int]:
    """States [z_0, ..., z_N] of the quadrature scheme, and the most fixed-point iterations a step
    took (0 for explicit steps).

    z0: (B, n, m). weights: (B, P, C, F) pair weights K_{k,j}, packed without the diagonal for
    'rectangle' and with it for 'trapezoid'. bias: (B, P, m) pair biases b_{k,j}, or None.
    scale: the quadrature step h (1 for the unscaled DenseNet). act: the activation. The options
    are keyword-only: form ('A' or 'B'); op (the within-layer operator; None: dense of width m)
    and op_params (its parameters); rule ('rectangle' or 'trapezoid'); implicit ('fixed_point', to
    ``tol`` in at most ``max_iter`` iterations, or 'pc', ``corrections`` corrector steps). See the
    module docstring.

    The sum is accumulated by columns: once z_j is known, its terms w_{k,j} F(t_k, t_j, z_j) for
    every later row k > j are computed in one product and added to a running accumulator of the
    rows still to come (the off-diagonal weights of a column do not depend on k), so a forward
    pass is O(N) tensor operations and its backward never scatters into O(N^2) pieces.
    """
    check_choice("form", form, FORMS)
    check_choice("rule", rule, RULES)
    check_choice("implicit", implicit, IMPLICIT)
    check_int("steps", steps, 1)
    diagonal = rule == "trapezoid"
    if weights.shape[1] != pair_count(steps, diagonal):
        raise ValueError(f"weights must have {pair_count(steps, diagonal)} pairs on axis 1 for "
                         f"rule={rule!r} and {steps} steps, got shape {tuple(weights.shape)}")
    B, n, m = z0.shape
    terms = _Terms(act, form, Operator("dense", m) if op is None else op,
                   {} if op_params is None else op_params, B, n, m)
    how = _Implicit(implicit, tol, max_iter, corrections)
    cols, diag, sizes = _columns(steps, diagonal)
    cols = cols.to(z0.device)
    Wc = weights.index_select(1, cols).split(sizes, 1)
    bc = [None] * steps if bias is None else bias.index_select(1, cols).split(sizes, 1)
    diag_terms = _diagonal_terms(weights, bias, diag.to(z0.device)) if diagonal else [None] * (steps + 1)

    states = [z0]
    acc: Tensor | None = None
    most = 0
    for j in range(steps):
        w = 0.5 * scale if (diagonal and j == 0) else scale
        phi = terms.features(states[-1])
        contrib = terms.column(Wc[j], bc[j], phi, w)
        acc = contrib if acc is None else acc[:, :, 1:] + contrib
        z = z0 + acc[:, :, 0]
        if diag_terms[j + 1] is not None:
            z, iters = _implicit_step(terms, z, diag_terms[j + 1], phi, 0.5 * scale, how, (j + 1, steps))
            most = max(most, iters)
        states.append(z)
    return states, most


@dataclass(frozen=True)
class VolterraSolution:
    """times: (N + 1,) grid t_k; states: (N + 1, B, n, m); iterations: most fixed-point
    iterations of a step (0 when every step was explicit)."""

    times: Tensor
    states: Tensor
    iterations: int


def solve_volterra(
    kernel: KernelFn,
    z0: Tensor,
    horizon: float,
    steps: int,
    *,
    activation: str | Activation = "tanh",
    form: str = "A",
    rule: str = "rectangle",
    bias: KernelFn | None = None,
    operator: Operator | None = None,
    op_params: Params | None = None,
    implicit: str = "fixed_point",
    tol: float = 1e-13,
    max_iter: int = 100,
    corrections: int = 1,
) -> VolterraSolution:
    """Solve the Volterra equation of the module docstring on the grid t_k = k T / N.

    kernel(t, s): for paired 1-D tensors of times returns the weights K(t_i, s_i) of shape
    (B, len(t), C, F) (for the dense operator C = F = m). bias(t, s): (B, len(t), m) or None.
    z0: (B, n, m). activation: a name of ``resdyn.models.activations`` or an Activation.
    rule: 'rectangle' or 'trapezoid'; implicit: 'fixed_point' (to ``tol``, at most ``max_iter``)
    or 'pc' (predictor and ``corrections`` corrector steps).
    """
    check_positive("horizon", horizon)
    check_int("steps", steps, 1)
    check_choice("rule", rule, RULES)
    act = activation if isinstance(activation, Activation) else get_activation(activation)
    h = horizon / steps
    k, j = pair_nodes(steps, diagonal=rule == "trapezoid")
    t = k.to(z0.dtype) * h
    s = j.to(z0.dtype) * h
    W = kernel(t, s)
    b = None if bias is None else bias(t, s)
    states, iters = march(z0, W, b, steps, h, act, form=form, op=operator, op_params=op_params,
                          rule=rule, implicit=implicit, tol=tol, max_iter=max_iter,
                          corrections=corrections)
    times = torch.arange(steps + 1, dtype=z0.dtype, device=z0.device) * h
    return VolterraSolution(times, torch.stack(states), iters)

"""PAC-Bayes risk certificates: the binary kl and its exact inversion, Gaussian KL, the
PAC-Bayes-kl bound with a union over a prior-scale grid, the Monte-Carlo step, their
composition, and the bound objectives a stochastic network is trained on.

Symbols (docs/theory.md, "PAC-Bayes risk certificates"): Q the posterior, P the prior, n the
number of examples the bound uses, ell a loss in [0, 1], R(Q) = E_Q E_D ell the risk of the
stochastic predictor, R_S(Q) its empirical risk on the n examples, hat R_m the mean of R_S over m
networks drawn from Q, kl(q || p) = q ln(q/p) + (1-q) ln((1-q)/(1-p)) the binary kl, and
kl^{-1}(q, c) = sup {p in [q, 1] : kl(q || p) <= c}.

* PAC-Bayes-kl (Seeger 2002, Maurer 2004): with probability >= 1 - delta over S, for all Q,
  kl(R_S(Q) || R(Q)) <= (KL(Q || P) + ln(2 sqrt(n) / delta)) / n.
* Monte-Carlo step (Langford and Caruana 2001): with probability >= 1 - delta' over the m draws,
  R_S(Q) <= kl^{-1}(hat R_m, ln(2 / delta') / m).
* Union over a grid of K prior scales fixed before seeing S: delta becomes delta / K for each.
* Certificate: R(Q) <= kl^{-1}(kl^{-1}(hat R_m, ln(2/delta')/m), (KL + ln(2 K sqrt(n)/delta)) / n)
  with probability >= 1 - delta - delta'.

Everything here is float64 and pure: tensors in, tensors or floats out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

__all__ = [
    "OBJECTIVES",
    "Certificate",
    "HoldoutGap",
    "bound_objective",
    "bounded_cross_entropy",
    "certify",
    "gaussian_kl",
    "holdout_gap",
    "kl_bernoulli",
    "kl_inv",
    "mc_risk_bound",
    "pac_bayes_kl_bound",
    "pac_bayes_term",
    "posterior_kl",
]

OBJECTIVES = ("erm", "f-classic", "f-quad", "f-lambda")


def _f64(v: float | Tensor) -> Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


def kl_bernoulli(q: float | Tensor, p: float | Tensor) -> Tensor:
    """kl(q || p) for q, p in [0, 1], with 0 ln 0 = 0 (+inf where p hits 0 or 1 and q does not)."""
    q, p = _f64(q), _f64(p)
    return torch.xlogy(q, q) - torch.xlogy(q, p) + torch.xlogy(1 - q, 1 - q) - torch.xlogy(1 - q, 1 - p)


def kl_inv(q: float | Tensor, c: float | Tensor, iters: int = 200) -> Tensor:
    """kl^{-1}(q, c) = sup {p in [q, 1] : kl(q || p) <= c}, elementwise, by bisection.

    p -> kl(q || p) is continuous and increasing on [q, 1], so the set is an interval [q, p*]
    and bisection keeps kl(q || lo) <= c < kl(q || hi). ``iters`` halvings shrink [q, 1] below
    float64 spacing (2^-200); the upper end ``hi`` is returned, so the answer is never below p*
    (a bound stays a bound). q = 1 gives 1; c = 0 gives q.
    """
    q, c = torch.broadcast_tensors(_f64(q), _f64(c))
    if bool(torch.any((q < 0) | (q > 1) | torch.isnan(q))):
        raise ValueError("kl_inv: q must lie in [0, 1]")
    if bool(torch.any((c < 0) | torch.isnan(c))):
        raise ValueError("kl_inv: c must be >= 0")
    lo, hi = q.clone(), torch.ones_like(q)
    ok_at_one = kl_bernoulli(q, hi) <= c  # only when q = 1 (kl(q || 1) = inf otherwise)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        inside = kl_bernoulli(q, mid) <= c
        lo = torch.where(inside, mid, lo)
        hi = torch.where(inside, hi, mid)
    hi = torch.where(c == 0, q, hi)
    return torch.where(ok_at_one, torch.ones_like(q), hi)


def pac_bayes_term(kl: float | Tensor, n: int | Tensor, delta: float, grid_size: int = 1) -> Tensor:
    """(KL + ln(2 K sqrt(n) / delta)) / n: the right side of PAC-Bayes-kl with a K-point union."""
    n = _f64(n)
    return (_f64(kl) + torch.log(2 * grid_size * torch.sqrt(n) / delta)) / n


def pac_bayes_kl_bound(risk_S: float | Tensor, kl: float | Tensor, n: int | Tensor, delta: float,
                       grid_size: int = 1) -> Tensor:
    """kl^{-1}(R_S(Q), (KL + ln(2 K sqrt(n) / delta)) / n): Seeger's bound, delta split over K priors."""
    return kl_inv(risk_S, pac_bayes_term(kl, n, delta, grid_size))


def mc_risk_bound(mean: float | Tensor, m: int | Tensor, delta_mc: float | Tensor) -> Tensor:
    """kl^{-1}(hat R_m, ln(2 / delta') / m): the empirical risk of Q from m draws (Langford and
    Caruana 2001), for draws whose per-draw risks lie in [0, 1]."""
    return kl_inv(mean, torch.log(2 / _f64(delta_mc)) / _f64(m))


def gaussian_kl(mu_q: Tensor, sigma_q: Tensor, mu_p: Tensor, sigma_p: Tensor | float) -> Tensor:
    """KL(N(mu_q, diag sigma_q^2) || N(mu_p, diag sigma_p^2)) summed over every axis but the
    first (the model axis): shape (E,).

    Per coordinate: ln(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2.
    """
    sigma_p = torch.as_tensor(sigma_p, dtype=mu_q.dtype, device=mu_q.device)
    sigma_p = sigma_p.expand(mu_q.shape[:1] + sigma_p.shape[1:]) if sigma_p.dim() else sigma_p.expand(
        mu_q.shape[:1])

    def one(mq: Tensor, sq: Tensor, mp: Tensor, sp: Tensor) -> Tensor:
        per = torch.log(sp) - torch.log(sq) + (sq.square() + (mq - mp).square()) / (2 * sp.square()) - 0.5
        return per.sum()

    # One model at a time: a vectorised kernel (log, a reduction) may round differently with the
    # model's entries at another offset of a stack of E, and a model's KL must not depend on its
    # batch-mates.
    return torch.stack([one(mu_q[e], sigma_q[e], mu_p[e], sigma_p[e]) for e in range(mu_q.shape[0])])


def posterior_kl(mu: Mapping[str, Tensor], sigma: Mapping[str, Tensor], prior_mu: Mapping[str, Tensor],
                 prior_sigma: float | Tensor) -> Tensor:
    """KL(Q || P) over every parameter, shape (E,): Q = N(mu, diag sigma^2) and
    P = N(prior_mu, prior_sigma^2 I), each a dict of (E, ...) tensors with the same keys.
    ``prior_sigma`` is one number or an (E,) tensor (one scale per model)."""
    if set(mu) != set(prior_mu) or set(mu) != set(sigma):
        raise ValueError(f"posterior_kl: posterior keys {sorted(mu)} differ from prior keys "
                         f"{sorted(prior_mu)}")
    total = None
    for k in sorted(mu):
        s_p = torch.as_tensor(prior_sigma, dtype=mu[k].dtype, device=mu[k].device)
        if s_p.dim() == 1:
            s_p = s_p.view(-1, *([1] * (mu[k].dim() - 1)))
        part = gaussian_kl(mu[k], sigma[k], prior_mu[k], s_p)
        total = part if total is None else total + part
    return total


def bounded_cross_entropy(out: Tensor, y: Tensor, p_min: float) -> Tensor:
    """ell(f(x), y) = -ln max(softmax(f)_y, p_min) / ln(1 / p_min), a cross-entropy in [0, 1]
    (Perez-Ortiz et al. 2021 clamp the probabilities the same way)."""
    if not 0 < p_min < 1:
        raise ValueError(f"p_min must lie in (0, 1), got {p_min!r}")
    logp = torch.log_softmax(out, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return -torch.clamp(logp, min=math.log(p_min)) / math.log(1 / p_min)


def bound_objective(name: str, risk: Tensor, kl: Tensor, n: Tensor | int, delta: float) -> Tensor:
    """Training objective of Perez-Ortiz et al. (2021), per model, from a [0, 1] empirical risk
    ``risk`` (E,), KL (E,) and n; with B = (KL + ln(2 sqrt(n) / delta)) / n:

    * 'erm': risk (KL ignored);
    * 'f-classic': risk + sqrt(B / 2) (McAllester's form);
    * 'f-quad': (sqrt(risk + B / 2) + sqrt(B / 2))^2;
    * 'f-lambda': risk / (1 - lambda/2) + B / (lambda (1 - lambda/2)), lambda at its minimiser
      for the current (risk, B), 2 / (sqrt(2 risk / B + 1) + 1), held fixed in the gradient
      (the alternating minimisation of Thiemann et al. 2017).
    """
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(map(repr, OBJECTIVES))}; got {name!r}")
    if name == "erm":
        return risk
    B = pac_bayes_term(kl, n, delta).to(risk)
    if name == "f-classic":
        return risk + torch.sqrt(B / 2)
    if name == "f-quad":
        return (torch.sqrt(risk + B / 2) + torch.sqrt(B / 2)).square()
    lam = (2 / (torch.sqrt(2 * risk.detach() / B.detach() + 1) + 1)).clamp(1e-6, 1.0)
    return risk / (1 - lam / 2) + B / (lam * (1 - lam / 2))


@dataclass(frozen=True)
class Certificate:
    """The certificate and every term it is made of (see the module doc).

    mc_mean: hat R_m; m: draws; delta_mc: delta'; sample_risk_bound: kl^{-1}(hat R_m, ln(2/delta')/m);
    kl: KL(Q || P) at the chosen prior scale; n; delta: delta of PAC-Bayes-kl (split over the grid);
    grid_size: K; prior_scale: the chosen scale; pac_bayes_term: (KL + ln(2 K sqrt(n)/delta)) / n;
    value: the certificate, holding with probability >= 1 - delta - delta'.
    """

    mc_mean: float
    m: int
    delta_mc: float
    sample_risk_bound: float
    kl: float
    n: int
    delta: float
    grid_size: int
    prior_scale: float
    pac_bayes_term: float
    value: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def lines(self, label: str = "certificate") -> list[str]:
        """The composition term by term, for printing."""
        c = self
        return [
            f"{label}: R(Q) <= {c.value:.6f} with probability >= 1 - {c.delta} - {c.delta_mc} "
            f"= {1 - c.delta - c.delta_mc:.4f}",
            f"  Monte-Carlo: hat R_m = {c.mc_mean:.6f} over m = {c.m} draws; "
            f"R_S(Q) <= kl^-1({c.mc_mean:.6f}, ln(2/{c.delta_mc})/{c.m}) = {c.sample_risk_bound:.6f}"
            f"  [delta' = {c.delta_mc}]",
            f"  PAC-Bayes-kl: KL(Q||P) = {c.kl:.4f} at prior scale {c.prior_scale:g}, n = {c.n}, "
            f"K = {c.grid_size} prior scales: (KL + ln(2 K sqrt(n)/delta))/n = {c.pac_bayes_term:.6f}"
            f"  [delta = {c.delta}, {c.delta / c.grid_size:g} per scale]",
            f"  R(Q) <= kl^-1({c.sample_risk_bound:.6f}, {c.pac_bayes_term:.6f}) = {c.value:.6f}",
        ]


def certify(mc_mean: float, m: int, kls: Tensor | list[float], prior_scales: list[float], n: int,
            delta: float = 0.025, delta_mc: float = 0.01) -> Certificate:
    """The certificate at the best of K prior scales fixed in advance (``kls[j]`` is KL(Q || P_j)):
    min_j kl^{-1}(kl^{-1}(hat R_m, ln(2/delta')/m), (KL_j + ln(2 K sqrt(n)/delta)) / n)."""
    kls = _f64(kls).flatten()
    K = len(prior_scales)
    if len(kls) != K or K < 1:
        raise ValueError(f"certify: {len(kls)} KL values for {K} prior scales")
    if not (0 < delta < 1 and 0 < delta_mc < 1 and delta + delta_mc < 1):
        raise ValueError(f"delta = {delta} and delta_mc = {delta_mc} must be in (0, 1) with sum < 1")
    risk_S = float(mc_risk_bound(mc_mean, m, delta_mc))
    terms = pac_bayes_term(kls, n, delta, K)
    values = kl_inv(torch.full_like(terms, risk_S), terms)
    j = int(torch.argmin(values))
    return Certificate(float(mc_mean), int(m), float(delta_mc), risk_S, float(kls[j]), int(n),
                       float(delta), K, float(prior_scales[j]), float(terms[j]), float(values[j]))


@dataclass(frozen=True)
class HoldoutGap:
    """Why a certificate exceeds the hold-out bound of the prior mean on the same n bound examples:
    certificate - hold-out = noise + monte_carlo + sqrt_n + kl, the steps of the path

        kl^-1(k / n, c_0) -> kl^-1(G, c_0) -> kl^-1(G_m, c_0) -> kl^-1(G_m, c_1) -> kl^-1(G_m, c_2),

    from the hold-out bound (first) to the certificate (last), with c_0 = ln(1 / delta) / n,
    c_1 = ln(2 sqrt(n) / delta) / n and c_2 = (KL + ln(2 sqrt(n) / delta)) / n: ``noise``, the
    Monte-Carlo estimate G of the posterior's Gibbs error on S_b against the prior mean's error
    k / n (negative where the posterior errs less); ``monte_carlo``, G against its upper bound
    G_m = kl^-1(G, ln(2 / delta') / m); ``sqrt_n``,
    the ln(2 sqrt(n)) that PAC-Bayes-kl pays and a test-set bound does not; ``kl``, KL(Q || P)."""

    noise: float
    monte_carlo: float
    sqrt_n: float
    kl: float

    @property
    def total(self) -> float:
        """certificate - hold-out bound."""
        return self.noise + self.monte_carlo + self.sqrt_n + self.kl


def holdout_gap(prior_error: float, gibbs: float, sample_risk_bound: float, kl: float, n: int,
                delta: float) -> HoldoutGap:
    """:class:`HoldoutGap` of a certificate computed at ``delta`` (one prior scale) beside the
    hold-out bound at the same ``delta``: ``prior_error`` k / n, ``gibbs`` the Gibbs error on S_b,
    ``sample_risk_bound`` its Monte-Carlo bound G_m, ``kl`` KL(Q || P), n bound examples."""
    c0 = math.log(1 / delta) / n
    c1 = float(pac_bayes_term(0.0, n, delta))
    path = [float(kl_inv(q, c)) for q, c in ((prior_error, c0), (gibbs, c0), (sample_risk_bound, c0),
                                            (sample_risk_bound, c1),
                                            (sample_risk_bound, float(pac_bayes_term(kl, n, delta))))]
    return HoldoutGap(*(b - a for a, b in itertools.pairwise(path)))

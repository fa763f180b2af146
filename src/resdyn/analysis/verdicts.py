"""One rule for every verdict (docs/theory.md, 16).

A claim is decided by a test across a stated **replication unit** (the seed, a restart, a
(data, S) pair), never by a point estimate, a single run or a bare threshold:

    held          the test in the claim's favour rejects at alpha:   p_for < alpha,
    not held      the test against the claim rejects at alpha:       p_against < alpha,
    inconclusive  otherwise (a non-rejection is not evidence), or when no test can be run,
                  with the reason in words.

p_for is the p-value of H0: "the claim is false" and p_against that of H0: "the claim is true";
for the complementary one-sided tests used here both cannot be below alpha < 1/2.

Tests provided (n units with values v_1..v_n, mean m, sd s, se = s / sqrt(n), df = n - 1):

* :func:`mean_test` -- claim "E v > c" (or "< c"): one-sided Student t,
  p_for = P(t_df > (m - c)/se) (for "> c"), p_against = P(t_df < (m - c)/se). When every v_i is
  equal (s = 0) the t statistic is undefined and the exact sign test below is used instead.
* :func:`sign_test` -- claim "P(v > c) > 1/2" (most units above c; a value equal to c counts
  against): K = #{v_i > c} ~ Bin(n, 1/2) at the boundary, p_for = P(Bin >= K),
  p_against = P(Bin <= K). Exact; used where exact ties are meaningful (a term that is 0).
* :func:`equivalence_test` -- claim "|E v - c| < m" (TOST): p_for = max of the two one-sided t
  p-values, p_against = the smaller p of the two tests that E v lies beyond c -+ m.
* :func:`joint` -- a claim made of k parts: held when every part is held (an intersection-union
  test, level alpha with no correction, p_for = max of the parts'), not held when some part's
  p_against < alpha / k (Bonferroni, p_against = min(1, k min p_against)), inconclusive otherwise.

Planning (not a test): :func:`units_for_power` -- the smallest n at which the one-sided t test of
:func:`mean_test` rejects at alpha with probability at least ``power`` when the true mean lies
d standard deviations on the claim's side of the bound: power(n) = P(T' > t_(1 - alpha, n - 1))
with T' noncentral t, df n - 1, noncentrality d sqrt(n).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["ALPHA", "VERDICTS", "Claim", "Verdict", "decide", "equivalence_test", "joint", "mean_test",
           "no_test", "sign_test", "units_for_power"]

ALPHA = 0.05
VERDICTS = ("held", "not held", "inconclusive")


@dataclass(frozen=True, init=False)
class Claim:
    """A claim of a paper, the number measured for it, and the verdict of its test.

    text: the claim in words; measured: the number(s) with interval, as shown to a reader;
    verdict: one of 'held' (the test rejects in the claim's favour), 'not held' (the data contradict
    it) or 'inconclusive' (neither: a non-rejection is not support); test: how the verdict was
    reached; values: the raw numbers behind it. Reproductions build claims through
    :meth:`Verdict.claim`, the one rule for every verdict: the test's name
    and p-values go in ``test`` and ``values['verdict']``, the reason of an inconclusive verdict in
    ``measured``. A bool in the verdict's place (or ``held=``, as
    older stored outcomes carry) reads as 'held' / 'not held'.
    """

    text: str
    measured: str
    verdict: str
    test: str
    values: dict[str, Any] = field(default_factory=dict)

    def __init__(self, text: str, measured: str, verdict: str | bool | None = None, test: str = "",
                 values: dict[str, Any] | None = None, *, held: bool | None = None) -> None:
        if verdict is None:
            verdict = held
        if isinstance(verdict, bool):
            verdict = "held" if verdict else "not held"
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)} (or a bool), got {verdict!r}")
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "measured", measured)
        object.__setattr__(self, "verdict", verdict)
        object.__setattr__(self, "test", test)
        object.__setattr__(self, "values", dict(values or {}))

    @property
    def held(self) -> bool:
        """True only for the verdict 'held'."""
        return self.verdict == "held"


def _fmt(p: float | None) -> str:
    return "n/a" if p is None or not math.isfinite(p) else f"{p:.3g}"


@dataclass(frozen=True)
class Verdict:
    """A decided claim: verdict, the test's name (hypotheses, unit, alpha), p_for (the p-value of
    the test in the claim's favour; None when no test could be run), p_against, the replication
    unit and how many units entered, and ``reason``: why it is not held or inconclusive."""

    verdict: str
    test: str
    p_for: float | None
    p_against: float | None
    unit: str
    n: int
    reason: str = ""
    alpha: float = ALPHA

    @property
    def pvalue(self) -> float | None:
        """The p-value the verdict rests on: p_for when held or inconclusive, p_against when not held."""
        return self.p_against if self.verdict == "not held" else self.p_for

    def test_words(self) -> str:
        """The test and its p-values, as the report's 'test' column shows it."""
        if self.p_for is None:
            return f"{self.test}; no test run"
        return (f"{self.test} across {self.n} {self.unit}s, alpha {self.alpha:g}; "
                f"p = {_fmt(self.p_for)} (in favour), p = {_fmt(self.p_against)} (against)")

    def words(self) -> str:
        """The verdict in words: 'held (p = ...)', 'not held (p = ...)' or 'inconclusive: why'."""
        if self.verdict == "inconclusive":
            return f"inconclusive: {self.reason}"
        return f"{self.verdict} ({self.test}, p = {_fmt(self.pvalue)})" + (
            f": {self.reason}" if self.reason else "")

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "test": self.test, "pvalue": self.pvalue, "p_for": self.p_for,
                "p_against": self.p_against, "unit": self.unit, "n": self.n, "reason": self.reason,
                "alpha": self.alpha}

    def claim(self, text: str, measured: str, values: dict[str, Any] | None = None) -> Claim:
        """A :class:`Claim` carrying this verdict: ``measured`` gets the verdict's words appended,
        ``test`` the test and its p-values, ``values['verdict']`` this."""
        return Claim(text, f"{measured}; {self.words()}", self.verdict, self.test_words(),
                     {**(values or {}), "verdict": self.as_dict()})


def decide(test: str, p_for: float, p_against: float, unit: str, n: int, alpha: float = ALPHA,
           why: str = "") -> Verdict:
    """The rule of the module docstring from two p-values."""
    if p_for < alpha:
        return Verdict("held", test, p_for, p_against, unit, n, why, alpha)
    if p_against < alpha:
        return Verdict("not held", test, p_for, p_against, unit, n,
                       why or "the test against the claim rejects", alpha)
    reason = (f"neither test rejects at alpha {alpha:g} (p = {_fmt(p_for)} in favour, "
              f"{_fmt(p_against)} against, {n} {unit}s); a non-rejection is not evidence")
    return Verdict("inconclusive", test, p_for, p_against, unit, n, reason, alpha)


def no_test(test: str, reason: str, unit: str = "seed", n: int = 0) -> Verdict:
    """Inconclusive because no test can be run (too few units, a missing value), with the reason."""
    return Verdict("inconclusive", test, None, None, unit, n, reason)


def _values(values: Sequence[float]) -> np.ndarray:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    return v


def sign_test(values: Sequence[float], bound: float = 0.0, side: str = "greater", unit: str = "seed",
              alpha: float = ALPHA) -> Verdict:
    """Exact sign test of "most units have v > bound" (side 'greater') or "v < bound" ('less');
    a value equal to the bound counts against the claim (module docstring)."""
    v = _values(values)
    n = v.size
    name = f"exact sign test, H1: P(v {'>' if side == 'greater' else '<'} {bound:g}) > 1/2"
    if n == 0:
        return no_test(name, f"no finite value among the {unit}s", unit, 0)
    k = int(np.sum(v > bound)) if side == "greater" else int(np.sum(v < bound))
    p_for = float(stats.binom.sf(k - 1, n, 0.5))
    p_against = float(stats.binom.cdf(k, n, 0.5))
    out = decide(name, p_for, p_against, unit, n, alpha, f"{k} of {n} {unit}s on the claim's side")
    if out.verdict == "inconclusive" and min(p_for, p_against) >= 0.5 ** n and 0.5 ** n >= alpha:
        out = Verdict("inconclusive", name, p_for, p_against, unit, n,
                      f"{k} of {n} {unit}s on the claim's side; with {n} {unit}s the exact sign test "
                      f"cannot reach p < {alpha:g} (smallest possible p {0.5 ** n:.3g})", alpha)
    return out


def mean_test(values: Sequence[float], bound: float = 0.0, side: str = "greater", unit: str = "seed",
              alpha: float = ALPHA, what: str = "mean") -> Verdict:
    """One-sided t test across units of "E v > bound" (side 'greater') or "E v < bound" ('less');
    the exact sign test when every value is equal (module docstring)."""
    if side not in ("greater", "less"):
        raise ValueError(f"side must be 'greater' or 'less', got {side!r}")
    v = _values(values)
    n = v.size
    rel = ">" if side == "greater" else "<"
    name = f"one-sided t, H1: {what} {rel} {bound:.4g}"
    if n < 2:
        return no_test(name, f"{n} {unit}(s): a test across {unit}s needs at least 2", unit, n)
    s = float(v.std(ddof=1))
    if s == 0.0:
        return sign_test(v, bound, side, unit, alpha)
    t = (float(v.mean()) - bound) / (s / math.sqrt(n))
    up, down = float(stats.t.sf(t, n - 1)), float(stats.t.cdf(t, n - 1))
    p_for, p_against = (up, down) if side == "greater" else (down, up)
    return decide(name, p_for, p_against, unit, n, alpha)


def equivalence_test(values: Sequence[float], center: float, margin: float, unit: str = "seed",
                     alpha: float = ALPHA, what: str = "mean") -> Verdict:
    """TOST across units of "|E v - center| < margin" (module docstring); an interval claim
    "lo < E v < hi" is center (lo + hi)/2, margin (hi - lo)/2."""
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin!r}")
    v = _values(values)
    n = v.size
    name = f"TOST, H1: |{what} - {center:.4g}| < {margin:.4g}"
    if n < 2:
        return no_test(name, f"{n} {unit}(s): a test across {unit}s needs at least 2", unit, n)
    s = float(v.std(ddof=1))
    m = float(v.mean())
    if s == 0.0:
        inside = abs(m - center) < margin
        return no_test(name, f"every {unit} gives {m:.4g} ({'inside' if inside else 'outside'} the "
                             "margin): no spread, so no t test", unit, n)
    se = s / math.sqrt(n)
    p_lo = float(stats.t.sf((m - center + margin) / se, n - 1))   # H0: E v <= center - margin
    p_hi = float(stats.t.cdf((m - center - margin) / se, n - 1))  # H0: E v >= center + margin
    beyond_hi = float(stats.t.sf((m - center - margin) / se, n - 1))  # H1: E v > center + margin
    beyond_lo = float(stats.t.cdf((m - center + margin) / se, n - 1))  # H1: E v < center - margin
    return decide(name, max(p_lo, p_hi), min(beyond_hi, beyond_lo), unit, n, alpha)


def joint(parts: Sequence[tuple[str, Verdict]], alpha: float = ALPHA) -> Verdict:
    """A claim made of labelled parts (module docstring): intersection-union for 'held',
    Bonferroni over the k parts for 'not held'."""
    k = len(parts)
    if k == 0:
        return no_test("joint test", "no part of the claim could be tested", "part", 0)
    if k == 1:
        return parts[0][1]
    tested = [(lab, v) for lab, v in parts if v.p_for is not None]
    untested = [f"{lab} ({v.reason})" for lab, v in parts if v.p_for is None]
    name = f"all of {k} parts (intersection-union; Bonferroni x{k} against)"
    if tested:
        lab_min, v_min = min(tested, key=lambda lv: lv[1].p_against)
        p_against = min(1.0, k * v_min.p_against)
    else:
        lab_min, p_against = "", 1.0
    if not untested and all(v.verdict == "held" for _, v in parts):
        p_for = max(v.p_for for _, v in parts)
        return Verdict("held", name, p_for, p_against, "part", k, "", alpha)
    p_for = max((v.p_for for _, v in tested), default=None)
    if p_against < alpha:
        return Verdict("not held", name, p_for, p_against, "part", k,
                       f"{lab_min}: the test against the claim rejects ({v_min.test})", alpha)
    why = []
    if untested:
        why.append(f"no test for {', '.join(untested)}")
    not_held_alone = [lab for lab, v in tested if v.verdict != "held"]
    if not_held_alone:
        why.append(f"not shown for {', '.join(not_held_alone)}")
    why.append(f"no part rejected against the claim at alpha {alpha:g} / {k}")
    return Verdict("inconclusive", name, p_for, p_against, "part", k, "; ".join(why), alpha)


def units_for_power(effect: float, alpha: float = ALPHA, power: float = 0.8,
                    most: int = 1_000_000) -> int | None:
    """The smallest number of units n >= 2 at which :func:`mean_test` rejects in the claim's favour
    with probability at least ``power``, if the true mean lies ``effect`` = d standard deviations
    on the claim's side of the bound (module docstring); None when no n up to ``most`` does (always
    when d <= 0: no sample size decides a claim in its favour whose mean is on the bound or beyond
    it, against the claim)."""
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 1/2), got {alpha!r}")
    if not alpha < power < 1:
        raise ValueError(f"power must be in (alpha, 1), got {power!r}")
    if most < 2:
        raise ValueError(f"most must be at least 2 (a t test needs two units), got {most!r}")
    if not math.isfinite(effect):
        raise ValueError(f"effect must be a finite number of standard deviations, got {effect!r}")

    def reaches(n: int) -> bool:
        crit = stats.t.isf(alpha, n - 1)
        return float(stats.nct.sf(crit, n - 1, effect * math.sqrt(n))) >= power

    if effect <= 0 or not reaches(most):
        return None
    lo, hi = 1, 2  # reaches(lo) is false (no test at n = 1), reaches(hi) is searched for
    while not reaches(hi):
        lo, hi = hi, min(2 * hi, most)
    while hi - lo > 1:  # the power grows with n for effect > 0
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
    return hi

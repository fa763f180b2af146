"""Exploratory study: PAC-Bayes certificates of per-layer ResNets under the Brownian depth prior
and the i.i.d.-over-layers prior, against depth (docs/depth-prior.md).

The same recipe as the `certificates` spec (`resdyn reproduce certificates`, which calls the same
resdyn.training.certify.certify_sample per cell and stores every cell with its weights); this
script ran it before that spec existed and writes JSON lines instead of a store, so that seeds
can run as separate processes on a small machine. For each data set, seed and depth L it runs
certify_sample under both priors: the prior mean trained on the prior half with the engine, the
prior scale picked by a rule that reads the prior half only, the posterior trained on the whole
sample, the certificate computed on the bound half. One JSON line per
(data, seed, L, prior, recipe) goes to OUT; lines already there are skipped, so a cut run resumes.
Under a recipe whose prior means are continued in depth (CONTINUED), a depth's prior mean
starts from the one above it on the ladder DEPTHS, saved beside OUT (OUT.priors/), so the depths
of a seed run in order.

    python scripts/depth_certificates.py runs/depth-certificates.jsonl --recipe 4 [--quick]
        [--seeds 0,1,2] [--data mnist-5k] [--depths 256] [--priors brownian]
    python scripts/depth_certificates.py runs/depth-certificates.jsonl --report [--recipe 1]
    python scripts/depth_certificates.py runs/depth-certificates.jsonl --power
    python scripts/depth_certificates.py runs/depth-certificates.jsonl --attach RERUN.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from resdyn.analysis.verdicts import ALPHA, mean_test, units_for_power
from resdyn.data import load, subsample
from resdyn.experiments.certificates import SPLIT_LIMIT, claim_alpha, holdout_terms, split_claim
from resdyn.models.base import Params, init_params
from resdyn.models.resnet import ResNet
from resdyn.training.certify import PRIORS, CertificateConfig, certify_sample, kl_in_depth
from resdyn.training.engine import TrainConfig

# Fixed before any bound half was read: data set, S (its largest), width, prior-mean steps, and
# the deepest L run. mnist-5k stops at L = 64: at L = 256 one posterior draw is 524,288 layer
# weights, and the 24,000 per-example draws of its bound half and test set (per prior) were more
# than this session's two cores could give (digits at L = 256, a quarter of that, took 8 min).
# A later session ran mnist-5k at L = 256 under the Brownian prior only (--data mnist-5k
# --depths 256 --priors brownian), the prior the depth claims are about.
PLANS = {"two_spirals": (4000, 16, 2000, 256), "digits": (1200, 32, 1500, 256),
         "mnist-5k": (4000, 32, 1500, 64)}
DEPTHS = (4, 16, 64, 256)
SEEDS = (0, 1, 2)
SCALES = (0.1, 0.03, 0.01)  # the rule takes the largest whose prior-half Gibbs error is within
SCALE_SLACK = 0.01          # SCALE_SLACK of the prior mean's prior-half error (else the last)
POSTERIOR_LR, POSTERIOR_STEPS, ROUNDS, TEST_ROUNDS = 0.1, 1000, 10, 2
DELTA, DELTA_MC, P_MIN = 0.025, 0.01, 1e-2
# The recipes, in the order they were run on these samples (rows without "recipe" are the first).
# 1: the posterior's last SGD iterate. 2: the mean of its iterates over the last half of the steps
# (train_posterior's ``average``), chosen after recipe 1's KLs (0.15-9.4 nats on two spirals)
# were seen to be mostly the last steps' gradient noise, and after 16 exploratory cells of recipe
# 2 (two spirals, seeds 1, 2, 6, 7, L = 16, 64, 256) were looked at. Its certificates are paid
# for as the second recipe on these bound halves: delta / 7 and delta_mc / 7 (attempts = 7, below
# 6 / (pi^2 2^2) = 1 / 6.58, the sequential union's share of a second recipe).
RECIPES = {1: {"average": 0.0, "attempts": 1}, 2: {"average": 0.5, "attempts": 7},
           3: {"average": 0.5, "attempts": 15}, 4: {"average": 0.5, "attempts": 27}}
# 3: recipe 2 with prior means continued in depth (multilevel training): the prior mean at the
# shallowest depth is trained from the smooth initialisation as before; at every deeper L it starts
# from the prior mean one depth up the ladder, deepened (ResNet.deepened: the layer path linearly
# interpolated at the finer layer times), and is trained on S_p for CONTINUED[3] = (steps, lr)
# more. Chosen after recipe 2 left two spirals' KL ratio inconclusive, its largest ratios being
# cells whose prior means were trained apart (seed 6: L = 256's worse than L = 16's); the steps and
# rate were picked on S_p and on fresh two-spirals points (seeds 0 and 6; docs/depth-prior.md), no
# bound half or test set read. Paid as the third recipe: delta / 15 and delta_mc / 15 (below
# 6 / (pi^2 3^2) = 1 / 14.8), and its claims at the sequential level of their look (SEQUENTIAL).
CONTINUED = {3: (500, 1e-2)}
PRIOR_LR = 1e-2
# 4: recipe 2 with the prior mean's Adam rate annealed, PRIOR_SCHEDULE[4] = cosine from PRIOR_LR to
# 0 over its steps (no warm-up), so that the prior mean is not its last constant-rate iterate,
# which jitters with the minibatches. Chosen after recipe 3 left two spirals' KL ratio
# inconclusive: on 4,000-point samples of a fresh two-spirals draw (generator seed 987,654; no
# bound half or test set of this study), seeds 0-7, L = 16 and 256, the one variant tried against
# recipe 2 as control (scripts/explore_prior_schedule.py, its rows docs/depth-explore-recipe4.jsonl;
# docs/depth-prior.md). Paid as the fourth recipe: delta / 27
# and delta_mc / 27 (below 6 / (pi^2 4^2) = 1 / 26.3); its claims are the fifth look at two
# spirals, at 6 alpha / (pi^2 5^2). Run on two spirals only, at seeds fixed before the run.
PRIOR_SCHEDULE = {4: "cosine"}
# How many times a data set's claims were read, per recipe: recipe 1 on two spirals at seeds 0-2
# (the certificate ratio inconclusive, p = 0.096; the KL ratio too), then with seeds 3-7 added
# (Brownian prior); recipe 2 is one more look at every data set, recipes 3 and 4 one more each on
# two spirals.
# Recipes 1 and 2 test each look at alpha / looks (Bonferroni over looks; claim_alpha, as the
# spec's analysis); recipes in SEQUENTIAL test their k-th look at 6 alpha / (pi^2 k^2), the
# share of a union over looks whose shares sum to alpha; the union stays at alpha only if the
# earlier looks are read at their shares too (docs/depth-prior.md lists which verdicts of recipes
# 1 and 2, tested at alpha / looks, would change).
LOOKS = {1: {"two_spirals": 2}, 2: {"two_spirals": 3, "digits": 2, "mnist-5k": 2},
         3: {"two_spirals": 4, "digits": 3, "mnist-5k": 3},
         4: {"two_spirals": 5, "digits": 4, "mnist-5k": 4}}
SEQUENTIAL = {3, 4}
# The depth claims, fixed before the study: field(L = deepest) <= limit x field(L = 16).
RATIO_CLAIMS = (("certificate", 1.1), ("kl", 1.5))


def level(name: str, recipe: int) -> float:
    """The level at which ``recipe``'s claims on data set ``name`` are tested (LOOKS, SEQUENTIAL)."""
    looks = LOOKS[recipe]
    if recipe in SEQUENTIAL:
        return 6 * ALPHA / (math.pi**2 * looks.get(name, 1) ** 2)
    return claim_alpha(name, looks)


def certificate_config(kind: str, recipe: int, quick: bool = False) -> CertificateConfig:
    """The study's certificate settings for the prior ``kind`` under ``recipe``."""
    # No data-independent baseline: the study's rows predate it, and it would double the draws.
    return CertificateConfig(prior=kind, baseline=False, scales=SCALES, scale_slack=SCALE_SLACK,
                             posterior_lr=POSTERIOR_LR,
                             posterior_steps=POSTERIOR_STEPS // (4 if quick else 1), rounds=ROUNDS,
                             test_rounds=TEST_ROUNDS, delta=DELTA, delta_mc=DELTA_MC, p_min=P_MIN,
                             **RECIPES[recipe])


def cell(name: str, seed: int, L: int, quick: bool, priors: tuple[str, ...] = PRIORS,
         recipe: int = max(RECIPES), parent: Path | None = None) -> tuple[list[dict], Params]:
    """The rows of one (data, seed, L) under each prior of ``priors``, and the prior mean. Under a
    recipe of CONTINUED, ``parent`` is the saved prior mean one depth up the ladder (None at the
    shallowest depth, which starts from the initialisation)."""
    S, width, prior_steps, _ = PLANS[name]
    base = load(name)
    idx = subsample(base, S, seed)
    model = ResNet(in_dim=base.in_dim, out_dim=base.num_classes, width=width, depth=L, activation="tanh")
    start = init_params(model, [seed], torch.float32)
    parent_depth, lr = None, PRIOR_LR
    if recipe in CONTINUED and DEPTHS.index(L) > 0:
        if parent is None:
            raise ValueError(f"recipe {recipe} continues the prior mean of the depth above L = {L}: "
                             "pass its saved prior mean as parent")
        shallow = torch.load(parent)
        parent_depth = shallow["W"].shape[1]
        _, start = replace(model, depth=parent_depth).deepened(shallow, L)
        prior_steps, lr = CONTINUED[recipe]
    prior_config = TrainConfig(steps=prior_steps // (4 if quick else 1), batch_size=128,
                               lr_schedule=PRIOR_SCHEDULE.get(recipe, "constant"))
    rows, mean = [], None
    for kind in priors:
        out = certify_sample(model, start, base, idx, seed, lr, prior_config,
                             certificate_config(kind, recipe, quick))
        mean = out.prior_mean
        hist = out.posterior_history
        rows.append({"data": name, "S": S, "seed": seed, "L": L, "prior": kind, **out.numbers,
                     "test_n": out.numbers["test_draws"], "recipe": recipe,
                     "kl_in_depth": kl_in_depth(model, kind, mean, out.posterior, out.numbers["scale"]),
                     **({"continued_from": parent_depth} if recipe in CONTINUED else {}),
                     "objective_first": float(hist[:20, 0].mean()),
                     "objective_last": float(hist[-20:, 0].mean()), "quick": quick})
    return rows, mean


def _by(rows: list[dict], **keys) -> dict[int, dict]:
    """Rows matching ``keys``, by seed."""
    return {r["seed"]: r for r in rows if all(r[k] == v for k, v in keys.items())}


def _verdict(v) -> str:
    def fmt(p: float | None) -> str:
        return "-" if p is None else f"{p:.3g}"

    return (f"**{v.verdict}** ({v.test}; p_for {fmt(v.p_for)}, p_against {fmt(v.p_against)}, {v.n} seeds, "
            f"alpha {v.alpha:g})")


def _log_ratios(rows: list[dict], name: str, prior: str, field: str, top: int) -> list[float]:
    """log(field at L = top / field at L = 16) per seed that has both."""
    lo, hi = _by(rows, data=name, prior=prior, L=16), _by(rows, data=name, prior=prior, L=top)
    return [math.log(hi[s][field] / lo[s][field]) for s in sorted(set(lo) & set(hi))]


def _ratio_claim(rows: list[dict], name: str, prior: str, field: str, top: int, limit: float,
                 alpha: float) -> str:
    """'field at L = top is at most limit times field at L = 16': a one-sided t-test across seeds
    on log(field_top / field_16) < log(limit)."""
    logs = _log_ratios(rows, name, prior, field, top)
    v = mean_test(logs, bound=math.log(limit), side="less", unit="seed", alpha=alpha)
    ratios = ", ".join(f"{math.exp(x):.3f}" for x in logs)
    return (f"| {name} | {prior} | {field}(L={top}) <= {limit} x {field}(L=16) | ratios {ratios} | "
            f"{_verdict(v)} |")


def report(rows: list[dict], recipe: int) -> None:
    """Markdown: every row of ``recipe``, then its claims, each decided by a test across seeds."""
    rows = [r for r in rows if r.get("recipe", 1) == recipe]
    how = (f", prior means continued in depth ({CONTINUED[recipe][0]} steps at rate "
           f"{CONTINUED[recipe][1]:g} per rung)" if recipe in CONTINUED else "")
    if recipe in PRIOR_SCHEDULE:
        how += f", the prior mean's rate on a {PRIOR_SCHEDULE[recipe]} schedule"
    print(f"Recipe {recipe}: {RECIPES[recipe]}{how}.")
    print()
    print("| data | S | seed | L | prior | s | certificate | hold-out | Gibbs (bound half) | Gibbs test "
          "| KL | layer KL under i.i.d. | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["data"], r["prior"], r["L"], r["seed"])):
        print(f"| {r['data']} | {r['S']} | {r['seed']} | {r['L']} | {r['prior']} | {r['scale']} | "
              f"{r['certificate']:.4f} | {r['holdout']:.4f} | {r['gibbs_bound']:.4f} | "
              f"{r['gibbs_test']:.4f} | {r['kl']:.2f} | {r['layer_kl_under_iid']:.2f} | {r['seconds']:.0f} |")
    print()
    print("Means over seeds (n seeds):")
    print()
    print("| data | L | certificate, Brownian | certificate, i.i.d. | hold-out bound | KL, Brownian "
          "| KL, i.i.d. | Brownian posterior's layer deviation, KL under the i.i.d. prior "
          "| Gibbs test, Brownian |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in sorted({r["data"] for r in rows}):
        for L in sorted({r["L"] for r in rows if r["data"] == name}):
            b = list(_by(rows, data=name, prior="brownian", L=L).values())
            i = list(_by(rows, data=name, prior="iid", L=L).values())
            print(f"| {name} | {L} | {_mean_of(b, 'certificate')} ({len(b)}) | "
                  f"{_mean_of(i, 'certificate')} ({len(i)}) | {_mean_of(b, 'holdout')} | "
                  f"{_mean_of(b, 'kl')} | {_mean_of(i, 'kl')} | {_mean_of(b, 'layer_kl_under_iid')} | "
                  f"{_mean_of(b, 'gibbs_test')} |")
    print()
    print("| data | prior | claim | measured | verdict |")
    print("|---|---|---|---|---|")
    names = sorted({r["data"] for r in rows})
    for name in names:
        depths = sorted({r["L"] for r in rows if r["data"] == name})
        alpha = level(name, recipe)
        for field, limit in RATIO_CLAIMS:
            print(_ratio_claim(rows, name, "brownian", field, depths[-1], limit, alpha))
        for L in depths:
            by = _by(rows, data=name, prior="brownian", L=L)
            diffs = [by[s]["certificate"] - by[s]["holdout"] for s in sorted(by)]
            v = mean_test(diffs, bound=0.0, side="less", unit="seed", alpha=alpha)
            print(f"| {name} | brownian | certificate < hold-out bound at L={L} | differences "
                  f"{', '.join(f'{d:+.4f}' for d in diffs)} | {_verdict(v)} |")
    print("\nCertificate minus hold-out bound, term by term (Brownian prior, seed means; "
          "resdyn.theory.pacbayes.holdout_gap):\n")
    terms = holdout_terms(rows)
    if terms:
        print("| " + " | ".join(terms[0]) + " |")
        print("|" + "---|" * len(terms[0]))
    for t in terms:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in t.values()) + " |")
    split_report(rows)
    margins = []
    for r in rows:
        g = r["gibbs_test"]
        se = math.sqrt(max(g * (1 - g), 1e-12) / r["test_n"])
        margins.append(((r["certificate"] - g) / se, r))
    m, r = min(margins, key=lambda x: x[0])
    print(f"\nSmallest margin of a certificate over its Gibbs test error: {m:.1f} standard errors "
          f"({r['data']}, L={r['L']}, {r['prior']}, seed {r['seed']}: {r['certificate']:.4f} against "
          f"{r['gibbs_test']:.4f}).")


def next_level(rows: list[dict], name: str) -> float:
    """The level of the next look at data set ``name``'s claims: the (k + 1)-th sequential share
    6 alpha / (pi^2 (k + 1)^2), k the latest look that happened, i.e. of a recipe with rows on
    ``name`` (LOOKS also numbers the looks a recipe would have been at data sets it was not run
    on; those did not happen)."""
    k = max(LOOKS[r.get("recipe", 1)].get(name, 1) for r in rows if r["data"] == name)
    return 6 * ALPHA / (math.pi**2 * (k + 1) ** 2)


def power_plan(rows: list[dict], powers: tuple[float, ...] = (0.5, 0.8)) -> None:
    """Markdown: for every ratio claim that no recipe decided, per recipe, the seeds a new run of
    that recipe would need to decide it in its favour at the next look's level with probability
    ``powers``, if the measured mean and SD of the seeds' log ratios were the truth (a plug-in
    estimate: resdyn.analysis.verdicts.units_for_power), and the core-hours of those seeds' cells."""
    print("| recipe | data | claim | seeds | mean log ratio | SD | d | next look's level | "
          + " | ".join(f"seeds for power {p:g}" for p in powers) + " | core-hours per seed |")
    print("|---|---|---|---|---|---|---|---|" + "---|" * (len(powers) + 1))
    claims = []  # (recipe, name, field, limit, top, log ratios, that recipe's rows), in print order
    for recipe in sorted({r.get("recipe", 1) for r in rows}):
        own = [r for r in rows if r.get("recipe", 1) == recipe]
        for name in sorted({r["data"] for r in own}):
            top = max(r["L"] for r in own if r["data"] == name)
            for field, limit in RATIO_CLAIMS:
                logs = _log_ratios(own, name, "brownian", field, top)
                claims.append((recipe, name, field, limit, top, logs, own))
    decided = {(name, field) for recipe, name, field, limit, _, logs, _ in claims
               if mean_test(logs, bound=math.log(limit), side="less", unit="seed",
                            alpha=level(name, recipe)).verdict != "inconclusive"}
    for recipe, name, field, limit, top, logs, own in claims:
        if (name, field) in decided or len(logs) < 2:
            continue
        mean, sd = statistics.fmean(logs), statistics.stdev(logs)
        d = (math.log(limit) - mean) / sd
        alpha = next_level(rows, name)
        never = "none: the mean is past the limit" if d <= 0 else "more than a million"
        need = [units_for_power(d, alpha, p) for p in powers]
        seeds = " | ".join(never if n is None else str(n) for n in need)
        seconds = [statistics.fmean(r["seconds"] for r in _by(own, data=name, prior="brownian", L=L).values())
                   for L in (16, top)]
        print(f"| {recipe} | {name} | {field}(L={top}) <= {limit} x {field}(L=16) | {len(logs)} | "
              f"{mean:.3f} | {sd:.3f} | {d:.3f} | {alpha:.2g} | {seeds} | {sum(seconds) / 3600:.3f} |")


def split_report(rows: list[dict]) -> None:
    """Where the Brownian posteriors of ``rows`` pay their KL in depth (rows with ``kl_in_depth``:
    resdyn.training.certify.kl_in_depth), seed means per data set and L, and the claim, fixed
    before the split was computed on these cells: "the layer KL at the deepest L is at most
    SPLIT_LIMIT times its reading at L = 16" (the same posterior's deviation read at the layer
    times of L = 16, under the same Brownian law there), a one-sided t test across seeds of
    mean log(layers / coarse_16) < log SPLIT_LIMIT at ALPHA (a new hypothesis, about the
    posteriors already certified; resdyn.experiments.certificates.split_claim decides it, and
    scripts/kl_in_depth.py asks it of the image cells)."""
    rows = [r for r in rows if r["prior"] == "brownian" and "kl_in_depth" in r]
    if not rows:
        return
    print("\nWhere the KL is paid (Brownian prior, seed means; `kl_in_depth`): embedding and readout, "
          "layers, and the layers' deviation read at the layer times of L = 4 and 16; the same "
          "deviation under the i.i.d. prior of the same s:\n")
    print("| data | L | seeds | KL | io | layers | at L=4 | at L=16 | i.i.d. layers | i.i.d. at L=16 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in sorted({r["data"] for r in rows}):
        for L in sorted({r["L"] for r in rows if r["data"] == name}):
            parts = [r["kl_in_depth"] for r in rows if r["data"] == name and r["L"] == L]
            cols = [_mean_of(parts, k, f) for k, f in (("kl", ".4f"), ("io", ".4f"), ("layers", ".4f"),
                                                        ("coarse_4", ".4f"), ("coarse_16", ".4f"),
                                                        ("iid_layers", ".2f"), ("iid_coarse_16", ".2f"))]
            print(f"| {name} | {L} | {len(parts)} | " + " | ".join(cols) + " |")
    print("\n| data | L | claim | layers / at L=16, per seed | verdict |")
    print("|---|---|---|---|---|")
    for name in sorted({r["data"] for r in rows}):
        top = max(r["L"] for r in rows if r["data"] == name and "coarse_16" in r["kl_in_depth"])
        by_seed = _by(rows, data=name, L=top)
        ratios, v = split_claim([by_seed[s]["kl_in_depth"] for s in sorted(by_seed)], ALPHA)
        print(f"| {name} | {top} | layer KL <= {SPLIT_LIMIT} x its reading at L = 16 | "
              f"{', '.join(f'{x:.4f}' for x in ratios)} | {_verdict(v)} |")


def _mean_of(rows: list[dict], key: str, spec: str = ".4g") -> str:
    """The mean of ``key`` over the rows that have it, formatted by ``spec``; '-' if none has it."""
    vals = [r[key] for r in rows if key in r]
    return f"{sum(vals) / len(vals):{spec}}" if vals else "-"


def _cell_key(r: dict) -> tuple:
    return r["data"], r["seed"], r["L"], r["prior"], r.get("recipe", 1)


def attach_split(out: Path, rerun: Path) -> int:
    """Copy ``kl_in_depth`` from the rows of ``rerun`` (the same cells run again by this script)
    onto the matching rows of ``out`` (data, seed, L, prior, recipe), after checking that the rerun
    reproduced each row's certificate, KL, Gibbs error and scale; a rerun row with no match, or a
    key twice in either file, stops it before anything is written. Rewrites ``out`` and returns
    how many rows gained the split."""
    again: dict[tuple, dict] = {}
    for r in map(json.loads, rerun.read_text().splitlines()):
        if _cell_key(r) in again:
            raise SystemExit(f"{rerun} has {_cell_key(r)} twice")
        again[_cell_key(r)] = r
    lines, n, matched = [], 0, set()
    for r in map(json.loads, out.read_text().splitlines()):
        twin = again.get(_cell_key(r))
        if twin is not None:
            if _cell_key(r) in matched:
                raise SystemExit(f"{out} has {_cell_key(r)} twice")
            matched.add(_cell_key(r))
            for k in ("certificate", "kl", "gibbs_bound", "scale"):
                if twin[k] != r[k]:
                    raise SystemExit(f"the rerun of {_cell_key(r)} did not reproduce {k}: {twin[k]!r} "
                                     f"against {r[k]!r}")
            r = {**r, "kl_in_depth": twin["kl_in_depth"]}
            n += 1
        lines.append(json.dumps(r))
    if set(again) - matched:
        raise SystemExit(f"rows of {rerun} with no row in {out}: {sorted(set(again) - matched)}")
    out.write_text("".join(line + "\n" for line in lines))
    return n


def _listed(kind: type, allowed: tuple | None = None):
    """An argparse type: a comma-separated list of ``kind``, each among ``allowed`` if given."""
    def parse(text: str) -> list:
        values = [kind(v) for v in text.split(",")]
        bad = [v for v in values if allowed is not None and v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not among {sorted(allowed)}")
        return values
    return parse


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="JSON lines, one per (data, seed, L, prior)")
    ap.add_argument("--report", action="store_true", help="print the tables and claims of OUT")
    ap.add_argument("--power", action="store_true",
                    help="print the seeds that would decide the ratio claims of OUT that no recipe decided")
    ap.add_argument("--attach", type=Path, default=None, metavar="RERUN",
                    help="copy kl_in_depth from RERUN's rows onto OUT's (which they must reproduce)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=_listed(int), default=None)
    ap.add_argument("--data", type=_listed(str, tuple(PLANS)), default=None)
    ap.add_argument("--depths", type=_listed(int), default=[],
                    help="these depths instead of DEPTHS up to each data set's deepest")
    ap.add_argument("--priors", type=_listed(str, PRIORS), default=None)
    ap.add_argument("--recipe", type=int, choices=sorted(RECIPES), default=None,
                    help="which recipe to run (required: each run is a look, paid for in LOOKS) "
                         "or report (default: the latest)")
    args = ap.parse_args()
    if args.recipe is None:
        if not (args.report or args.power or args.attach):
            ap.error("a run names its recipe (--recipe): each recipe's delta share and its looks at a "
                     f"data set are fixed in RECIPES and LOOKS; recipes are {sorted(RECIPES)}")
        args.recipe = max(RECIPES)
    return args


def main() -> None:
    args = _arguments()
    out = args.out
    if args.report:
        report([json.loads(line) for line in out.read_text().splitlines()], args.recipe)
        return
    if args.power:
        power_plan([json.loads(line) for line in out.read_text().splitlines()])
        return
    if args.attach:
        print(f"{attach_split(out, args.attach)} rows of {out} gained kl_in_depth from {args.attach}")
        return
    quick = args.quick
    torch.set_num_threads(1)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            done.add(_cell_key(json.loads(line)))
    out.parent.mkdir(parents=True, exist_ok=True)
    depths = DEPTHS[:2] if quick else DEPTHS
    seeds = args.seeds or (SEEDS[:1] if quick else SEEDS)
    names, wanted, priors = args.data or list(PLANS), args.depths, tuple(args.priors or PRIORS)
    for seed in seeds:
        for name in names:
            deepest = PLANS[name][-1]
            ladder = wanted or [d for d in depths if d <= deepest]
            for L in ladder:
                todo = tuple(k for k in priors if (name, seed, L, k, args.recipe) not in done)
                if not todo:
                    continue
                parent = None
                if args.recipe in CONTINUED and DEPTHS.index(L) > 0:
                    up = DEPTHS[DEPTHS.index(L) - 1]
                    parent = _saved_mean(out, name, seed, up, args.recipe)
                    if not parent.exists():
                        raise SystemExit(f"recipe {args.recipe} continues the prior mean of L = {up} "
                                         f"({parent}), which is not there: run L = {up} first")
                rows, mean = cell(name, seed, L, quick, todo, args.recipe, parent)
                if args.recipe in CONTINUED:
                    saved = _saved_mean(out, name, seed, L, args.recipe)
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    torch.save(mean, saved)
                for r in rows:
                    with out.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(f"{r['data']} seed {seed} L={L} {r['prior']}: certificate {r['certificate']:.4f} "
                          f"hold-out {r['holdout']:.4f} KL {r['kl']:.2f} ({r['seconds']:.0f} s)", flush=True)


def _saved_mean(out: Path, name: str, seed: int, L: int, recipe: int) -> Path:
    """Where a continued recipe keeps the prior mean of (name, seed, L): beside OUT."""
    return out.with_suffix(".priors") / f"{name}-recipe{recipe}-seed{seed}-L{L}.pt"


if __name__ == "__main__":
    main()

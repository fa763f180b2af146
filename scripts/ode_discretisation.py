"""The certificate of a trained continuous-time image ResNet, and of its depth-L discretisations.

Each continuous-time cell of a certificates store (``image_ode_resnet``: 4 linear knot intervals,
fixed-step RK4, one step per interval) holds its prior mean m and whitened posterior mean u. The
same posterior Q, read through the explicit Euler scheme with L steps (L / 4 per knot interval),
is a per-layer ResNet of depth L whose layer weights are the knot path sampled at the layer times
t_k = k T / L, z_{k+1} = z_k + h F(z_k; theta(t_k)). Its PAC-Bayes certificate uses the same prior,
the same KL and the same draws (the streams ``(seed, 'certificate/bound/r')`` of the stored
certificate, so the gaps are free of Monte-Carlo noise between depths); only the network each draw
defines changes. As L grows, Euler's flow map tends to the exact flow (error O(1 / L) for a fixed
draw), so c(L) tends to the certificate of the exact flow, which the certified network c(ode)
(RK4, four steps) approximates to RK4's own error. The study prints c(L) - c(ode) for L = 4, 16,
64, 256 and decides

    "the discretisation gap shrinks at least fourfold from L = 4 to L = 64":
    one-sided t test across seeds of mean log(|gap(64)| / |gap(4)|) < log(1/4), at alpha 0.05;

first-order convergence predicts a sixteenfold shrink, so the claim can fail either way (a gap
that stalls, or a model whose L = 4 scheme is already as close as L = 64). A gap below one
error in all the draws (1 / draws) is read as 1 / draws. The claim is a new hypothesis (about
these discretisations, not the separately trained per-layer networks), fixed before the run.
Each certificate is a valid certificate of its own network at the stored delta split; the five
networks (four depths and the ODE) read jointly hold at 5 (delta + delta_mc).

    python scripts/ode_discretisation.py runs/ode-discretisation.jsonl [--store S] [--data mnist-5k]
    python scripts/ode_discretisation.py runs/ode-discretisation.jsonl --report
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from resdyn.analysis.verdicts import mean_test
from resdyn.api import certificate_weights
from resdyn.experiments import certificates as C
from resdyn.sweeps.store import Store
from resdyn.training.certify import recertify

DEPTHS = (4, 16, 64, 256)
CLAIM = (4, 64)  # the claim compares these two (the image cells' depths run to 64)
SHRINK = 0.25
ALPHA = 0.05
STREAM = "certificate/bound"  # the stored certificate's draws


def run(store: Path, out: Path, datas: list[str] | None) -> None:
    done = set()
    if out.exists():
        done = {(r["cell_id"], r["solver"]) for r in map(json.loads, out.read_text().splitlines())}
    with Store(store, create=False, readonly=True) as st:
        records = {r.cell_id: r for r in st.records()}
        rows = [r for r in C.latest_recipe(C.certificate_rows(list(records.values())))[0]
                if r["L"] is None and (not datas or r["data"] in datas)]
        for row in rows:
            record = records[row["cell_id"]]
            cell, cfg = record.cell, record.cell.certificate
            mean, u, _ = certificate_weights(st, record)
            data = cell.data.load()
            sample = cell.data.indices(data, cell.sample_size, cell.seed)
            solvers = [("ode", cell.model)] + [(f"euler-{L}", cell.model.discretised(L)) for L in DEPTHS]
            for name, model in solvers:
                if (row["cell_id"], name) in done:
                    continue
                t0 = time.time()
                new = recertify(model, mean, u, float(row["scale"]), data, sample, cell.seed, cfg,
                                None, STREAM)
                if name == "ode" and abs(new.certificate - row["certificate"]) > 1e-6:
                    raise SystemExit(f"cell {row['cell_id']}: the stored certificate "
                                     f"{row['certificate']:.6f} did not come back ({new.certificate:.6f})")
                line = {"cell_id": row["cell_id"], "data": row["data"], "S": row["S"], "seed": row["seed"],
                        "solver": name, "L": None if name == "ode" else int(name.split("-")[1]),
                        "certificate": new.certificate, "certificate_se": new.certificate_se,
                        "gibbs_bound": new.gibbs_bound, "kl": new.kl, "scale": new.scale, "n": new.n,
                        "draws": new.draws, "seconds": time.time() - t0}
                with out.open("a") as f:
                    f.write(json.dumps(line) + "\n")
                print(f"{row['data']} seed {row['seed']} {name}: certificate {new.certificate:.4f} "
                      f"(Gibbs on S_b {new.gibbs_bound:.4f}, {line['seconds']:.0f} s)", flush=True)


def report(rows: list[dict]) -> None:
    print("| data | seed | c(ode) | " + " | ".join(f"c({L}) - c(ode)" for L in DEPTHS)
          + " | Gibbs on S_b, ode | KL |")
    print("|---|---|---|" + "---|" * len(DEPTHS) + "---|---|")
    by = {(r["data"], r["seed"], r["solver"]): r for r in rows}
    names = sorted({r["data"] for r in rows})
    claims = []
    for name in names:
        seeds = sorted({r["seed"] for r in rows if r["data"] == name})
        logs = []
        for s in seeds:
            ode = by.get((name, s, "ode"))
            if ode is None:
                continue
            gaps = {L: by[(name, s, f"euler-{L}")]["certificate"] - ode["certificate"]
                    for L in DEPTHS if (name, s, f"euler-{L}") in by}
            print(f"| {name} | {s} | {ode['certificate']:.4f} | "
                  + " | ".join(f"{gaps[L]:+.5f}" if L in gaps else "-" for L in DEPTHS)
                  + f" | {ode['gibbs_bound']:.4f} | {ode['kl']:.2f} |")
            lo, hi = CLAIM
            if lo in gaps and hi in gaps:
                # A gap below the resolution of the draws (one error in all of them) is read as
                # that resolution, so an exact tie counts as no better than one error's change.
                floor = 1 / ode["draws"]
                logs.append(math.log(max(abs(gaps[hi]), floor) / max(abs(gaps[lo]), floor)))
        v = mean_test(logs, bound=math.log(SHRINK), side="less", unit="seed", alpha=ALPHA)
        shrink = ", ".join(f"{math.exp(x):.4f}" for x in logs)
        claims.append(f"- {name}: |gap({CLAIM[1]})| / |gap({CLAIM[0]})| per seed {shrink}; claim "
                      f"'shrinks at least {1 / SHRINK:g}-fold': **{v.verdict}** ({v.test}; p_for "
                      f"{v.p_for:.3g}, p_against {v.p_against:.3g}, {v.n} seeds, alpha {v.alpha:g})")
    print()
    print("\n".join(claims))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="JSON lines, one per (cell, solver); a cut run resumes")
    ap.add_argument("--store", type=Path, default=Path("runs/certificates-images.sqlite"))
    ap.add_argument("--data", default=None, help="comma-separated data sets (default: all)")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.report:
        report([json.loads(line) for line in args.out.read_text().splitlines()])
        return
    torch.set_num_threads(1)
    run(args.store, args.out, args.data.split(",") if args.data else None)


if __name__ == "__main__":
    main()

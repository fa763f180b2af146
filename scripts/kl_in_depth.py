"""Where a certified posterior pays its KL in depth: the finer layers, or the path they sample.

For each per-layer image-ResNet cell of a certificates store (Brownian prior, depth L >= 16) this
reads the stored prior mean m and whitened posterior u and splits KL(Q || P) = |u|^2 / 2
(resdyn.theory.depth_prior.WhitenedGaussian.kl_in_depth): the embedding and readout's part, the
layers' part, and the layers' part that the same Brownian law at a coarser depth L_c charges the
deviation delta = A u read at its layer times t_j = j T / L_c (L_c = 4 and 16). The rest,
layers - coarse, is what the finer layers add: zero exactly when delta is linear between the coarse
layer times (docs/depth-prior.md, "Where the KL is paid"). Beside it, the same deviation under the
i.i.d. prior of the same s, read the same way (a smooth deviation pays about L / L_c times more).

The claim, fixed before this script first read a store: on each data set, "the Brownian
posterior's layer KL at its deepest L is at most 1.1 times its reading at L = 16", a one-sided t test
across seeds of mean log(layers / coarse_16) < log 1.1 at alpha 0.05 (a new hypothesis: about the
stored posteriors, not the certificates). It can fail: a deviation rough in depth (gradient noise
left in each layer's weights) pays for every finer layer. The recomputed KL must equal the stored
one (the script stops otherwise).

    python scripts/kl_in_depth.py runs/certificates-images.sqlite [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from resdyn.analysis.verdicts import ALPHA
from resdyn.api import certificate_weights
from resdyn.experiments import certificates as C
from resdyn.sweeps.store import Store
from resdyn.training.certify import kl_in_depth

COARSE = (4, 16)


def split_rows(store: Path) -> list[dict]:
    """One row per current per-layer Brownian cell of ``store`` with L >= 16: the KL split at
    each coarse depth of COARSE below L, under the cell's Brownian prior and under the i.i.d.
    prior of the same scale."""
    out = []
    with Store(store, create=False, readonly=True) as st:
        records = {r.cell_id: r for r in st.records()}
        rows = C.latest_recipe(C.certificate_rows(list(records.values())))[0]
        for row in rows:
            if row["L"] is None or row["L"] < 16 or row["prior"] != "brownian":
                continue
            record = records[row["cell_id"]]
            mean, u, _ = certificate_weights(st, record)
            line = {"cell_id": row["cell_id"], "data": row["data"], "S": row["S"], "seed": row["seed"],
                    "L": row["L"], "scale": float(row["scale"]), "kl_stored": row["kl"],
                    **kl_in_depth(record.cell.model, "brownian", mean, u, float(row["scale"]), COARSE)}
            if not math.isclose(line["kl"], row["kl"], rel_tol=1e-5, abs_tol=1e-7):
                raise SystemExit(f"cell {row['cell_id']}: the stored KL {row['kl']:.6g} did not come "
                                 f"back ({line['kl']:.6g})")
            out.append(line)
    return out


def report(rows: list[dict]) -> list[str]:
    """Markdown: every cell's split, then the claim per data set."""
    lines = ["| data | S | seed | L | s | KL | io | layers | start | at L=16 | at L=4 | layers / at 16 "
             "| increments / at 16 | i.i.d. layers | i.i.d. at 16 | i.i.d. layers / at 16 |",
             "|---" * 16 + "|"]
    for r in sorted(rows, key=lambda r: (r["data"], r["L"], r["seed"])):
        lines.append(f"| {r['data']} | {r['S']} | {r['seed']} | {r['L']} | {r['scale']:g} | {r['kl']:.4f} | "
                     f"{r['io']:.4f} | {r['layers']:.4f} | {r['start']:.4f} | {_num(r, 'coarse_16', 4)} | "
                     f"{_num(r, 'coarse_4', 4)} | {_ratio(r, 'layers', 'coarse_16')} | "
                     f"{_increments(r)} | "
                     f"{r['iid_layers']:.1f} | {_num(r, 'iid_coarse_16', 1)} | "
                     f"{_ratio(r, 'iid_layers', 'iid_coarse_16')} |")
    lines += ["", "| data | L | claim | ratios | verdict |", "|---|---|---|---|---|"]
    claimed = [r for r in rows if f"coarse_{C.REFERENCE_DEPTH}" in r]
    for name in sorted({r["data"] for r in claimed}):
        top = max(r["L"] for r in claimed if r["data"] == name)
        ratios, v = C.split_claim([r for r in claimed if r["data"] == name and r["L"] == top], ALPHA)
        lines.append(f"| {name} | {top} | layer KL <= {C.SPLIT_LIMIT} x its reading at L = "
                     f"{C.REFERENCE_DEPTH} | {', '.join(f'{x:.4f}' for x in ratios)} | **{v.verdict}** "
                     f"({v.test}; p_for {v.p_for:.3g}, {v.n} seeds, alpha {v.alpha:g}) |")
    return lines


def _num(r: dict, key: str, digits: int) -> str:
    return f"{r[key]:.{digits}f}" if key in r else "-"


def _increments(r: dict) -> str:
    """(layers - start) / (coarse_16 - start): the ratio without the first layer's cost, which
    both readings pay in full."""
    if "coarse_16" not in r or r["coarse_16"] <= r["start"]:
        return "-"
    return f"{(r['layers'] - r['start']) / (r['coarse_16'] - r['start']):.4f}"


def _ratio(r: dict, a: str, b: str) -> str:
    return f"{r[a] / r[b]:.4f}" if b in r and r[b] > 0 else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--json", type=Path, help="also write the rows here, one JSON line each")
    args = ap.parse_args()
    rows = split_rows(args.store)
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("\n".join(report(rows)))


if __name__ == "__main__":
    main()

"""Run the certificates-images spec seed by seed, so that a cut run has whole seeds to report.

``resdyn reproduce certificates-images`` trains the same 36 cells, grouped by shape (a group of
the three seeds of one L = 64 MNIST cell takes over half an hour and is written at its end). This
driver runs the cells of the 5k digits (all seeds) first, then MNIST and Fashion-MNIST one seed at
a time, then MNIST's seeds 3 and 4, into the same store (a cell is the same cell whichever spec
file names it), so the store fills in the order the analysis needs. Then ``resdyn reproduce
certificates-images --store STORE`` analyses it (and trains whatever is missing).

    python scripts/certificates_images.py [--store runs/certificates-images.sqlite]
    python scripts/certificates_images.py --table [--superseded] [--store ...]   # as docs/ tables it
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SPEC = Path(__file__).resolve().parents[1] / "src/resdyn/specs/certificates-images.toml"
PHASES = ((("mnist-5k",), (0, 1, 2)), (("mnist", "fashion-mnist"), (0,)),
          (("mnist", "fashion-mnist"), (1,)), (("mnist", "fashion-mnist"), (2,)),
          # MNIST's claims, read at seeds 0-2, read again at 0-4 (the spec's description: LOOKS).
          (("mnist",), (3, 4)))


def phase_spec(text: str, datas: tuple[str, ...], seeds: tuple[int, ...]) -> str:
    """The spec with only the variants of ``datas`` and the seeds ``seeds``."""
    keep = [ln for ln in text.splitlines()
            if not ln.lstrip().startswith("{ data = ")
            or re.search(r'name = "([^"]+)"', ln).group(1) in datas]
    out = "\n".join(keep) + "\n"
    return re.sub(r"^seed = \[.*\]$", f"seed = {list(seeds)}", out, flags=re.M)


def table(store: str, superseded: bool = False) -> str:
    """Every finished cell of ``store`` that the claims read (with ``superseded``: the cells of
    earlier recipes instead) as a Markdown table: the certificate beside its hold-out bound,
    Gibbs test error, KL, the data-independent baseline and the cell's wall time."""
    from resdyn.experiments.certificates import certificate_rows, latest_recipe
    from resdyn.sweeps.store import Store

    with Store(store, create=False, readonly=True) as st:
        rows = latest_recipe(certificate_rows(list(st.records())))[1 if superseded else 0]
    out = ["| data | S | L | seed | prior scale s | certificate | hold-out | Gibbs test | KL "
           "| baseline cert. (s, KL) | prior-mean bound err. | seconds |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['data']} | {r['S']} | {'ode' if r['L'] is None else r['L']} | {r['seed']} | "
                   f"{r['scale']:g} | {r['certificate']:.4f} | {r['holdout']:.4f} | "
                   f"{r['gibbs_test']:.4f} | {r['kl']:.2f} | {r['baseline_certificate']:.3f} "
                   f"({r['baseline_scale']:g}, {r['baseline_kl']:.2f}) | "
                   f"{r['prior_mean_bound_error']:.4f} | {r['seconds']:.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="runs/certificates-images.sqlite")
    ap.add_argument("--table", action="store_true", help="print every stored cell and stop")
    ap.add_argument("--superseded", action="store_true",
                    help="with --table: the cells of earlier recipes, which the claims do not read")
    args = ap.parse_args()
    if args.table:
        print(table(args.store, args.superseded))
        return
    text = SPEC.read_text()
    for datas, seeds in PHASES:
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(phase_spec(text, datas, seeds))
        print(f"phase: {', '.join(datas)}, seeds {list(seeds)}", flush=True)
        subprocess.run([sys.executable, "-m", "resdyn.cli", "run", f.name, "--store", args.store,
                        "--quiet", "--threads", "2"], check=True)
        Path(f.name).unlink()


if __name__ == "__main__":
    main()

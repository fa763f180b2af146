"""Print each finished cell's learning curve (test accuracy tracked by `[trackers.test_loss]`),
its final accuracies and its wall time, from a store.

Usage: .venv/bin/python scripts/learning_curves.py runs/images/images.sqlite [SPEC ...]
"""

from __future__ import annotations

import sys

from resdyn.sweeps.store import Store


def main(store: str, specs: list[str]) -> None:
    with Store(store, create=False) as st:
        rows = [r for r in st.rows_with_series() if not specs or r["spec"] in specs]
    for r in rows:
        cfg, m = r["config"], r["metrics"]
        curve = r["series"].get("test_loss.acc", {})
        print(f"{r['spec']} ({cfg['data']['name']}, {cfg['model']['family']}, S = {cfg['sample_size']}, "
              f"seed {cfg['seed']}): test accuracy {m['test_acc']:.4f}, training accuracy "
              f"{m['train_acc']:.4f}, wall time {r['timing']['group_seconds'] / 60:.1f} min")
        if curve:
            print("  test accuracy by step: " + ", ".join(f"{s}: {a:.4f}" for s, a in sorted(curve.items())))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])

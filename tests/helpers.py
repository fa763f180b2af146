"""Small helpers shared by test modules."""

import sqlite3
from pathlib import Path

# A small resnet sweep: 9 cells (3 sizes x 3 seeds) in groups of ``group_size``.
SPEC_TOML = """
name = "sweep-test"
[data]
name = "two_spirals"
[model]
family = "resnet"
width = 6
depth = 3
[train]
steps = {steps}
lr = 0.01
[sweep]
sample_size = [32, 64, 128]
seed = [0, 1, 2]
[run]
group_size = {group_size}
checkpoint_seconds = {ckpt}
"""


def count_rows(store) -> int:
    """Finished cells in a store that another process may be writing (0 while it is absent)."""
    if not Path(store).is_file():
        return 0
    try:
        with sqlite3.connect(store, timeout=5) as db:
            return db.execute("SELECT count(*) FROM cells").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def autograd_resnet(net, p: dict, x):
    """The untied two-layer ResNet op by op through autograd (blocks.residual_map): neither the
    fused stack nor the native kernel."""
    from resdyn.models.blocks import embed, layer_params, readout, residual_map

    layers = layer_params(p, "two_layer")
    z = embed(p, x)
    for k in range(net.depth):
        z = z + net.step * residual_map(layers[k], z, net.act)
    return readout(p, z)


def graph_nodes(t) -> set[str]:
    """Names of the autograd node types in the graph behind ``t``."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        f = todo.pop()
        if f is not None and type(f).__name__ not in seen:
            seen.add(type(f).__name__)
            todo.extend(n for n, _ in f.next_functions)
    return seen


def one_cell_spec(name: str, steps: int) -> dict:
    """A one-cell spec table (two spirals, a width-4 depth-2 ResNet, S = 32, seed 0)."""
    return {"name": name, "data": {"name": "two_spirals"},
            "model": {"family": "resnet", "width": 4, "depth": 2},
            "train": {"steps": steps, "lr": 1e-2},
            "sweep": {"sample_size": [32], "seed": [0]}}

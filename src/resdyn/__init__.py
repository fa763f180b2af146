"""resdyn: deep residual and densely connected networks as dynamical systems, and their
generalization measured against theory.

``resdyn.load_cell(store, cell_id)`` gives a trained cell's model, parameters and configuration;
``resdyn.as_module(model, params)`` wraps a model as a ``torch.nn.Module`` (see ``resdyn.api``).
"""

from typing import Any

from .version import __version__

__all__ = ["__version__", "as_module", "load_cell"]


def __getattr__(name: str) -> Any:
    # The API pulls in torch and the sweep layer; `import resdyn` alone (for the CLI's start-up
    # and __version__) stays light.
    if name in ("load_cell", "as_module"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'resdyn' has no attribute {name!r}")

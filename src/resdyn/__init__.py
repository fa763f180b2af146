"""resdyn: deep residual and densely connected networks as dynamical systems, and their
generalization measured against theory."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resdyn")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["__version__"]

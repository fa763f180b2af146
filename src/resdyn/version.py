"""The installed version of resdyn (``0.0.0`` when running from a source tree without installing)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resdyn")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["__version__"]

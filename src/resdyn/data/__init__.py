"""Data sets as :class:`Dataset` objects: a training pool, a fixed test set, normalisation.

``load(name, root=None, **options)`` returns any of :data:`DATASETS`; ``subsample(dataset, S,
seed)`` gives the deterministic, stratified, nested training sample of size S. File-backed sets
(MNIST, CIFAR) are checked against the md5 manifest before they are read; ``resdyn data
download`` fetches them (nothing downloads implicitly). See docs/data.md.
"""

from .base import Dataset
from .integrity import (
    ChecksumError,
    DataError,
    DataRootError,
    FormatError,
    MissingFileError,
    TruncatedFileError,
    UnsafePickleError,
    use_manifest,
)
from .registry import DATASETS, INFO, load
from .sampling import subsample

__all__ = [
    "DATASETS",
    "INFO",
    "ChecksumError",
    "DataError",
    "DataRootError",
    "Dataset",
    "FormatError",
    "MissingFileError",
    "TruncatedFileError",
    "UnsafePickleError",
    "load",
    "subsample",
    "use_manifest",
]

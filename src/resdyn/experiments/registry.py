"""The reproductions ``resdyn reproduce`` knows, and how each is run and analysed.

A sweep reproduction ships spec files in ``resdyn/specs`` (``NAME.toml`` and the quick variant
``NAME-quick.toml``, each runnable with ``resdyn run``) and an ``analyze(rows, out_dir, name)``
that reads the store. Image specs run once for each of the reproduction's ``image_sets`` whose
files are present under the data root (``--root``), with the data table replaced by that set.
A custom reproduction has a ``run(quick, out_dir, device, dtype, threads)``
whose outcome is kept in the store for the report. Functions are referenced directly (no import
strings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import certificates, dead_zone, depth, dnl_convergence, meanfield, sample_size

__all__ = ["REPRODUCTIONS", "Reproduction", "get_reproduction"]


@dataclass(frozen=True)
class Reproduction:
    name: str
    summary: str
    specs: tuple[str, ...] = ()
    analyze: Callable[..., Any] | None = None
    run: Callable[..., Any] | None = None
    image_specs: tuple[str, ...] = ()
    full_specs: tuple[str, ...] = ()  # run by the full reproduction only (no quick variant)
    image_sets: tuple[str, ...] = ("mnist", "cifar10", "cifar100")  # where image_specs run

    def spec_names(self, quick: bool) -> list[str]:
        return [f"{s}-quick" if quick else s for s in self.specs] + ([] if quick else list(self.full_specs))

    def image_spec_names(self, quick: bool) -> list[str]:
        """Specs run once per image data set (MNIST, CIFAR) found under the data root."""
        return [f"{s}-quick" if quick else s for s in self.image_specs]

    def load(self, attr: str) -> Any:
        """The reproduction's ``analyze`` or ``run`` function."""
        fn = getattr(self, attr)
        if fn is None:
            raise ValueError(f"reproduction {self.name!r} has no {attr!r}")
        return fn


#: The full-scale image sets of the first paper's experiments that are reachable offline.
IMAGE_SETS = ("mnist", "fashion-mnist")

REPRODUCTIONS: dict[str, Reproduction] = {
    r.name: r
    for r in (
        Reproduction("sample-size", "generalization gap against S, log-log slope vs -1/2",
                     ("sample-size", "sample-size-mnist"), sample_size.analyze,
                     image_specs=("sample-size-images",)),
        Reproduction("sample-size-images", "image ResNets on full MNIST and Fashion-MNIST: gap "
                     "against S up to 60,000, discrete and continuous time",
                     analyze=sample_size.analyze, image_specs=("sample-size-images",),
                     image_sets=IMAGE_SETS),
        Reproduction("depth-images", "image ResNets on MNIST and Fashion-MNIST: loss and accuracy "
                     "against depth L = 2..64", analyze=depth.analyze, image_specs=("depth-images",),
                     image_sets=IMAGE_SETS),
        Reproduction("dead-zone-images", "image ResNets on MNIST and Fashion-MNIST: relu against "
                     "dead-zone activations", analyze=dead_zone.analyze,
                     image_specs=("dead-zone-images",), image_sets=IMAGE_SETS),
        Reproduction("depth", "loss and accuracy against depth at fixed horizon",
                     ("depth",), depth.analyze),
        Reproduction("dead-zone", "activations with and without a dead zone",
                     ("dead-zone",), dead_zone.analyze),
        Reproduction("mean-field", "mean-field ResNet on two spirals: Gram, KL, error vs n",
                     ("mean-field",), meanfield.analyze, full_specs=("mean-field-gd",)),
        Reproduction("certificates", "PAC-Bayes certificates of per-layer ResNets against depth L, "
                     "Brownian and i.i.d. priors", ("certificates",), certificates.analyze),
        Reproduction("certificates-images", "PAC-Bayes certificates of per-layer and continuous-time "
                     "image ResNets on MNIST, Fashion-MNIST and the 5k digits, beside the hold-out "
                     "bound and a data-independent prior", ("certificates-images",),
                     certificates.analyze),
        Reproduction("dnl-convergence", "dense non-local networks: optimal values as N grows",
                     ("dnl-convergence",), dnl_convergence.analyze),
    )
}


def get_reproduction(name: str) -> Reproduction:
    if name not in REPRODUCTIONS:
        raise ValueError(f"unknown reproduction {name!r}; allowed: {', '.join(REPRODUCTIONS)}")
    return REPRODUCTIONS[name]


def reproduction_of_spec(spec_name: str) -> tuple[Reproduction, bool] | None:
    """Which reproduction (and whether its quick variant) a spec name in the store belongs to."""
    for r in REPRODUCTIONS.values():
        for s in (*r.specs, *r.image_specs, *r.full_specs):
            if spec_name == s:
                return r, False
            if spec_name == f"{s}-quick":
                return r, True
    return None

"""Small stores of the shipped reproductions' quick specs and of a user's own specs, built once
per test session (under pytest's base temporary directory) for the report, CLI and browser tests.

A shipped spec keeps its name and its whole grid (so the report recognises it and analyses every
cell the reproduction would have) with fewer training steps, so the stores build in seconds (a
certificate spec also with 5 posterior steps and one Monte-Carlo round).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from resdyn.sweeps.spec import load_spec, spec_path
from resdyn.sweeps.sweep import run_sweep

# shipped quick spec -> training steps in the test store (trackers every steps // 2)
SHIPPED = {"sample-size-quick": 8, "depth-quick": 6, "dead-zone-quick": 10,
           "mean-field-quick": 10, "mean-field-diagnostics": 10, "dnl-convergence-quick": 20,
           "certificates-quick": 20}
CUSTOM: tuple[str, ...] = ()

USER_SPEC = """
name = "my-sweep"
description = "A user's own spec: discrete and continuous-time families, two data sets, S and seeds."
[data]
name = "two_spirals"
[model]
family = "resnet"
width = 8
activation = "tanh"
[train]
steps = 25
lr = 2e-2
[sweep]
data = [{ name = "two_spirals" }, { name = "digits" }]
model = [{ family = "resnet", depth = 2 }, { family = "ode_resnet", knots = 2 }]
sample_size = [16, 32, 64]
seed = [0, 1]
[measures.test_error_bound]
delta = 0.05
"""

IMAGE_SPEC = """
name = "my-images"
[data]
name = "digits"
[model]
family = "conv_resnet"
channels = 4
depth = 2
activation = "relu"
[train]
steps = 15
lr = 1e-2
[sweep]
sample_size = [32, 64, 128]
seed = [0, 1]
[measures.test_error_bound]
"""


def _shipped(name: str):
    spec = load_spec(spec_path(name))
    steps = SHIPPED[name]
    trackers = {k: {**v, "every": max(1, steps // 2)} for k, v in spec.trackers.items()}
    train = {**spec.train, "steps": steps}
    if "control" in train:  # the second (L-BFGS) stage of an optimal-control objective, as short
        train["control"] = {**train["control"], "lbfgs_iters": steps}
    certificate = spec.certificate
    if certificate is not None:
        certificate = {**certificate, "posterior_steps": 5, "rounds": 1, "test_rounds": 1}
    return dataclasses.replace(spec, train=train, trackers=trackers, certificate=certificate)


def build(base: Path, name: str) -> Path:
    """The store for ``name`` (a key of SHIPPED, one of CUSTOM, "my-sweep" or "my-images"), built on
    first use."""
    store = Path(base) / "stores" / f"{name}.sqlite"
    if store.is_file():
        return store
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.with_name(f".{store.name}")
    if name in SHIPPED:
        spec = _shipped(name)
    else:
        text = {"my-sweep": USER_SPEC, "my-images": IMAGE_SPEC}[name]
        path = store.with_suffix(".toml")
        path.write_text(text)
        spec = load_spec(path)
    run_sweep(spec, tmp)
    for suffix in (".d", ""):  # appear complete or not at all (a store without weights has no .d)
        if Path(str(tmp) + suffix).exists():
            Path(str(tmp) + suffix).rename(str(store) + suffix)
    return store


def chrome(width: int = 1400, height: int = 1000):
    """Headless Chromium through chromedriver (skips the test when either is missing)."""
    import shutil

    import pytest

    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/setup.sh test)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    browser.set_window_size(width, height)
    return browser

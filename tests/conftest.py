import pytest
import torch

from resdyn.data.base import Dataset
from resdyn.data.synthetic import two_spirals


@pytest.fixture(scope="session")
def spirals() -> Dataset:
    """Two spirals (default turns and noise): 2048 training and 1000 test points, float32."""
    x, y = two_spirals(3048, seed=123)
    return Dataset("two_spirals", x[:2048].float(), y[:2048], x[2048:].float(), y[2048:], 2)


@pytest.fixture(autouse=True)
def _float64_default_untouched():
    yield
    assert torch.get_default_dtype() == torch.float32


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """For the native kernel's tests: an empty private cache folder, no library loaded yet in
    this process, no warning given, no use recorded."""
    from resdyn.models import native, native_build, native_library

    cache = tmp_path / "cache"
    monkeypatch.setattr(native_build, "_libs", {})
    monkeypatch.setattr(native_build, "_failure", None)
    monkeypatch.setattr(native_library, "_said", set())
    monkeypatch.setattr(native, "_used", {})
    monkeypatch.setenv("RESDYN_NATIVE_CACHE", str(cache))
    return cache

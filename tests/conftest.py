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

import math

import pytest
import torch

from resdyn.models.activations import ACTIVATIONS, get_activation

GRID = torch.linspace(-6, 6, 240_001, dtype=torch.float64)


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("tau", [0.3, 1.0])
def test_lipschitz_constant_is_the_sup_of_the_slope(name, tau):
    act = get_activation(name, tau=tau)
    v = act(GRID)
    slopes = (v[1:] - v[:-1]).abs() / (GRID[1:] - GRID[:-1])
    # The stated constant bounds every difference quotient, and is attained (not loose).
    assert slopes.max().item() <= act.lipschitz + 1e-9
    assert slopes.max().item() >= act.lipschitz - 1e-4
    assert act(torch.zeros(1, dtype=torch.float64)).item() == 0.0


def test_gelu_constant_is_not_one():
    assert get_activation("gelu").lipschitz == pytest.approx(1.1289, abs=1e-4)


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("tau", [0.25, 0.8])
def test_dead_zone_is_exactly_where_the_activation_vanishes(name, tau):
    act = get_activation(name, tau=tau)
    v = act(GRID)
    if act.dead_zone is None:
        # Only isolated zeros: at most a couple of grid points vanish.
        assert int((v == 0).sum()) <= 2
        assert act.dead_zone_width == 0.0
        return
    lo, hi = act.dead_zone
    inside = (lo <= GRID) & (hi >= GRID)
    assert torch.all(v[inside] == 0)
    eps = 1e-3
    outside = (lo - eps > GRID) | (hi + eps < GRID)
    assert torch.all(v[outside] != 0)
    if math.isfinite(lo):
        assert act.dead_zone_width == pytest.approx(hi - lo)


def test_dead_zone_widths_follow_tau():
    assert get_activation("soft_threshold", tau=0.7).dead_zone == (-0.7, 0.7)
    assert get_activation("shifted_relu", tau=0.7).dead_zone == (-math.inf, 0.7)
    assert get_activation("smooth_dead_zone", tau=0.7).dead_zone == (-0.7, 0.7)


def test_unknown_activation_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown activation .swish.*soft_threshold"):
        get_activation("swish")
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        get_activation("soft_threshold", tau=-1.0)

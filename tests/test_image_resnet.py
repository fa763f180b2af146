"""The staged image ResNets (image_resnet, image_ode_resnet) and the engine features they use:
minibatch schedules and evaluation in bounded memory."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from resdyn.data.base import Dataset
from resdyn.models import ImageODEResNet, ImageResNet, init_params
from resdyn.models.registry import build_model
from resdyn.training.engine import TrainConfig, evaluate, train


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (torch.tensor(d.images) * (255 / 16)).round().to(torch.uint8).unsqueeze(1)
    y = torch.tensor(d.target)
    return Dataset("digits", x[:1200], y[:1200], x[1200:], y[1200:], 10,
                   mean=torch.tensor(0.3), std=torch.tensor(0.4))


def _reference(model: ImageResNet, p: dict, x: torch.Tensor) -> torch.Tensor:
    """One model written out with F.conv2d, layer by layer (the module docstring's maps); the
    readout over a G x G grid written as block means of the state."""
    z = x
    for i in range(model.n_stem):
        w = p[f"stem{i}"]
        z = F.conv2d(z, w, p[f"stem{i}_b"], stride=1 if w.shape[-1] == 3 else 2,
                     padding=1)
        if i < model.n_stem - 1:
            z = torch.tanh(z)
    for s in range(model.stages):
        if s:
            z = F.conv2d(z, p[f"Q{s}"], p[f"q{s}"], stride=2, padding=1)
        for k in range(model.depth):
            a = torch.relu(F.conv2d(z, p[f"W{s}"][k], p[f"b{s}"][k], padding=1))
            z = z + model.step * F.conv2d(a, p[f"V{s}"][k], padding=1)
    G = model.readout_grid
    if G == 1:
        return z.mean(dim=(2, 3)) @ p["R"].T + p["r"]
    n, C, H, W = z.shape  # the test's states divide evenly: cell (i, j) is a (H/G) x (W/G) block
    cells = z.reshape(n, C, G, H // G, G, W // G).mean(dim=(3, 5))
    return cells.reshape(n, C * G * G) @ p["R"].T + p["r"]


def test_image_resnet_matches_a_layer_by_layer_conv2d_network():
    model = ImageResNet(stem_channels=3, channels=4, depth=3, stages=2, stem_activation="tanh",
                        bias_scale=0.2, weight_init="iid")
    params = init_params(model, [1, 2], dtype=torch.float64)
    x = torch.randn(2, 5, 1, 28, 28, dtype=torch.float64)
    out = model.forward(params, x)
    assert out.shape == (2, 5, 10)
    for e in range(2):
        ref = _reference(model, {k: v[e] for k, v in params.items()}, x[e])
        torch.testing.assert_close(out[e], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid", [2, 7])
def test_the_readout_grid_averages_blocks_of_the_state(grid):
    # A 28x28 digit through two stride-2 stem maps: a 14x14 state; G = 2 averages 7x7 blocks,
    # G = 7 averages 2x2 blocks.
    model = ImageResNet(stem_channels=3, channels=4, depth=2, downsample=1, readout_grid=grid,
                        stem_activation="tanh", weight_init="iid")
    params = init_params(model, [3], dtype=torch.float64)
    assert params["R"].shape == (1, 10, 4 * grid * grid)
    x = torch.randn(1, 5, 1, 28, 28, dtype=torch.float64)
    ref = _reference(model, {k: v[0] for k, v in params.items()}, x[0])
    torch.testing.assert_close(model.forward(params, x)[0], ref, rtol=1e-12, atol=1e-12)


def test_a_readout_grid_finer_than_the_state_is_refused():
    # downsample=1: a 14x14 state from a 28x28 digit; G = 14 is the state itself, G = 15 is not.
    x = torch.randn(1, 2, 1, 28, 28)
    ok = ImageResNet(stem_channels=3, channels=4, depth=2, downsample=1, readout_grid=14)
    assert ok.forward(init_params(ok, [0]), x).shape == (1, 2, 10)
    bad = ImageResNet(stem_channels=3, channels=4, depth=2, downsample=1, readout_grid=15)
    with pytest.raises(ValueError, match=r"readout_grid = 15 is finer than the final state's 14 x 14 "
                                         r"pixels; allowed: 1 to 14"):
        bad.forward(init_params(bad, [0]), x)


def test_the_mean_readout_is_described_as_before():
    # readout_grid came after stores existed: at its default a model's description (and so every
    # stored cell's id) is what it was; any other grid is part of the description.
    from resdyn.models.registry import model_from_dict, model_to_dict

    plain, gridded = ImageResNet(depth=4), ImageResNet(depth=4, readout_grid=7)
    assert "readout_grid" not in model_to_dict(plain)
    assert model_to_dict(gridded)["readout_grid"] == 7
    assert model_from_dict(model_to_dict(gridded)) == gridded
    assert model_from_dict(model_to_dict(plain)) == plain
    with pytest.raises(ValueError, match="readout_grid"):
        ImageODEResNet(readout_grid=0)


# The stored config of a cell written before readout_grid existed (certificates-images, mnist-5k,
# L = 4, seed 0) and the id the store gave it then.
_OLD_CELL_ID = "6ce1e5757079796850b2"
_OLD_CELL = {
    "certificate": {"attempts": 2, "baseline": True, "batch_size": 128, "delta": 0.025,
                    "delta_mc": 0.01, "objective": "f-quad", "p_min": 0.01, "posterior_lr": 0.001,
                    "posterior_steps": 400, "prior": "brownian", "prior_fraction": 0.5, "rounds": 10,
                    "rule_examples": 5000, "scale_slack": 0.005,
                    "scales": [0.01, 0.005, 0.003, 0.002, 0.001], "test_rounds": 1},
    "data": {"name": "mnist-5k"}, "dtype": "float32", "measures": {},
    "model": {"activation": "relu", "bias_scale": 0.0, "channels": 16, "depth": 4, "downsample": 2,
              "family": "image_resnet", "horizon": 1.0, "in_channels": 1, "init_scale": 1.0,
              "modes": 4, "out_dim": 10, "stages": 1, "stem_activation": "relu",
              "stem_channels": 16, "tau": 0.5, "tied": False, "weight_init": "smooth"},
    "sample_size": 4000, "seed": 0, "trackers": {},
    "train": {"batch_size": 128, "betas": [0.9, 0.999], "chunk_size": 128, "eps": 1e-08,
              "loss": "cross_entropy", "lr": 0.002, "lr_schedule": "cosine", "momentum": 0.0,
              "optimizer": "adam", "steps": 625, "warmup_steps": 100, "weight_decay": 0.0},
}


def test_a_cell_stored_before_the_readout_grid_keeps_its_id():
    from resdyn.sweeps.cells import decode_cell

    cell = decode_cell(_OLD_CELL)
    assert cell.model.readout_grid == 1
    assert cell.config == _OLD_CELL
    assert cell.cell_id == _OLD_CELL_ID


def test_image_resnet_state_shapes_follow_the_stem_and_stages():
    model = ImageResNet(stem_channels=4, channels=6, downsample=1, stages=3, depth=2)
    p = init_params(model, [0])
    assert p["stem1"].shape == (1, 6, 4, 4, 4)  # the last stem map outputs C channels
    assert p["W2"].shape == (1, 2, 24, 24, 3, 3) and p["Q2"].shape == (1, 24, 12, 4, 4)
    assert p["R"].shape == (1, 10, 24)
    assert model.forward(p, torch.randn(1, 2, 1, 16, 16)).shape == (1, 2, 10)
    with pytest.raises(ValueError, match="expects inputs"):
        model.forward(p, torch.randn(2, 1, 16, 16))


def test_a_model_in_a_batch_is_bitwise_the_model_alone_forward():
    model = ImageResNet(stem_channels=4, channels=8, depth=4)
    params = init_params(model, [3, 4, 5])
    x = torch.randn(3, 7, 1, 28, 28)
    out = model.forward(params, x)
    for e in range(3):
        alone = model.forward({k: v[e:e + 1] for k, v in params.items()}, x[e:e + 1])
        assert torch.equal(alone[0], out[e])


def test_euler_ode_with_constant_knots_is_exactly_the_discrete_network():
    disc = ImageResNet(stem_channels=4, channels=8, depth=4, horizon=2.0)
    ode = ImageODEResNet(stem_channels=4, channels=8, knots=4, horizon=2.0, method="euler")
    params = init_params(disc, [0, 1])
    assert params.keys() == init_params(ode, [0]).keys()
    x = torch.randn(2, 3, 1, 28, 28)
    assert torch.equal(ode.forward(params, x), disc.forward(params, x))


def test_rk4_converges_at_fourth_order_to_the_adaptive_solution():
    kw = dict(stem_channels=3, channels=4, knots=2, interpolation="linear", init_scale=2.0,
              activation="tanh")
    ref = ImageODEResNet(method="dopri5", rtol=1e-13, atol=1e-13, **kw)
    for seed in range(3):
        params = init_params(ref, [seed], dtype=torch.float64)
        x = torch.randn(1, 4, 1, 28, 28, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(seed))
        exact = ref.forward(params, x)
        errs = [(ImageODEResNet(method="rk4", steps_per_knot=n, **kw).forward(params, x) - exact)
                .abs().max().item() for n in (16, 32)]
        assert errs[0] > 1e-8  # the coarse solve is measurably inexact
        assert 3.7 < math.log2(errs[0] / errs[1]) < 4.3  # observed order of RK4: 4


def test_discretised_is_euler_at_first_order_and_keeps_the_parameters():
    """``discretised(L)``: explicit Euler, L steps in all; its distance to the exact flow halves
    when L doubles (first order), and it reads the same parameters."""
    kw = dict(stem_channels=3, channels=4, knots=2, interpolation="linear", init_scale=2.0,
              activation="tanh")
    model = ImageODEResNet(method="rk4", **kw)
    ref = ImageODEResNet(method="dopri5", rtol=1e-13, atol=1e-13, **kw)
    params = init_params(model, [0], dtype=torch.float64)
    x = torch.randn(1, 4, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = ref.forward(params, x)
    euler = [model.discretised(L) for L in (64, 128)]
    assert [(e.method, e.steps_per_knot) for e in euler] == [("euler", 32), ("euler", 64)]
    assert {k: v.shape for k, v in init_params(euler[0], [0]).items()} == {
        k: v.shape for k, v in params.items()}
    errs = [(e.forward(params, x) - exact).abs().max().item() for e in euler]
    assert errs[0] > 1e-6
    assert 0.85 < math.log2(errs[0] / errs[1]) < 1.15  # observed order of Euler: 1
    with pytest.raises(ValueError, match="positive multiple of knots = 2"):
        model.discretised(5)


def test_families_are_registered_and_validated():
    m = build_model("image_ode_resnet", channels=8, method="dopri5")
    assert m.family == "image_ode_resnet"
    with pytest.raises(ValueError, match="method must be one of"):
        build_model("image_ode_resnet", method="leapfrog")
    with pytest.raises(ValueError, match="stem_activation must be one of"):
        build_model("image_resnet", stem_activation="swish")


def test_image_resnet_trains_on_8x8_digits_far_above_chance(digits):
    model = ImageResNet(stem_channels=8, channels=16, downsample=1, depth=4)
    cfg = TrainConfig(steps=300, batch_size=64, chunk_size=64, lr_schedule="cosine", warmup_steps=20)
    res = train(model, init_params(model, [0]), digits, [torch.arange(1000)], lr=3e-3, config=cfg, seeds=[0])
    assert res.metrics["test_acc"][0] > 0.8  # chance is 0.1


def test_minibatch_training_in_a_group_is_bitwise_each_model_alone(digits):
    model = ImageResNet(stem_channels=4, channels=8, downsample=1, depth=2)
    seeds, sizes = [1, 2, 3], [300, 100, 200]
    idx = [torch.randperm(1200, generator=torch.Generator().manual_seed(s))[:S]
           for s, S in zip(seeds, sizes, strict=True)]
    cfg = TrainConfig(steps=15, batch_size=64, chunk_size=32, lr_schedule="cosine", warmup_steps=3)
    batch = train(model, init_params(model, seeds), digits, idx, lr=[1e-3, 3e-3, 2e-3], config=cfg,
                  seeds=seeds)
    for e in (0, 2):
        alone = train(model, init_params(model, [seeds[e]]), digits, [idx[e]], lr=[1e-3, 3e-3, 2e-3][e],
                      config=cfg, seeds=[seeds[e]])
        for k, v in alone.params.items():
            assert torch.equal(batch.params[k][e], v[0]), k
        assert torch.equal(batch.metrics["test_acc"][e], alone.metrics["test_acc"][0])


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(steps=110, lr_schedule="cosine", warmup_steps=10)
    a = [cfg.lr_factor(t) for t in range(110)]
    assert a[0] == pytest.approx(0.1) and a[9] == pytest.approx(1.0) and a[10] == pytest.approx(1.0)
    assert a[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert a[109] == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(x >= y for x, y in itertools.pairwise(a[10:]))
    assert TrainConfig(steps=5).lr_factor(3) == 1.0
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="warmup_steps needs lr_schedule"):
        TrainConfig(warmup_steps=5)


def test_schedule_scales_every_update():
    """SGD without momentum: with a(t) the parameters move by a(t) lr g, so with a warm-up of
    W = 2 updates the first update is exactly half the constant schedule's."""
    from resdyn.models import ResNet

    x = torch.randn(40, 2)
    data = Dataset("toy", x, (x[:, 0] > 0).long(), x[:4], (x[:4, 0] > 0).long(), 2)
    model = ResNet(width=4, depth=2)
    p = init_params(model, [0], dtype=torch.float64)
    base = dict(steps=1, optimizer="sgd", loss="cross_entropy")
    const = train(model, p, data, [torch.arange(40)], lr=0.1, config=TrainConfig(**base), seeds=[0])
    first: dict = {}

    def after_one(step, state):
        if step == 1:
            first.update({k: v.clone() for k, v in state.params.items()})

    half = TrainConfig(**{**base, "steps": 2}, lr_schedule="cosine", warmup_steps=2)
    sched = train(model, p, data, [torch.arange(40)], lr=0.1, config=half, seeds=[0], hooks=[(1, after_one)])
    for k in p:
        torch.testing.assert_close(first[k] - p[k], 0.5 * (const.params[k] - p[k]), rtol=1e-12,
                                   atol=1e-15)
    assert sched.state.step == 2


def test_evaluation_in_small_slices_gives_the_same_numbers(digits):
    model = ImageResNet(stem_channels=4, channels=8, downsample=1, depth=2)
    params = init_params(model, [0, 1, 2])
    idx = [torch.arange(100), torch.arange(300, 650), torch.arange(7)]
    whole = evaluate(model, params, digits, idx, "cross_entropy", chunk_size=16)
    sliced = evaluate(model, params, digits, idx, "cross_entropy", chunk_size=16, max_elements=64 * 40)
    for k in ("loss", "acc"):
        assert torch.equal(whole[k], sliced[k])
    test = evaluate(model, params, digits, None, "cross_entropy", 16, "test", max_elements=64 * 16)
    x_test = digits.prepare(digits.x_test, torch.float32, "cpu")
    direct = model.forward(params, x_test.expand(3, -1, -1, -1, -1))
    acc = (direct.argmax(-1) == digits.y_test).double().mean(1)
    torch.testing.assert_close(test["acc"].double(), acc, rtol=0, atol=1e-6)


def test_sizes_come_from_the_data_for_cifar_shaped_images():
    from resdyn.models.registry import build_model_for

    model = build_model_for("image_resnet", (3, 32, 32), 100, channels=4, stem_channels=4, depth=2)
    assert (model.in_channels, model.out_dim) == (3, 100)
    out = model.forward(init_params(model, [0, 1]), torch.randn(2, 3, 3, 32, 32))
    assert out.shape == (2, 3, 100) and torch.isfinite(out).all()

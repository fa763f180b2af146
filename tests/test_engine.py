import pytest
import torch

from resdyn.data.base import Dataset
from resdyn.models import ConvResNet, ODEResNet, ResNet, init_params
from resdyn.training.engine import TrainConfig, TrainState, train

SIZES = [64, 16, 100, 256, 32, 200, 128, 50]
SEEDS = [11, 3, 5, 8, 13, 21, 34, 55]


def _indices(n_pool, sizes, seeds):
    return [torch.randperm(n_pool, generator=torch.Generator().manual_seed(s))[:S]
            for s, S in zip(seeds, sizes, strict=True)]


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_model_in_a_batch_of_8_is_bitwise_the_model_alone(spirals):
    model = ResNet(width=8, depth=4)
    idx = _indices(len(spirals.y), SIZES, SEEDS)
    lrs = torch.tensor([1e-2, 3e-3, 1e-2, 2e-2, 5e-3, 1e-2, 1e-2, 7e-3])
    cfg = TrainConfig(steps=1000)
    batch = train(model, init_params(model, SEEDS), spirals, idx, lr=lrs, config=cfg, seeds=SEEDS)
    for e in (0, 3, 7):
        alone = train(model, init_params(model, [SEEDS[e]]), spirals, [idx[e]], lr=lrs[e:e + 1],
                      config=cfg, seeds=[SEEDS[e]])
        assert _same({k: v[0] for k, v in alone.params.items()},
                     {k: v[e] for k, v in batch.params.items()})
        for name in ("train_loss", "test_acc", "test_loss"):
            assert torch.equal(alone.metrics[name][0], batch.metrics[name][e])
        assert torch.equal(alone.state.loss_history[:, 0], batch.state.loss_history[:, e])
    # Training did something: the losses fell.
    assert torch.all(batch.state.loss_history[-1] < 0.5 * batch.state.loss_history[0])


def test_a_nan_model_is_frozen_flagged_and_does_not_touch_the_others(spirals):
    model = ResNet(width=8, depth=3)
    idx = _indices(len(spirals.y), SIZES[:4], SEEDS[:4])
    cfg = TrainConfig(steps=200)
    clean = init_params(model, SEEDS[:4])
    poisoned = {k: v.clone() for k, v in clean.items()}
    poisoned["W"][2, 1, 0, 0] = float("nan")
    a = train(model, clean, spirals, idx, lr=1e-2, config=cfg, seeds=SEEDS[:4])
    b = train(model, poisoned, spirals, idx, lr=1e-2, config=cfg, seeds=SEEDS[:4])
    for e in (0, 1, 3):
        assert _same({k: v[e] for k, v in a.params.items()}, {k: v[e] for k, v in b.params.items()})
        assert torch.equal(a.metrics["test_acc"][e], b.metrics["test_acc"][e])
    assert b.metrics["diverged"].tolist() == [0, 0, 1, 0]
    assert b.metrics["diverged_step"].tolist() == [-1, -1, 0, -1]
    # Frozen at its (NaN-poisoned) initial parameters, not updated.
    assert torch.equal(torch.nan_to_num(b.params["V"][2]), torch.nan_to_num(poisoned["V"][2]))


def test_divergence_mid_training_records_the_step(spirals):
    model = ResNet(width=8, depth=3)
    idx = _indices(len(spirals.y), [128, 128], [1, 2])
    res = train(model, init_params(model, [1, 2]), spirals, idx, lr=torch.tensor([1e-2, 1e6]),
                config=TrainConfig(steps=60, optimizer="sgd"), seeds=[1, 2])
    assert res.metrics["diverged"].tolist() == [0, 1]
    step = int(res.metrics["diverged_step"][1])
    assert 0 < step < 60
    assert torch.isfinite(res.state.loss_history[:step, 1]).all()
    assert not torch.isfinite(res.state.loss_history[step, 1])
    assert torch.all(torch.isfinite(torch.stack(list(res.params.values())[:1])[0][0]))


def test_discrete_resnet_on_two_spirals_reaches_090_test_accuracy(spirals):
    model = ResNet(width=16, depth=8)
    res = train(model, init_params(model, [0]), spirals, [torch.arange(1024)], lr=1e-2,
                config=TrainConfig(steps=1000), seeds=[0])
    assert res.metrics["test_acc"][0] >= 0.9, res.metrics
    r = res.metrics  # the gaps' signs: test minus train for the loss, train minus test for accuracy
    assert float(r["loss_gap"][0]) == float(r["test_loss"][0] - r["train_loss"][0])
    assert float(r["error_gap"][0]) == float(r["train_acc"][0] - r["test_acc"][0])
    assert float(r["train_acc"][0]) != float(r["test_acc"][0])  # else the sign is not seen


def test_minibatch_training_is_batch_invariant_and_resumable(spirals):
    model = ResNet(width=8, depth=3)
    idx = _indices(len(spirals.y), [100, 300, 64], [4, 5, 6])
    cfg = TrainConfig(steps=60, batch_size=32)
    full = train(model, init_params(model, [4, 5, 6]), spirals, idx, lr=1e-2, config=cfg, seeds=[4, 5, 6])
    alone = train(model, init_params(model, [5]), spirals, idx[1:2], lr=1e-2, config=cfg, seeds=[5])
    assert _same({k: v[1] for k, v in full.params.items()}, {k: v[0] for k, v in alone.params.items()})

    # Stop at step 25 through a hook that snapshots the state, then resume from the snapshot.
    snaps = {}
    first = TrainConfig(steps=60, batch_size=32)

    def snap(step, state):
        if step == 25:
            snaps["s"] = TrainState.from_tensors(state.tensors(), first.steps, torch.device("cpu"))

    train(model, init_params(model, [4, 5, 6]), spirals, idx, lr=1e-2, config=first, seeds=[4, 5, 6],
          hooks=[(25, snap)])
    resumed = train(model, init_params(model, [4, 5, 6]), spirals, idx, lr=1e-2, config=first,
                    seeds=[4, 5, 6], state=snaps["s"])
    assert _same(resumed.params, full.params)
    assert torch.equal(resumed.state.loss_history, full.state.loss_history)


def test_squared_loss_and_sgd_train(spirals):
    model = ResNet(width=8, depth=3, out_dim=1)
    res = train(model, init_params(model, [0]), spirals, [torch.arange(512)], lr=5e-2,
                config=TrainConfig(steps=300, loss="squared", optimizer="sgd", momentum=0.9), seeds=[0])
    hist = res.state.loss_history[:, 0]
    assert hist[-1] < 0.6 * hist[0]
    assert res.metrics["train_acc"][0] > 0.6


def test_ode_resnet_trains_in_the_same_engine(spirals):
    model = ODEResNet(width=8, knots=4, method="rk4")
    res = train(model, init_params(model, [0, 1]), spirals, _indices(2048, [256, 512], [0, 1]),
                lr=1e-2, config=TrainConfig(steps=150), seeds=[0, 1])
    assert torch.all(res.state.loss_history[-1] < 0.7 * res.state.loss_history[0])


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    return Dataset("digits", x[:1200], y[:1200], x[1200:], y[1200:], 10,
                   mean=x[:1200].mean(), std=x[:1200].std())


def test_conv_resnet_trains_on_8x8_digits_well_above_chance(digits):
    model = ConvResNet(in_channels=1, out_dim=10, channels=8, depth=3)
    res = train(model, init_params(model, [0]), digits, [torch.arange(600)], lr=1e-2,
                config=TrainConfig(steps=120), seeds=[0])
    assert res.metrics["test_acc"][0] > 0.75  # chance is 0.1


def test_conv_resnet_in_a_batch_is_bitwise_the_model_alone(digits):
    model = ConvResNet(in_channels=1, out_dim=10, channels=4, depth=2)
    idx = _indices(1200, [100, 64, 150], [1, 2, 3])
    cfg = TrainConfig(steps=20)
    batch = train(model, init_params(model, [1, 2, 3]), digits, idx, lr=1e-2, config=cfg, seeds=[1, 2, 3])
    alone = train(model, init_params(model, [3]), digits, idx[2:], lr=1e-2, config=cfg, seeds=[3])
    assert _same({k: v[2] for k, v in batch.params.items()}, {k: v[0] for k, v in alone.params.items()})


def test_bad_engine_arguments_are_named(spirals):
    model = ResNet(width=4, depth=2)
    params = init_params(model, [0, 1])
    with pytest.raises(ValueError, match="lr must be one number or one per model"):
        train(model, params, spirals, [torch.arange(8)] * 2, lr=[1e-2, 1e-2, 1e-2])
    with pytest.raises(ValueError, match="train_indices has 1 index sets for 2 models"):
        train(model, params, spirals, [torch.arange(8)], lr=1e-2)
    with pytest.raises(ValueError, match="optimizer must be one of 'adam', 'sgd'"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match=r"steps must be an integer in \[0, 10000000\], got -3"):
        TrainConfig(steps=-3)

"""The engine's objective (penalty, frozen names, sample hook) and its optimiser objects."""

import pytest
import torch

from resdyn._seeds import generator_for
from resdyn.models import ResNet, init_params
from resdyn.training import LBFGS, SGD, Adam, Objective, TrainConfig, train

SIZES = [64, 16, 100, 32]
SEEDS = [11, 3, 5, 8]


def _indices(n_pool, sizes, seeds):
    return [torch.randperm(n_pool, generator=torch.Generator().manual_seed(s))[:S]
            for s, S in zip(seeds, sizes, strict=True)]


def _row(p, e):
    return {k: v[e] for k, v in p.items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _l2(p):
    return sum(v.flatten(1).square().sum(1) for v in p.values())


def _group_vs_alone(spirals, objective, optimizer, lrs, steps, es=(0, 2)):
    model = ResNet(width=6, depth=3)
    idx = _indices(len(spirals.y), SIZES, SEEDS)
    cfg = TrainConfig(steps=steps)
    group = train(model, init_params(model, SEEDS), spirals, idx, lr=lrs, config=cfg, seeds=SEEDS,
                  objective=objective, optimizer=optimizer)
    for e in es:
        alone = train(model, init_params(model, [SEEDS[e]]), spirals, [idx[e]], lr=lrs[e:e + 1], config=cfg,
                      seeds=[SEEDS[e]], objective=objective, optimizer=optimizer)
        assert _same(_row(alone.params, 0), _row(group.params, e))
        assert torch.equal(alone.state.loss_history[:, 0], group.state.loss_history[:, e])
        for k, v in alone.state.opt_state.items():
            assert torch.equal(v[0], group.state.opt_state[k][e]), k
    return group


def test_penalised_objective_is_batch_invariant_and_the_penalty_acts(spirals):
    lrs = torch.tensor([1e-2, 3e-3, 2e-2, 5e-3])
    obj = Objective(penalty=lambda p: 1e-2 * _l2(p))
    group = _group_vs_alone(spirals, obj, Adam(), lrs, 60)
    plain = train(ResNet(width=6, depth=3), init_params(ResNet(width=6, depth=3), SEEDS), spirals,
                  _indices(len(spirals.y), SIZES, SEEDS), lr=lrs, config=TrainConfig(steps=60), seeds=SEEDS)
    # The history holds J = L + penalty: at step 0 the parameters agree, so J - L is the penalty.
    p0 = init_params(ResNet(width=6, depth=3), SEEDS)
    diff = group.state.loss_history[0] - plain.state.loss_history[0]
    assert torch.allclose(diff, 1e-2 * _l2(p0), rtol=1e-5, atol=0)
    # and the penalty shrinks the weights relative to the unpenalised run
    assert torch.all(_l2(group.params) < _l2(plain.params))


def test_lbfgs_is_batch_invariant_and_decreases_every_objective(spirals):
    lrs = torch.tensor([1.0, 0.5, 1.0, 0.25])
    group = _group_vs_alone(spirals, Objective(penalty=lambda p: 1e-3 * _l2(p)), LBFGS(history=5),
                            lrs, 25, es=(1, 2))
    hist = group.state.loss_history
    # Armijo steps never increase a model's objective
    assert torch.all(hist[1:] <= hist[:-1])
    assert torch.all(hist[-1] < 0.9 * hist[0])  # 25 steps on spirals: 12% to 64% lower seen
    assert torch.all(group.state.opt_state["lbfgs.iters"] > 20)


def test_lbfgs_fixed_rate_and_sgd_are_batch_invariant(spirals):
    _group_vs_alone(spirals, None, LBFGS(history=3, line_search=None), torch.full((4,), 0.05), 15,
                    es=(3,))
    _group_vs_alone(spirals, None, SGD(momentum=0.9), torch.tensor([1e-2, 2e-2, 5e-2, 1e-1]), 30,
                    es=(1,))


def test_lbfgs_minimises_a_quadratic_to_its_known_minimiser(spirals):
    # With the data loss weighted 0 through `combine`, J = |theta - c|^2 / 2: L-BFGS must reach c.
    model = ResNet(width=3, depth=2)
    p = init_params(model, [0, 1], torch.float64)
    target = {k: torch.full_like(v, 0.3) for k, v in p.items()}

    def combine(L, theta):
        return 0.0 * L + 0.5 * sum((theta[k] - target[k]).flatten(1).square().sum(1) for k in theta)

    res = train(model, p, spirals, _indices(len(spirals.y), [20, 30], [0, 1]), lr=1.0,
                config=TrainConfig(steps=30), objective=Objective(combine=combine), optimizer=LBFGS())
    for k in p:
        assert torch.allclose(res.params[k], target[k], atol=1e-8, rtol=0), k
    assert torch.all(res.state.loss_history[-1] < 1e-12)


def test_frozen_parameters_stay_bitwise_unchanged_and_others_train(spirals):
    model = ResNet(width=6, depth=3)
    p = init_params(model, SEEDS[:2])
    res = train(model, p, spirals, _indices(len(spirals.y), SIZES[:2], SEEDS[:2]), lr=1e-2,
                config=TrainConfig(steps=20), objective=Objective(frozen=frozenset({"A", "c", "V"})))
    for k in ("A", "c", "V"):
        assert torch.equal(res.params[k], p[k])
        assert f"m.{k}" not in res.state.opt_state
    assert not torch.equal(res.params["W"], p["W"])
    with pytest.raises(ValueError, match=r"frozen names unknown parameters \['Q'\]"):
        train(model, p, spirals, [torch.arange(8)] * 2, lr=1e-2, config=TrainConfig(steps=1),
              objective=Objective(frozen=frozenset({"Q"})))


def test_sample_hook_sees_step_and_seeds_and_its_noise_stays_per_model(spirals):
    model = ResNet(width=6, depth=3)
    calls = []

    def sample(theta, t, seeds):
        calls.append((t, list(seeds), sorted(theta)))
        noise = torch.stack([torch.randn(theta["W"].shape[1:], generator=generator_for(s, f"pb/{t}"))
                             for s in seeds])
        return {**theta, "W": theta["W"] + 0.01 * noise}

    obj = Objective(sample=sample, frozen=frozenset({"A"}))
    idx = _indices(len(spirals.y), SIZES[:3], SEEDS[:3])
    cfg = TrainConfig(steps=5)
    group = train(model, init_params(model, SEEDS[:3]), spirals, idx, lr=1e-2, config=cfg, seeds=SEEDS[:3],
                  objective=obj)
    # steps 0..4 in the differentiated graph, then once more for the final metrics at step 5
    assert [c[0] for c in calls] == [0, 1, 2, 3, 4, 5]
    assert all(c[1] == SEEDS[:3] and "A" not in c[2] for c in calls)
    calls.clear()
    alone = train(model, init_params(model, [SEEDS[1]]), spirals, idx[1:2], lr=1e-2, config=cfg,
                  seeds=[SEEDS[1]], objective=obj)
    assert _same(_row(alone.params, 0), _row(group.params, 1))
    assert torch.equal(alone.metrics["train_loss"][0], group.metrics["train_loss"][1])
    # the noise did something: without it the run differs
    plain = train(model, init_params(model, [SEEDS[1]]), spirals, idx[1:2], lr=1e-2, config=cfg,
                  seeds=[SEEDS[1]])
    assert not torch.equal(plain.params["W"], alone.params["W"])


def test_a_nan_model_under_lbfgs_does_not_touch_the_others(spirals):
    model = ResNet(width=6, depth=3)
    idx = _indices(len(spirals.y), SIZES[:3], SEEDS[:3])
    clean = init_params(model, SEEDS[:3])
    poisoned = {k: v.clone() for k, v in clean.items()}
    poisoned["W"][1, 0, 0, 0] = float("nan")
    cfg = TrainConfig(steps=8)
    a = train(model, clean, spirals, idx, lr=1.0, config=cfg, seeds=SEEDS[:3], optimizer=LBFGS(history=4))
    b = train(model, poisoned, spirals, idx, lr=1.0, config=cfg, seeds=SEEDS[:3], optimizer=LBFGS(history=4))
    for e in (0, 2):
        assert _same(_row(a.params, e), _row(b.params, e))
    assert b.metrics["diverged_step"].tolist() == [-1, 0, -1]


def test_progress_callable_sees_every_step(spirals):
    model = ResNet(width=4, depth=2)
    seen = []
    train(model, init_params(model, [0, 1]), spirals, [torch.arange(16)] * 2, lr=1e-2,
          config=TrainConfig(steps=4), progress=lambda step, total, J: seen.append((step, total, J.shape)))
    assert seen == [(s, 4, torch.Size([2])) for s in (1, 2, 3, 4)]


def test_bad_objective_and_optimiser_arguments_are_named():
    with pytest.raises(ValueError, match="loss must be one of"):
        Objective(loss="hinge")
    with pytest.raises(ValueError, match="frozen must be a set of parameter names"):
        Objective(frozen="A")
    with pytest.raises(ValueError, match="history must be an integer >= 1"):
        LBFGS(history=0)
    with pytest.raises(ValueError, match="line_search must be one of 'armijo'"):
        LBFGS(line_search="wolfe")
    with pytest.raises(ValueError, match=r"betas\[1\] must be a number in \[0, 1\), got 1.0"):
        Adam(betas=(0.9, 1.0))


def test_training_in_blocks_of_max_rows_changes_no_number(spirals):
    model = ResNet(width=6, depth=3)
    idx = _indices(len(spirals.y), SIZES, SEEDS)
    obj = Objective(penalty=lambda p: 1e-2 * _l2(p))
    cfg = TrainConfig(steps=15)
    whole = train(model, init_params(model, SEEDS), spirals, idx, lr=1e-2, config=cfg, seeds=SEEDS,
                  objective=obj)
    blocks = train(model, init_params(model, SEEDS), spirals, idx, lr=1e-2, config=cfg, seeds=SEEDS,
                   objective=obj, max_rows=100)  # blocks (64, 16), (100), (32)
    assert _same(whole.params, blocks.params)
    assert torch.equal(whole.state.loss_history, blocks.state.loss_history)
    assert torch.equal(whole.metrics["test_loss"], blocks.metrics["test_loss"])

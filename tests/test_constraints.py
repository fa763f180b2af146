"""Constraints are declared once, on the dataclasses, and one validator serves every caller: a value
refused in a spec is refused with the same words when the dataclass (or ``train``) is called
directly. ``train`` takes one way to say each thing. The shipped specs keep their cell ids."""

import json
from pathlib import Path

import pytest
import torch

from resdyn._checks import (
    ConstraintError,
    ConstraintTypeError,
    Interval,
    Kind,
    ListOf,
    Options,
    OrNone,
    Table,
    check_table,
    constraints_of,
    validate,
)
from resdyn.models import ResNet, init_params
from resdyn.sweeps import SpecError, expand, parse_spec
from resdyn.sweeps.spec import TRAIN_CONSTRAINTS, RunOptions, load_spec, spec_path
from resdyn.training.control import ControlConfig
from resdyn.training.engine import LEARNING_RATE, TrainConfig, train
from resdyn.training.objective import Objective
from resdyn.training.optim import LBFGS, SGD, Adam

IDS = Path(__file__).parent / "fixtures" / "spec_cell_ids.json"


def _raw(section: str = "train", **values) -> dict:
    raw = {"data": {"name": "two_spirals"}, "model": {"family": "resnet", "width": 4, "depth": 2},
           "train": {"steps": 3}, "sweep": {"sample_size": [8]}}
    raw.setdefault(section, {}).update(values)
    return raw


def _spec_error(raw: dict) -> str:
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    return str(err.value)


# -- the validator -------------------------------------------------------------------------------

@pytest.mark.parametrize(("constraint", "good", "bad"), [
    (Interval(0, None, closed="neither"), [1e-300, 1, 5.0], [0, 0.0, -1, float("inf"), float("nan"), True]),
    (Interval(0, None, closed="left"), [0, 0.0, 3.5], [-1e-300, float("inf")]),
    (Interval(0, 1, closed="left"), [0, 0.5, 0.999999], [1, 1.0, -0.1]),
    (Interval(1, 10, integer=True), [1, 10], [0, 11, 5.0, True, "5"]),
    (Interval(0, None, integer=True), [0, 2**70], [-1, 1.0]),
    (Options("a", "b"), ["a", "b"], ["c", None, 0]),
    (Options(0, 1), [0, 1], [False, True, 0.0]),
    (OrNone(Interval(1, None, integer=True)), [None, 1], [0]),
    (Kind(str, "a non-empty string", nonempty=True), ["x"], ["", 3]),
    (ListOf(Interval(0, 1, closed="left"), 2, "a list of two numbers in [0, 1)"),
     [[0, 0.5], (0.9, 0.999)], [[0.9], [0.9, 1.0], "ab", (0.1, 0.2, 0.3)]),
])
def test_each_constraint_accepts_and_refuses_exactly_its_values(constraint, good, bad):
    for v in good:
        assert constraint.check("k", v) is v
    for v in bad:
        with pytest.raises(ConstraintError):
            constraint.check("k", v)


def test_messages_name_the_path_and_what_is_allowed():
    with pytest.raises(ConstraintError) as err:
        Interval(0, None, closed="neither").check("lr", -1)
    assert (err.value.path, err.value.reason) == ("lr", "must be a number > 0 and finite, got -1")
    assert str(err.value) == "lr must be a number > 0 and finite, got -1"
    betas = ListOf(Interval(0, 1, closed="left"), 2, "a list of two numbers in [0, 1)")
    with pytest.raises(ConstraintError, match=r"^betas\[1\] must be a number in \[0, 1\), got 1.5$"):
        betas.check("betas", [0.5, 1.5])
    with pytest.raises(ConstraintTypeError, match=r"^n must be an integer in \[1, 10\], got True$"):
        Interval(1, 10, integer=True).check("n", True)
    with pytest.raises(ConstraintError, match=r"^x unknown key; allowed: steps, eps$"):
        check_table({"steps": Interval(0, None, integer=True), "eps": Interval(0, None)}, {"x": 1})


def test_validate_checks_every_declared_field_of_an_instance():
    cfg = TrainConfig()
    object.__setattr__(cfg, "chunk_size", 0)  # bypass __post_init__ to test validate alone
    with pytest.raises(ConstraintError, match=r"^chunk_size must be an integer in \[1, 1000000\], got 0$"):
        validate(cfg)


def test_a_table_names_its_own_path_and_the_field():
    whole = Table(ControlConfig, "a table ([train.control])")
    with pytest.raises(ConstraintError) as err:
        whole.check("train.control", {"lbfgs_iters": -1})
    assert err.value.path == "train.control"
    assert err.value.reason == "lbfgs_iters must be an integer >= 0, got -1"
    with pytest.raises(ConstraintError) as err:
        whole.check("train.control", {"alpah": 1.0})
    assert err.value.path == "train.control.alpah" and err.value.reason.startswith("unknown key")
    with pytest.raises(ConstraintTypeError, match=r"must be a table \(\[train.control\]\), got 3"):
        whole.check("train.control", 3)


# -- declared once: the spec and the dataclass refuse with the same words ---------------------------

def test_the_spec_checks_train_keys_with_the_very_declarations_of_the_dataclasses():
    declared = constraints_of(TrainConfig)
    for name, constraint in declared.items():
        assert TRAIN_CONSTRAINTS[name] is constraint, name
    assert TRAIN_CONSTRAINTS["lr"] is LEARNING_RATE
    adam, sgd = constraints_of(Adam), constraints_of(SGD)
    assert declared["eps"] is adam["eps"] and declared["betas"] is adam["betas"]
    assert declared["momentum"] is sgd["momentum"]
    assert declared["weight_decay"] is adam["weight_decay"] is sgd["weight_decay"]
    assert constraints_of(ControlConfig)["history_size"] is constraints_of(LBFGS)["history"]


# (TrainConfig field, a refused value, the words both places use)
TRAIN_BAD = [
    ("steps", -1, "must be an integer in [0, 10000000], got -1"),
    ("steps", 10_000_001, "must be an integer in [0, 10000000], got 10000001"),
    ("eps", 0, "must be a number > 0 and finite, got 0"),
    ("momentum", 1.0, "must be a number in [0, 1), got 1.0"),
    ("weight_decay", -0.5, "must be a number >= 0 and finite, got -0.5"),
    ("batch_size", 0, "must be an integer in [1, 10000000], got 0"),
    ("chunk_size", 1_000_001, "must be an integer in [1, 1000000], got 1000001"),
    ("loss", "mse", "must be one of 'cross_entropy', 'squared', 'correlation', got 'mse'"),
    ("optimizer", "lbfgs", "must be one of 'adam', 'sgd', got 'lbfgs'"),
    ("lr_schedule", "linear", "must be one of 'constant', 'cosine', got 'linear'"),
    ("warmup_steps", -2, "must be an integer >= 0, got -2"),
]


@pytest.mark.parametrize(("key", "value", "says"), TRAIN_BAD)
def test_a_train_value_is_refused_with_the_same_words_in_a_spec_and_directly(key, value, says):
    assert _spec_error(_raw(**{key: value})) == f"spec key train.{key}: {says}"
    with pytest.raises(ConstraintError) as err:
        TrainConfig(**{key: value})
    assert str(err.value) == f"{key} {says}"


def test_betas_are_refused_at_the_same_item_in_a_spec_a_trainconfig_and_adam():
    says = "must be a number in [0, 1), got 1.5"
    assert _spec_error(_raw(betas=[0.9, 1.5])) == f"spec key train.betas[1]: {says}"
    for make in (lambda: TrainConfig(betas=(0.9, 1.5)), lambda: Adam(betas=(0.9, 1.5))):
        with pytest.raises(ConstraintError) as err:
            make()
        assert str(err.value) == f"betas[1] {says}"


def test_lr_zero_is_refused_alike_by_a_spec_a_sweep_and_train(spirals):
    says = "must be a number > 0 and finite, got 0"
    assert _spec_error(_raw(lr=0)) == f"spec key train.lr: {says}"
    assert _spec_error(_raw("sweep", lr=[0.01, 0])) == f"spec key sweep.lr[1]: {says}"
    model = ResNet(width=4, depth=2)
    p = init_params(model, [0, 1])
    with pytest.raises(ConstraintError) as err:
        train(model, p, spirals, [torch.arange(8)] * 2, lr=0, config=TrainConfig(steps=1))
    assert str(err.value) == f"lr {says}"
    with pytest.raises(ConstraintError) as err:
        train(model, p, spirals, [torch.arange(8)] * 2, lr=[1e-2, 0.0], config=TrainConfig(steps=1))
    assert str(err.value) == "lr[1] must be a number > 0 and finite, got 0.0"
    with pytest.raises(ConstraintError, match=r"^lr\[0\] must be a number > 0 and finite, got inf$"):
        train(model, p, spirals, [torch.arange(8)] * 2, lr=torch.tensor([float("inf"), 1e-2]),
              config=TrainConfig(steps=1))


def test_a_control_value_is_refused_alike_in_a_spec_and_directly():
    says = "lbfgs_iters must be an integer >= 0, got -1"
    assert _spec_error(_raw(control={"lbfgs_iters": -1})) == f"spec key train.control: {says}"
    raw = _raw()
    raw["sweep"]["variant"] = [{"train": {"control": {"alpha": -1.0}}}]
    assert _spec_error(raw) == ("spec key sweep.variant[0].train.control: alpha must be a number >= 0 "
                                "and finite, got -1.0")
    with pytest.raises(ConstraintError) as err:
        ControlConfig(lbfgs_iters=-1)
    assert str(err.value) == says


@pytest.mark.parametrize(("key", "value", "says"), [
    ("dtype", "float16", "must be 'float32' or 'float64', got 'float16'"),
    ("group_size", 0, "must be an integer in [1, 100000], got 0"),
    ("threads", 2000, "must be an integer in [1, 1024], got 2000"),
    ("checkpoint_seconds", 0, "must be a finite number of seconds > 0 and <= 2.592e+06 (30 days), got 0"),
])
def test_a_run_value_is_refused_alike_in_a_spec_and_directly(key, value, says):
    assert _spec_error(_raw("run", **{key: value})) == f"spec key run.{key}: {says}"
    with pytest.raises(ConstraintError) as err:
        RunOptions(**{key: value})
    assert str(err.value) == f"{key} {says}"


def test_the_spec_parses_run_into_runoptions():
    spec = parse_spec(_raw("run", dtype="float64", group_size=7, threads=2))
    assert spec.run == RunOptions(dtype="float64", group_size=7, threads=2)


def test_cross_field_checks_run_on_each_cell_with_its_sweep_point():
    raw = _raw(warmup_steps=2)
    raw["sweep"]["lr_schedule"] = ["cosine", "constant"]
    spec = parse_spec(raw)  # each key is valid alone
    with pytest.raises(SpecError, match=r"^spec key train \(sample_size=8, lr_schedule='constant', "
                       r"seed=0\): warmup_steps needs lr_schedule = 'cosine'"):
        expand(spec)


def test_data_sample_options_are_checked_with_their_key():
    spec = parse_spec({**_raw(), "data": {"name": "two_spirals", "sample": "random"}})
    with pytest.raises(SpecError, match=r"^spec key data.sample \(sample_size=8, seed=0\): must be one "
                       r"of 'stratified', 'permutation', 'prefix', got 'random'$"):
        expand(spec)


# -- train: keyword-only, one way to say each thing ---------------------------------------------------

def _setup():
    model = ResNet(width=4, depth=2)
    return model, init_params(model, [0]), [torch.arange(16)]


def test_train_options_are_keyword_only(spirals):
    model, p, idx = _setup()
    with pytest.raises(TypeError):
        train(model, p, spirals, idx, 1e-2)


def test_an_objective_and_a_different_config_loss_is_an_error(spirals):
    model, p, idx = _setup()
    with pytest.raises(ValueError, match=r"objective= \(loss 'cross_entropy'\) and config.loss='squared'"):
        train(model, p, spirals, idx, lr=1e-2, objective=Objective(), config=TrainConfig(loss="squared"))
    # the same loss said twice, or said only in the objective, is one way: both train
    a = train(model, p, spirals, idx, lr=1e-2, objective=Objective(loss="squared"),
              config=TrainConfig(steps=2, loss="squared"))
    b = train(model, p, spirals, idx, lr=1e-2, config=TrainConfig(steps=2, loss="squared"))
    assert torch.equal(a.state.loss_history, b.state.loss_history)


def test_an_optimizer_and_different_config_optimiser_settings_is_an_error(spirals):
    model, p, idx = _setup()
    with pytest.raises(ValueError, match=r"optimizer=SGD\(momentum=0.5.*and config's optimiser"):
        train(model, p, spirals, idx, lr=1e-2, optimizer=SGD(momentum=0.5),
              config=TrainConfig(optimizer="sgd", momentum=0.9))
    with pytest.raises(ValueError, match=r"optimizer=LBFGS"):
        train(model, p, spirals, idx, lr=1e-2, optimizer=LBFGS(), config=TrainConfig(eps=1e-6))
    a = train(model, p, spirals, idx, lr=1e-2, optimizer=SGD(momentum=0.9),
              config=TrainConfig(steps=3, optimizer="sgd", momentum=0.9))
    b = train(model, p, spirals, idx, lr=1e-2, config=TrainConfig(steps=3, optimizer="sgd", momentum=0.9))
    c = train(model, p, spirals, idx, lr=1e-2, optimizer=SGD(momentum=0.9), config=TrainConfig(steps=3))
    assert torch.equal(a.params["W"], b.params["W"]) and torch.equal(b.params["W"], c.params["W"])


# -- the shipped specs keep their cells --------------------------------------------------------------

def test_every_shipped_spec_expands_to_the_recorded_cell_ids():
    recorded = json.loads(IDS.read_text())
    missing = []
    for name, ids in recorded.items():
        try:
            cells = expand(load_spec(spec_path(name)))
        except SpecError as err:  # an image spec whose data files are not on this machine
            if not str(err).startswith("spec key data ("):
                raise
            missing.append(name)
            continue
        assert [c.cell_id for c in cells] == ids, name
    if len(missing) == len(recorded):
        pytest.skip("no shipped spec's data is on this machine")

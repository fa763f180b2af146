"""Bad specs are refused at parse time with the key path, before any file exists; a fuzz test."""

import copy
import os

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from resdyn.cli.main import main
from resdyn.sweeps import SpecError, expand, parse_spec
from resdyn.sweeps.spec import MAX_MODEL_BYTES

BASE_LINES = {"model": ['family = "resnet"', "width = 4", "depth = 2"],
              "train": ["steps = 5", "lr = 0.01"], "sweep": ["sample_size = [16]"], "run": []}


# (section, TOML line, key path in the message, what the message says)
ACCEPTED_BEFORE = [
    ("train", "lr = inf", "train.lr", "must be a number > 0 and finite, got inf"),
    ("train", "lr = nan", "train.lr", "must be a number > 0 and finite, got nan"),
    ("train", "eps = nan", "train.eps", "must be a number > 0 and finite"),
    ("train", "eps = -1.0", "train.eps", "must be a number > 0 and finite, got -1.0"),
    ("train", "betas = [1.5, 2.0]", "train.betas[0]", "must be a number in [0, 1), got 1.5"),
    ("train", "betas = [0.9]", "train.betas", "must be a list of two numbers in [0, 1)"),
    ("train", "momentum = -1.0", "train.momentum", "must be a number in [0, 1), got -1.0"),
    ("train", "weight_decay = inf", "train.weight_decay", "must be a number >= 0 and finite, got inf"),
    ("run", "lease_seconds = nan", "run.lease_seconds", "must be a finite number of seconds >= 5"),
    ("run", "lease_seconds = inf", "run.lease_seconds", "must be a finite number of seconds >= 5"),
    ("run", "lease_seconds = 0.5", "run.lease_seconds", "renewed every third of it"),
    ("run", "checkpoint_seconds = nan", "run.checkpoint_seconds", "must be a finite number of seconds"),
    ("run", "checkpoint_seconds = inf", "run.checkpoint_seconds", "must be a finite number of seconds"),
    ("model", "horizon = nan", "model.horizon", "must be a finite number, got nan"),
    ("sweep", "lr = [0.01, inf]", "sweep.lr[1]", "must be a number > 0 and finite, got inf"),
    ("sweep", "momentum = [0.5, 1.0]", "sweep.momentum[1]", "must be a number in [0, 1), got 1.0"),
    ("sweep", "train = [{eps = -1.0}]", "sweep.train[0].eps", "must be a number > 0 and finite"),
    ("sweep", "seed = [0, 1.5]", "sweep.seed[1]", "must be an integer"),
    ("train", "steps = 100000000000", "train.steps", "must be an integer in [0, 10000000]"),
    ("model", "width = 100000000", "model.width", "must be at most 1,000,000"),
    ("model", "depth = 100000000", "model.depth", "must be at most 1,000,000"),
    ("sweep", "width = [4, 100000000]", "sweep.width[1]", "must be at most 1,000,000"),
    ("run", "group_size = 10000000", "run.group_size", "must be an integer in [1, 100000]"),
]


def _toml(section: str, line: str) -> str:
    key = line.split("=")[0].strip()
    text = 'name = "bad"\n[data]\nname = "two_spirals"\n'
    for sec, lines in BASE_LINES.items():
        kept = [ln for ln in lines if sec != section or ln.split("=")[0].strip() != key]
        text += f"[{sec}]\n" + "\n".join(kept + ([line] if sec == section else [])) + "\n"
    return text


@pytest.mark.parametrize(("section", "line", "key", "says"), ACCEPTED_BEFORE)
def test_invalid_values_are_one_line_spec_errors_and_nothing_is_written(
        tmp_path, monkeypatch, section, line, key, says):
    spec = tmp_path / "bad.toml"
    spec.write_text(_toml(section, line))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["run", str(spec), "--quiet"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert lines[0].startswith(f"error: spec key {key}: ") and says in lines[0], lines[0]
    assert os.listdir(tmp_path) == ["bad.toml"]  # no runs/, no store


def test_family_must_be_a_string():
    raw = {"data": {"name": "two_spirals"}, "model": {"family": ["resnet"]}, "train": {},
           "sweep": {"sample_size": [8]}}
    with pytest.raises(SpecError, match=r"spec key model.family: must be a string naming a model family"):
        parse_spec(raw)
    raw["model"]["family"] = "resnet"
    raw["sweep"]["model"] = [{"family": ["resnet"]}]
    with pytest.raises(SpecError, match=r"spec key sweep.model\[0\].family: must be a string"):
        parse_spec(raw)


def test_a_model_too_big_for_memory_names_the_memory_it_would_need():
    raw = {"data": {"name": "two_spirals"}, "model": {"family": "resnet", "width": 100_000, "depth": 10},
           "train": {}, "sweep": {"sample_size": [8]}}
    with pytest.raises(SpecError, match=r"spec key model: a model of width 100000 and depth 10 has about "
                       r"[\d,]+ parameters and would need about [\d,.]+ GiB") as err:
        parse_spec(raw)
    # 2 L W^2 parameters alone, 4 float64 copies: the stated need is at least that.
    need = float(str(err.value).split("about ")[2].split(" GiB")[0].replace(",", ""))
    assert need * 2**30 >= 4 * 8 * 2 * 10 * 100_000**2 > MAX_MODEL_BYTES
    raw["model"]["width"] = 64  # an ordinary size parses
    parse_spec(raw)


# -- fuzz ---------------------------------------------------------------------------------------

VALID = {
    "name": "fuzz",
    "data": {"name": "two_spirals"},
    "model": {"family": "resnet", "width": 4, "depth": 2},
    "train": {"steps": 3, "lr": 0.01},
    "measures": {},
    "trackers": {},
    "sweep": {"sample_size": [8], "seed": [0]},
    "run": {"group_size": 4},
}
KEYS = ["name", "description", "data", "model", "train", "sweep", "run", "measures", "trackers",
        "family", "width", "depth", "steps", "lr", "eps", "betas", "momentum", "weight_decay",
        "optimizer", "loss", "batch_size", "chunk_size", "sample_size", "seed", "activation",
        "horizon", "tau", "tied", "dtype", "group_size", "checkpoint_seconds", "lease_seconds",
        "every", "gram", "test_error_bound", "delta", "noise", "train.lr", "model.width", "knots",
        "bogus", "../x", "", "a\nb"]
scalars = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, 1, -1, 2, 3, 8, 10**6, 10**7, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 0.999, 1.0, 1.5, -1.0, 1e-300, 1e300]),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["resnet", "dnl", "tanh", "relu", "adam", "sgd", "float64", "two_spirals",
                     "mnist", "/abs/x", "../../x", "x" * 300, "a\x00b"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
    max_leaves=6)
edits = st.lists(st.tuples(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3),
                           st.sampled_from(["set", "delete"]), values), min_size=1, max_size=4)


def _apply(raw: dict, path: list[str], op: str, value) -> None:
    node = raw
    for k in path[:-1]:
        nxt = node.get(k) if isinstance(node, dict) else None
        if not isinstance(nxt, dict):
            if op == "delete" or not isinstance(node, dict):
                return
            nxt = node[k] = {}
        node = nxt
    if not isinstance(node, dict):
        return
    if op == "delete":
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


RESULTS = {"parsed": 0, "refused": 0}


@seed(20261202)
@settings(max_examples=2000, deadline=None, database=None, derandomize=False,
          suppress_health_check=list(HealthCheck))
@given(edits)
def test_fuzz_every_spec_parses_or_raises_spec_error(changes):
    raw = copy.deepcopy(VALID)
    for path, op, value in changes:
        _apply(raw, path, op, value)
    try:
        spec = parse_spec(raw)
    except SpecError as err:
        assert str(err).startswith("spec key ") and "\n" not in str(err).split(":", 1)[0]
        RESULTS["refused"] += 1
        return
    try:
        cells = expand(spec)
    except SpecError:
        RESULTS["refused"] += 1
        return
    assert cells and all(len(c.cell_id) == 20 for c in cells)
    RESULTS["parsed"] += 1


def test_fuzz_saw_both_outcomes():
    """The fuzz above exercised both paths (run after it, in file order)."""
    if sum(RESULTS.values()) < 2000:
        pytest.skip("the fuzz test did not run in this session")
    assert RESULTS["parsed"] > 50 and RESULTS["refused"] > 500, RESULTS

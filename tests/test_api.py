"""Trained models one call away: load_cell reproduces the stored numbers; as_module; size checks."""

import pytest
import torch

import resdyn
from resdyn.models.registry import build_model, build_model_for, check_model_fits
from resdyn.sweeps.spec import load_spec
from resdyn.sweeps.store import Store, StoreError
from resdyn.sweeps.sweep import run_sweep
from resdyn.training.engine import evaluate

SPEC = """
name = "api-test"
[data]
name = "two_spirals"
[model]
family = "resnet"
width = 6
depth = 2
activation = "tanh"
[train]
steps = 25
lr = 2e-2
[sweep]
data = [{ name = "two_spirals" }, { name = "digits" }]
sample_size = [24, 48]
seed = [0, 1]
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    (d / "s.toml").write_text(SPEC)
    run_sweep(load_spec(d / "s.toml"), d / "s.sqlite")
    return d / "s.sqlite"


def test_load_cell_then_evaluate_reproduces_the_stored_accuracies_exactly(store):
    with Store(store, create=False) as st:
        rows = st.rows()
    assert len(rows) == 8
    for row in rows:
        cell = resdyn.load_cell(store, row["cell_id"])
        model, params, config = cell
        assert config == row["config"]
        assert next(iter(params.values())).shape[0] == 1
        data = cell.data()
        loss = config["train"]["loss"]
        te = evaluate(model, params, data, None, loss, config["train"]["chunk_size"], "test")
        tr = evaluate(model, params, data, [cell.train_indices()], loss,
                      config["train"]["chunk_size"])
        assert float(te["acc"][0]) == row["metrics"]["test_acc"]
        assert float(tr["acc"][0]) == row["metrics"]["train_acc"]
        assert float(te["loss"][0]) == row["metrics"]["test_loss"]


def test_load_cell_by_prefix_and_clear_errors(store):
    with Store(store, create=False) as st:
        cid = st.rows()[0]["cell_id"]
    assert resdyn.load_cell(store, cid[:8]).cell_id == cid
    with pytest.raises(StoreError, match="no cell 'zzzzzz'"):
        resdyn.load_cell(store, "zzzzzz")
    with pytest.raises(StoreError, match="too short"):
        resdyn.load_cell(store, "0")
    with pytest.raises(StoreError, match="no store"):
        resdyn.load_cell(store.parent / "absent.sqlite", cid)


def test_as_module_gives_the_functional_models_outputs_and_trains(store):
    with Store(store, create=False) as st:
        row = next(r for r in st.rows() if r["config"]["data"]["name"] == "digits")
    cell = resdyn.load_cell(store, row["cell_id"])
    data = cell.data()
    net = resdyn.as_module(cell.model, cell.params, data=data)
    x = data.prepare(data.x_test[:50], torch.float32, "cpu")
    want = cell.model.forward(cell.params, x.unsqueeze(0))[0]
    assert torch.equal(net(x), want)
    assert {n for n, _ in net.named_parameters()} == {f"weights.{k}" for k in cell.params}
    # one SGD step through torch's own optimiser changes the outputs
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(net(x), data.y_test[:50])
    loss.backward()
    opt.step()
    assert not torch.equal(net(x), want)


def test_sizes_come_from_the_data_and_a_mismatch_is_a_clear_error():
    from resdyn.data import load

    digits = load("digits")
    model = build_model_for("resnet", digits.input_shape, digits.num_classes, width=8, depth=2)
    assert (model.in_dim, model.out_dim) == (64, 10)
    wrong = build_model("resnet", width=8, depth=2)  # in_dim 2, out_dim 2 by default
    with pytest.raises(ValueError, match=r"in_dim=2 but the data has 64 input features.*out_dim=2 "
                                         r"but the data has 10 classes"):
        check_model_fits(wrong, digits.input_shape, digits.num_classes)
    with pytest.raises(ValueError, match="does not fit data set 'digits'"):
        resdyn.as_module(wrong, {"A": torch.zeros(1, 8, 2)}, data=digits)
    conv = build_model_for("conv_resnet", (1, 8, 8), 10, channels=4, depth=2)
    assert conv.in_channels == 1
    with pytest.raises(ValueError, match="in_channels=1"):
        check_model_fits(conv, (3, 8, 8), 10)


def test_certificate_weights_refuses_cells_without_a_certificate_and_diverged_ones(tmp_path):
    import dataclasses

    from cell_records import make_record
    from resdyn.api import certificate_weights
    from resdyn.training.certify import CertificateConfig

    plain = make_record()
    with Store(tmp_path / "s.sqlite") as st:
        with pytest.raises(StoreError, match="is not a certificate cell"):
            certificate_weights(st, plain)
        cell = dataclasses.replace(plain.cell, certificate=CertificateConfig())
        diverged = dataclasses.replace(plain, cell=cell, status="diverged")
        with pytest.raises(StoreError, match="diverged; it has no certificate"):
            certificate_weights(st, diverged)

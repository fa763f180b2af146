"""The report of any store: a section per spec with tables and figures, strict JSON, no None/NaN."""

import math
import re
import statistics

import pytest
from click.testing import CliRunner

from report_stores import build
from resdyn.cli.main import main
from resdyn.experiments.base import ExperimentOutcome
from resdyn.plotting import Palette, axis_label, line_figure, seed_interval
from resdyn.reports.build import outcomes_from_store
from resdyn.reports.render import order_columns, write_report
from resdyn.reports.tables import strict_loads
from resdyn.sweeps.store import Store


def strict(text):
    return strict_loads(text)


def test_strict_loads_rejects_nan_and_infinity():
    for bad in ("NaN", "[Infinity]", '{"a": -Infinity}'):
        with pytest.raises(ValueError, match="non-standard"):
            strict(bad)


@pytest.fixture(scope="module")
def user_store(tmp_path_factory):
    return build(tmp_path_factory.getbasetemp(), "my-sweep")


@pytest.fixture(scope="module")
def user_report(user_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("user-report")
    res = CliRunner().invoke(main, ["report", str(user_store), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_generic_report_of_a_user_spec_has_tables_figures_and_valid_json(user_store, user_report):
    out, output = user_report
    assert "1 sweeps and 0 reproductions reported" in output
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    data = strict((out / "report-data.json").read_text())
    sec = data["sweep my-sweep"]
    assert sec["data"]["swept"] == ["data", "family", "sample_size"]
    # every metric and the measure, against the swept numeric key, one figure each
    figs = sorted(p.name for p in (out / "figures").glob("my-sweep-*-vs-sample_size.png"))
    assert figs == [f"my-sweep-{q}-vs-sample_size.png" for q in
                    sorted(("error_gap", "loss_gap", "test_acc", "test_error_bound", "train_acc"))]
    for png in figs:  # PDF and SVG beside every PNG
        assert (out / "figures" / png.replace(".png", ".pdf")).stat().st_size > 1000
        assert (out / "figures" / png.replace(".png", ".svg")).stat().st_size > 1000
    for text in (re.sub(r"base64,[^']*", "", html), md):
        assert not re.search(r"\bNone\b|\bnan\b|\bNaN\b", text)
    # the summary: one row per (data, family, S), centres equal to the mean of the seeds' rows
    summary = sec["tables"]["my-sweep: mean [95% seed interval] per setting"]
    assert len(summary) == 2 * 2 * 3
    assert list(summary[0])[:4] == ["data", "family", "sample_size", "seeds"]
    with Store(user_store, create=False) as st:
        rows = st.rows()
    for srow, nums in zip(summary, sec["data"]["summary"], strict=True):
        mine = [r for r in rows if r["config"]["data"]["name"] == srow["data"]
                and r["config"]["model"]["family"] == srow["family"]
                and r["config"]["sample_size"] == srow["sample_size"]]
        assert len(mine) == srow["seeds"] == 2
        want = statistics.mean(r["metrics"]["test_acc"] for r in mine)
        assert nums["test_acc"]["centre"] == pytest.approx(want, rel=1e-12)
        lo, hi = nums["test_acc"]["lo"], nums["test_acc"]["hi"]
        assert 0 <= lo <= want <= hi <= 1
        assert srow["test_acc"].startswith(f"{want:.4g}")


def test_results_json_is_strict_and_has_weights_and_identifiers_first(user_store):
    res = CliRunner().invoke(main, ["results", str(user_store), "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = strict(res.output)
    assert list(rows[0])[:7] == ["cell_id", "spec", "status", "data", "family", "sample_size", "seed"]
    assert all(r["weights"].endswith(f"{r['cell_id']}.safetensors") for r in rows)
    # tanh networks have no path-norm bound: null, not NaN
    assert any(r.get("test_error_bound.path_norm") is None for r in rows)
    assert {r["test_error_bound.family"] for r in rows} <= {"path_norm", "spectral", "marion", None}
    sub = CliRunner().invoke(main, ["results", str(user_store), "--format", "json", "--where",
                                    "data=digits", "--where", "sample_size>=32", "--columns",
                                    "cell_id,sample_size,test_acc"])
    picked = strict(sub.output)
    assert len(picked) == 2 * 2 * 2  # 2 families x S in {32, 64} x 2 seeds
    assert all(list(r) == ["cell_id", "sample_size", "test_acc"] and r["sample_size"] >= 32
               for r in picked)
    bad = CliRunner().invoke(main, ["results", str(user_store), "--where", "nope=1"])
    assert bad.exit_code == 1 and "no column 'nope'" in bad.output


def test_image_data_sets_get_the_same_report(tmp_path, tmp_path_factory):
    store = build(tmp_path_factory.getbasetemp(), "my-images")
    outcomes = outcomes_from_store(store, tmp_path / "figs")
    (o,) = outcomes
    assert o.data["swept"] == ["sample_size"]
    assert "test accuracy (fraction of test set) against training samples S (count)" in o.figures
    html, _ = write_report(outcomes, tmp_path / "out")
    assert html.read_text().count("<img") == len(o.figures) >= 4


def test_markdown_escapes_pipes_and_tables_put_identifiers_first(tmp_path):
    o = ExperimentOutcome("t", tables={"x": [{"zeta": 1.0, "a|b": "p|q", "seed": 0, "data": "d",
                                               "missing": float("nan")}]})
    _, md = write_report([o], tmp_path)
    text = md.read_text()
    assert "| data | seed | zeta | a\\|b | missing |" in text
    assert "| d | 0 | 1 | p\\|q | not applicable |" in text
    assert "was not measured" in text  # the note that explains the empty cell
    assert order_columns([{"b": 1, "cell_id": 2, "a": 3}]) == ["cell_id", "b", "a"]
    strict((tmp_path / "report-data.json").read_text())


def test_seed_intervals_respect_the_range():
    c, lo, hi = seed_interval([0.99, 1.0, 1.0], fraction=True)
    assert 0.98 < lo <= c <= hi <= 1.0
    c, lo, hi = seed_interval([1e-3, 2e-3, 4e-3], positive=True)
    assert lo > 0 and c == pytest.approx(2e-3)
    c, lo, hi = seed_interval([1.0, 2.0, 3.0])
    # unbounded: the 95% t interval of the mean, 2 +- t_{0.975, 2} * 1 / sqrt(3)
    assert c == 2.0 and hi - c == pytest.approx(4.302652729911275 / math.sqrt(3)) == c - lo
    assert all(math.isnan(v) for v in seed_interval([float("nan")]))


def test_figures_words_palette_and_formats(tmp_path):
    assert axis_label("test_acc") == "test accuracy (fraction of test set)"
    assert axis_label("test_error_bound.margin_loss") == "test error bound: margin loss"
    p = Palette()
    assert p.style("a") == p.style("a") != p.style("b")
    path = line_figure(tmp_path / "f.png", [{"label": "a", "x": [1, 2, 4], "y": [0.5, 0.3, 0.2],
                                             "lo": [0.3, 0.1, -0.1], "hi": [0.7, 0.5, 0.3]}],
                       "training samples S", "test accuracy", "t", True, True)
    assert path.with_suffix(".pdf").is_file() and path.with_suffix(".svg").is_file()
    svg = path.with_suffix(".svg").read_text()
    assert "reference slope -0.5" in svg and "reference slope -1" in svg
    bound = line_figure(tmp_path / "b.png", [{"label": "a", "x": [1, 2], "y": [3.0, 2.0]}],
                        "training samples S", "test-error bound", "t")
    assert "bound vacuous above" in bound.with_suffix(".svg").read_text()


def test_cells_that_differ_only_in_a_setting_without_a_column_are_not_pooled():
    """A later recipe (here a cosine schedule, a field added after stores existed and left out of
    a cell's config at its default) beside the first: two groups of two seeds, not one of four."""
    from cell_records import make_record
    from resdyn.reports.generic import sweep_outcome
    from resdyn.reports.tables import varying_settings

    def rec(seed, schedule, acc):
        train = {"lr_schedule": schedule, "warmup_steps": 2} if schedule == "cosine" else {}
        return make_record(seed=seed, train=train, metrics={"test_acc": acc})

    rows = [rec(0, "constant", 0.5), rec(1, "constant", 0.7), rec(0, "cosine", 0.9), rec(1, "cosine", 0.95)]
    assert "train.lr_schedule" not in rows[0].settings  # left out at its default ...
    assert rows[0].full_settings["train.lr_schedule"] == "constant"  # ... and read back as it
    assert varying_settings([rows]) == ["train.lr_schedule", "train.warmup_steps"]
    out = sweep_outcome("test", rows, None, Palette())
    summary = out.data["summary"]
    assert [(g["train.lr_schedule"], g["seeds"]) for g in summary] == [("constant", 2), ("cosine", 2)]
    assert [g["test_acc"]["centre"] for g in summary] == pytest.approx([0.6, 0.925])
    assert varying_settings([rows[:2], rows[2:]]) == []  # the recipes apart already: no extra column


def test_a_setting_that_only_follows_the_seed_does_not_split_a_group():
    """Warm-started cells read the cells of their own seed (``warm_start.from`` differs by seed):
    three seeds of one setting stay one group of three."""
    from cell_records import make_record
    from resdyn.reports.generic import sweep_outcome
    from resdyn.reports.tables import varying_settings

    rows = [make_record(seed=s, warm_from=(f"cell-of-seed-{s}",), metrics={"test_acc": 0.5 + s / 10})
            for s in range(3)]
    assert varying_settings([rows]) == []
    summary = sweep_outcome("test", rows, None, Palette()).data["summary"]
    assert [g["seeds"] for g in summary] == [3]
    assert summary[0]["test_acc"]["centre"] == pytest.approx(0.6)

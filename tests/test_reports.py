"""The report: self-contained HTML checked in headless Chromium, Markdown, claims."""

import re

import pytest

from report_stores import chrome
from resdyn.experiments.base import Claim, ExperimentOutcome
from resdyn.plotting import line_figure
from resdyn.reports.render import write_report


@pytest.fixture()
def outcomes(tmp_path):
    fig = line_figure(tmp_path / "f.png", [{"label": "a", "x": [1, 2, 4], "y": [0.3, 0.2, 0.14],
                                            "lo": [0.25, 0.15, 0.1], "hi": [0.35, 0.25, 0.18]}],
                      "S", "gap", "test figure", logx=True, logy=True)
    fig2 = line_figure(tmp_path / "g.png", [{"label": "b", "x": [1, 2], "y": [1, 2]}], "x", "y", "t")
    o = ExperimentOutcome(
        "demo",
        tables={"numbers": [{"S": 32, "gap": 0.25}, {"S": 64, "gap": 0.18}]},
        claims=[Claim("gap decays like S^-1/2", "slope -0.48 [-0.61, -0.35]", True, "-0.5 in CI"),
                Claim("something else", "0.3", False, "must be < 0.1")],
        figures={"gap": fig, "other": fig2},
    )
    return [o]


def test_report_is_self_contained_and_lists_claims(tmp_path, outcomes):
    html_path, md_path = write_report(outcomes, tmp_path / "out")
    text = html_path.read_text()
    # Nothing is fetched from anywhere: no URLs, no src/href that is not a data URI or anchor.
    assert not re.search(r"https?://", text)
    for ref in re.findall(r"(?:src|href)=['\"]([^'\"]+)", text):
        assert ref.startswith("data:image/png;base64,") or ref.startswith("#")
    assert text.count("<img") == 2
    md = md_path.read_text()
    assert "| demo | gap decays like S^-1/2 | slope -0.48 [-0.61, -0.35] | -0.5 in CI | yes |" in md
    assert "| no |" in md


def test_report_renders_in_headless_chromium_with_every_figure_loaded(tmp_path, outcomes):
    html_path, _ = write_report(outcomes, tmp_path / "out")
    # The report must not need the figure files beside it.
    for png in (tmp_path / "out").glob("*.png"):
        png.unlink()
    browser = chrome()
    try:
        browser.get(html_path.resolve().as_uri())
        imgs = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(imgs) == 2
        assert all(done and w > 100 and h > 100 for done, w, h in imgs), imgs
        rows = browser.execute_script(
            "return Array.from(document.querySelectorAll('#claims-table tr')).map(r => r.innerText)")
        assert len(rows) == 3  # header + two claims
        assert "gap decays like S^-1/2" in rows[1] and rows[1].rstrip().endswith("yes")
        assert rows[2].rstrip().endswith("no")
        visible = browser.execute_script("return document.body.innerText")
        assert "Claims" in visible and "numbers" in visible
    finally:
        browser.quit()


def test_the_headline_counts_only_held_claims(tmp_path):
    claims = [Claim("a", "m", "held", "t"), Claim("b", "m", "not held", "t"),
              Claim("c", "m", "inconclusive", "t")]
    html_path, _ = write_report([ExperimentOutcome("demo", claims=claims)], tmp_path / "out")
    assert "<p>1 sections; 1 of 3 claims held.</p>" in html_path.read_text()

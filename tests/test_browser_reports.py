"""Reports of a user's spec and of each shipped reproduction's quick store, in headless Chromium:
every image loads, nothing is wider than a 1400 px page, no cell reads None or NaN, every claim
row is there."""

import json

import pytest
from click.testing import CliRunner

from report_stores import CUSTOM, SHIPPED, build, chrome
from resdyn.cli.main import main

STORES = ["my-sweep", "my-images", *SHIPPED, *CUSTOM]


@pytest.fixture(scope="module")
def browser():
    b = chrome(1400, 1000)
    yield b
    b.quit()


@pytest.mark.slow
@pytest.mark.parametrize("name", STORES)
def test_report_in_a_1400px_browser(name, tmp_path, tmp_path_factory, browser):
    store = build(tmp_path_factory.getbasetemp(), name)
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["report", str(store), "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "report-data.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"report-data.json has {c}"))
    claims = [(name, c["text"]) for name, sec in data.items() for c in sec["claims"]]
    if name in ("sample-size-quick", "depth-quick", "dead-zone-quick", "mean-field-quick",
                "certificates-quick", "dnl-convergence-quick"):
        assert claims, "a shipped reproduction's report states its claims"
    browser.get((out / "report.html").resolve().as_uri())
    browser.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
    imgs = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
    pngs = list((out / "figures").glob("*.png"))
    # certificates' test store has one data set: a depth figure and the panel against S
    assert len(imgs) == len(pngs) >= (2 if name in CUSTOM else 4)
    assert all(done and w >= 600 for _, done, w in imgs), [i for i in imgs if not i[1] or i[2] < 600]
    width = browser.execute_script(
        "const d = document.documentElement; return [d.scrollWidth, d.clientWidth, window.innerWidth]")
    assert width[2] == 1400 and width[0] <= width[1], width
    cells = browser.execute_script(
        "return Array.from(document.querySelectorAll('td')).map(td => td.textContent.trim())")
    assert cells
    bad = [c for c in cells if c in ("None", "NaN", "nan", "inf", "-inf")
           or any(w in ("None", "NaN", "nan") for w in c.replace(",", " ").replace("[", " ")
                  .replace("]", " ").split())]
    assert not bad, bad[:10]
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#claims-table tr')).slice(1)"
        ".map(r => Array.from(r.cells).map(c => c.textContent))")
    assert [(r[0], r[1]) for r in rows] == claims
    assert all(r[4] in ("yes", "no", "inconclusive") for r in rows), [r[4] for r in rows]

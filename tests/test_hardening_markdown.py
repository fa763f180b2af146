"""report.md escapes every string from a spec, a store or a data file: rendered to HTML by a
CommonMark renderer with raw HTML enabled, no tag, handler or script link survives."""

import base64
import html as html_mod
import json
import shutil
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from markdown_it import MarkdownIt

from resdyn.cli.main import main
from resdyn.experiments.base import Claim, ExperimentOutcome
from resdyn.reports.render import md_text, write_report
from resdyn.sweeps import Store, expand, parse_spec
from resdyn.sweeps.runner import train_group

PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "<svg/onload=alert(2)>",
    "<a href='javascript:alert(3)'>x</a>",
    "[click](javascript:alert(4))",
    "![i](javascript:alert(5))",
    "<javascript:alert(6)>",
    "`code` *em* __strong__ | cell | break",
    "line\n<b onmouseover=alert(7)>two</b>\n# heading",
    "&lt;img src=x onerror=alert(8)&gt;",
    "<!-- comment --><iframe src=x>",
    "\\<img src=x onerror=alert(9)>",
]
# What CommonMark makes of the report's own syntax; anything else is injected.
ALLOWED_TAGS = {"h1", "h2", "h3", "p", "table", "thead", "tbody", "tr", "th", "td", "img", "em"}


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, list]] = []
        self.comments: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_comment(self, data):
        self.comments.append(data)


def _check_rendered(md: str) -> str:
    html = MarkdownIt("commonmark").enable("table").render(md)
    parser = _Tags()
    parser.feed(html)
    assert not parser.comments, parser.comments
    for tag, attrs in parser.tags:
        assert tag in ALLOWED_TAGS, (tag, attrs)
        for name, value in attrs:
            assert not name.startswith("on"), (tag, attrs)
            if name in ("src", "href"):
                assert "javascript" not in (value or "").lower(), (tag, attrs)
            if tag == "img":
                assert name in ("src", "alt") and (name == "alt" or value.startswith("figures/"))
            else:
                assert name == "style" and value.startswith("text-align"), (tag, attrs)
    return html


@pytest.mark.parametrize("payload", PAYLOADS)
def test_md_text_renders_as_the_literal_text(payload):
    html = MarkdownIt("commonmark").render(f"x {md_text(payload)}")
    parser = _Tags()
    parser.feed(html)
    assert [t for t, _ in parser.tags] == ["p"]
    plain = html_mod.unescape(html.removeprefix("<p>x ").removesuffix("</p>\n"))
    assert plain == payload.replace("\n", " ")


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()


def test_every_string_of_a_hostile_outcome_is_escaped(tmp_path):
    fig = tmp_path / "f.png"
    fig.write_bytes(base64.b64decode(PNG))
    outcomes = []
    for i, p in enumerate(PAYLOADS):
        rows = [{p: p, "spec": p, "value": 1.5, f"{p}2": [p, 1.0]}]
        outcomes.append(ExperimentOutcome(
            f"{p}{i}", {p: rows, f"{p} every cell": rows},
            [Claim(p, p, "held", p)], {p: fig},
            {"kind": "sweep", "swept": [p], "seeds": [p]}))
    html_path, md_path = write_report(outcomes, tmp_path / "out", title=PAYLOADS[0])
    html = _check_rendered(md_path.read_text())
    assert "onerror=alert(1)" in html  # the payload is there, as text
    # report.html too: in table cells, headings, claims and the title, escaped, never raw
    page = html_path.read_text()
    for p in PAYLOADS:
        if "<" in p:
            assert p not in page, p
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3


def test_a_hostile_store_report_md_renders_without_a_tag_or_handler(tmp_path):
    spec = parse_spec({"name": "m", "data": {"name": "two_spirals"},
                       "model": {"family": "resnet", "width": 4, "depth": 2},
                       "train": {"steps": 5, "lr": 1e-2}, "sweep": {"sample_size": [16]}})
    (result,) = train_group(expand(spec))
    store = tmp_path / "s.sqlite"
    with Store(store) as st:
        st.write(spec.name, result)
        st.save_outcome(PAYLOADS[2], {
            "name": PAYLOADS[2], "tables": {PAYLOADS[3]: [{PAYLOADS[4]: PAYLOADS[5]}]},
            "claims": [{"text": PAYLOADS[6], "measured": PAYLOADS[7], "verdict": "held",
                        "test": PAYLOADS[8]}],
            "data": {}, "figures": {PAYLOADS[9]: PNG}})
    with sqlite3.connect(store) as db:
        metrics = json.loads(db.execute("SELECT metrics FROM cells").fetchone()[0])
        metrics[PAYLOADS[0]] = 0.5
        metrics[PAYLOADS[10]] = 0.25
        db.execute("UPDATE cells SET spec = ?, metrics = ?", (PAYLOADS[1], json.dumps(metrics)))
    db.close()
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["report", str(store), "--out", str(out), "--title", PAYLOADS[11]])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    html = _check_rendered(md)
    assert "alert(1)" in html and "alert(2)" in html
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    files = Path(str(store) + ".d")
    assert all(out in p.parents or files in p.parents or p.name.startswith("s.sqlite")
               for p in written), written
    shutil.rmtree(out)
    assert Path(store).is_file()

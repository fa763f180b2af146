"""The report: one self-contained HTML file (figures embedded) and a Markdown summary.

The HTML loads nothing from outside: figures are PNG data URIs and the style is inline, so it
opens with no network and no other files. Each figure's PNG, PDF and SVG are also written under
``figures/`` beside the report, for a paper. Tables put identifier columns first; a missing value
reads "not applicable" and an overflowed one "infinite", explained in a note under the table;
``report-data.json`` is strict JSON (null and "infinite", never NaN).
"""

from __future__ import annotations

import base64
import html
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._paths import inside, safe_file_name
from ..experiments.base import ExperimentOutcome
from .tables import MISSING_NOTE, strict_dumps

__all__ = ["claims_rows", "md_text", "order_columns", "write_report"]

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:1280px;padding:0 1rem;color:#222;
line-height:1.4}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.2rem}
h3{font-size:1rem;margin-top:1.4rem}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.4rem 0;font-size:.8rem}
td,th{border:1px solid #ccc;padding:.2rem .45rem;text-align:left;vertical-align:top;white-space:nowrap}
td.text{white-space:normal;min-width:16rem;max-width:34rem}
th{background:#f3f3f3;position:sticky;top:0}.held{color:#116611;font-weight:bold}
.failed{color:#aa1111;font-weight:bold}.open{color:#8a6d00;font-weight:bold}.note{font-size:.8rem;color:#555;max-width:60rem}
figure{display:inline-block;margin:.5rem;max-width:100%;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.8rem;color:#555;max-width:40rem}
nav ul{columns:2;font-size:.9rem}
"""

# Identifier-like columns come first, in this order; the rest keep their first-appearance order.
_FIRST = ("experiment", "spec", "cell_id", "status", "data", "dataset", "family", "model",
          "variant", "activation", "method", "operator", "form", "sample_size", "S", "n", "N",
          "depth", "L", "knots", "width", "channels", "tau", "lr", "steps", "seed", "seeds",
          "n_seeds", "diverged")


def order_columns(rows: Sequence[dict]) -> list[str]:
    """Identifier columns first (see ``_FIRST``), then the others in first-appearance order."""
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    first = [c for c in _FIRST if c in cols]
    return first + [c for c in cols if c not in first]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def _fmt(v: Any) -> str:
    # "not applicable" (None or NaN: the quantity does not exist for the row) and "infinite" (it
    # overflowed) are distinct words, as in report-data.json (null and "infinite").
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "not applicable"
    if isinstance(v, float) and math.isinf(v):
        return "infinite" if v > 0 else "-infinite"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) if isinstance(x, float) else str(x) for x in v) + "]"
    return str(v)


def _has_missing(rows: Sequence[dict], cols: Sequence[str]) -> bool:
    return any(_missing(r.get(c)) for r in rows for c in cols)


def _html_table(rows: list[dict], table_id: str | None = None) -> str:
    cols = order_columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols)
                   + "</tr>" for r in rows)
    ident = f" id='{html.escape(table_id)}'" if table_id else ""
    note = f"<p class='note'>{html.escape(MISSING_NOTE)}</p>" if _has_missing(rows, cols) else ""
    return f"<div class='scroll'><table{ident}><tr>{head}</tr>{body}</table></div>{note}"


#: ASCII punctuation that Markdown may read as syntax inside a line (text here never starts a
#: line: it follows a heading's '#', a table's '|' or a fixed word); each is backslash-escaped.
_MD_PUNCT = frozenset("\\`*_{}()#+!|~")


def md_text(text: Any) -> str:
    """``text`` as literal Markdown inline text: ``&``, ``<`` and ``>`` as HTML entities (so no
    tag, comment or handler can form), every other Markdown punctuation character
    backslash-escaped (no emphasis, link, image, code span or table cell boundary), control
    characters and line breaks as spaces (no new block, heading or list)."""
    out = []
    for ch in str(text):
        if ch == "&":
            out.append("&amp;")
        elif ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        elif ch in _MD_PUNCT:
            out.append("\\" + ch)
        elif not ch.isprintable():
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def _md_cell(v: Any) -> str:
    return md_text(_fmt(v))


def _md_table(rows: list[dict]) -> str:
    cols = order_columns(rows)
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_md_cell(r.get(c)) for c in cols) + " |" for r in rows]
    if _has_missing(rows, cols):
        lines += ["", f"_{MISSING_NOTE}_"]
    return "\n".join(lines)


# A claim's three-valued verdict (experiments.base.VERDICTS) as the claims table shows it.
_VERDICT_WORD = {"held": "yes", "not held": "no", "inconclusive": "inconclusive"}
_VERDICT_CLASS = {"yes": "held", "no": "failed", "inconclusive": "open"}


def claims_rows(outcomes: Sequence[ExperimentOutcome]) -> list[dict]:
    return [{"experiment": o.name, "claim": c.text, "measured": c.measured, "test": c.test,
             "held": _VERDICT_WORD[c.verdict]} for o in outcomes for c in o.claims]


def _anchor(name: str) -> str:
    return "s-" + "".join(ch if ch.isalnum() else "-" for ch in name)


def _copy_figure(path: Path, out: Path) -> list[str]:
    """Copy a figure's PNG (and its PDF/SVG, where written) to ``out/figures``; their names."""
    dest = out / "figures"
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for src in (path, path.with_suffix(".pdf"), path.with_suffix(".svg")):
        if src.is_file():
            target = inside(dest, safe_file_name(src.name))  # a stored name never leaves out/
            if src.resolve() != target.resolve():
                shutil.copyfile(src, target)
            names.append(f"figures/{target.name}")
    return names


def write_report(outcomes: Sequence[ExperimentOutcome], out_dir: str | Path,
                 title: str = "resdyn report") -> tuple[Path, Path]:
    """Write ``report.html``, ``report.md``, ``report-data.json`` and ``figures/`` into
    ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    claims = claims_rows(outcomes)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
             f"<h1>{html.escape(title)}</h1>"]
    md = [f"# {md_text(title)}", ""]
    held = sum(c["held"] == "yes" for c in claims)
    parts.append(f"<p>{len(outcomes)} sections; {held} of {len(claims)} claims held.</p><nav><ul>"
                 + "".join(f"<li><a href='#{_anchor(o.name)}'>{html.escape(o.name)}</a></li>"
                           for o in outcomes) + "</ul></nav>")
    parts.append("<h2 id='claims'>Claims</h2>")
    md += ["## Claims", ""]
    if claims:
        rows = "".join(
            f"<tr><td>{html.escape(c['experiment'])}</td><td class='text'>{html.escape(c['claim'])}"
            f"</td><td class='text'>{html.escape(c['measured'])}</td><td class='text'>"
            f"{html.escape(c['test'])}</td>"
            f"<td class='{_VERDICT_CLASS[c['held']]}'>{c['held']}</td></tr>"
            for c in claims)
        parts.append("<div class='scroll'><table id='claims-table'><tr><th>experiment</th>"
                     f"<th>claim</th><th>measured</th><th>test</th><th>held</th></tr>{rows}"
                     "</table></div>")
        md.append(_md_table(claims))
    else:
        text = ("No claims: the store holds no shipped reproduction; the sections below show every "
                "sweep in it.")
        parts.append(f"<p>{text}</p>")
        md.append(md_text(text))
    for o in outcomes:
        parts.append(f"<h2 id='{_anchor(o.name)}'>{html.escape(o.name)}</h2>")
        md += ["", f"## {md_text(o.name)}", ""]
        if o.data.get("kind") == "sweep":
            swept = o.data.get("swept") or []
            desc = (f"Swept: {', '.join(swept) if swept else 'nothing'}; seeds "
                    f"{', '.join(map(str, o.data.get('seeds', [])))}. Each figure: mean over seeds "
                    "with its interval, seeds as faint points, one colour per variant throughout.")
            parts.append(f"<p class='note'>{html.escape(desc)}</p>")
            md += [md_text(desc), ""]
        for name, rows in o.tables.items():
            if not rows:
                continue
            table = _html_table(rows)
            if len(rows) > 40 or name.endswith("every cell"):
                parts.append(f"<details><summary>{html.escape(name)} ({len(rows)} rows)</summary>"
                             f"{table}</details>")
            else:
                parts.append(f"<h3>{html.escape(name)}</h3>{table}")
            md += [f"### {md_text(name)}", "", _md_table(rows), ""]
        for name, path in o.figures.items():
            path = Path(path)
            data = base64.b64encode(path.read_bytes()).decode()
            files = _copy_figure(path, out)
            also = [f for f in files if not f.endswith(".png")]
            caption = html.escape(name) + (f" <br>(for print: {', '.join(map(html.escape, also))})"
                                           if also else "")
            parts.append(f"<figure><img alt='{html.escape(name)}' "
                         f"src='data:image/png;base64,{data}'><figcaption>{caption}</figcaption>"
                         "</figure>")
            md += [f"![{_md_cell(name)}]({files[0]})", ""]
    parts.append("</body></html>")
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text("".join(parts))
    md_path.write_text("\n".join(md) + "\n")
    (out / "report-data.json").write_text(strict_dumps(
        {o.name: {"claims": [c.__dict__ for c in o.claims], "tables": o.tables, "data": o.data}
         for o in outcomes}, indent=1, default=str))
    return html_path, md_path

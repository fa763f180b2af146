"""The report: one self-contained HTML file (figures embedded) and a Markdown summary.

The HTML loads nothing from outside: figures are PNG data URIs and the style is inline, so it
opens with no network and no other files.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._paths import inside, safe_file_name
from ..experiments.base import ExperimentOutcome

__all__ = ["write_report"]

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}.held{color:#116611;font-weight:bold}.failed{color:#aa1111;font-weight:bold}
.open{color:#8a6d00;font-weight:bold}
figure{display:inline-block;margin:.5rem}figcaption{font-size:.8rem;color:#555}
"""


def _fmt(v: Any) -> str:
    # "not applicable" (None or NaN: the quantity does not exist) and "infinite" are distinct words
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "not applicable"
    if isinstance(v, float) and math.isinf(v):
        return "infinite" if v > 0 else "-infinite"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and v and all(isinstance(x, float) for x in v):
        return "[" + ", ".join(f"{x:.3g}" for x in v) + "]"
    return str(v)


def json_safe(v: Any) -> Any:
    """JSON without NaN: NaN -> null (not applicable), +-inf -> "infinite" / "-infinite"."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("infinite" if v > 0 else "-infinite")
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    return v


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    return cols


def _html_table(rows: list[dict]) -> str:
    cols = _columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols)
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _md_table(rows: list[dict]) -> str:
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# A claim's three-valued verdict (experiments.base.VERDICTS) as the claims table shows it.
_VERDICT_WORD = {"held": "yes", "not held": "no", "inconclusive": "inconclusive"}
_VERDICT_CLASS = {"yes": "held", "no": "failed", "inconclusive": "open"}


def claims_rows(outcomes: Sequence[ExperimentOutcome]) -> list[dict]:
    return [{"experiment": o.name, "claim": c.text, "measured": c.measured, "test": c.test,
             "held": _VERDICT_WORD[c.verdict]} for o in outcomes for c in o.claims]


def write_report(outcomes: Sequence[ExperimentOutcome], out_dir: str | Path,
                 title: str = "resdyn report") -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (and the figures' PNGs) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    claims = claims_rows(outcomes)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    md = [f"# {title}", ""]
    parts.append("<h2 id='claims'>Claims</h2>")
    md += ["## Claims", ""]
    if claims:
        rows = "".join(
            f"<tr><td>{html.escape(c['experiment'])}</td><td>{html.escape(c['claim'])}</td>"
            f"<td>{html.escape(c['measured'])}</td><td>{html.escape(c['test'])}</td>"
            f"<td class='{_VERDICT_CLASS[c['held']]}'>{c['held']}</td></tr>"
            for c in claims)
        parts.append("<table id='claims-table'><tr><th>experiment</th><th>claim</th>"
                     f"<th>measured</th><th>test</th><th>held</th></tr>{rows}</table>")
        md.append(_md_table(claims))
    else:
        parts.append("<p>No claims: the store has no finished reproduction.</p>")
        md.append("No claims: the store has no finished reproduction.")
    for o in outcomes:
        parts.append(f"<h2>{html.escape(o.name)}</h2>")
        md += ["", f"## {o.name}", ""]
        for name, rows in o.tables.items():
            if rows:
                parts.append(f"<h3>{html.escape(name)}</h3>{_html_table(rows)}")
                md += [f"### {name}", "", _md_table(rows), ""]
        for name, path in o.figures.items():
            data = base64.b64encode(Path(path).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(name)}</figcaption></figure>")
            target = inside(out, safe_file_name(Path(path).name))
            if Path(path).resolve() != target.resolve():
                target.write_bytes(Path(path).read_bytes())
            md.append(f"![{name}]({target.name})")
    parts.append("</body></html>")
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text("".join(parts))
    md_path.write_text("\n".join(md) + "\n")
    (out / "report-data.json").write_text(json.dumps(json_safe(
        {o.name: {"claims": [c.__dict__ for c in o.claims], "tables": o.tables, "data": o.data}
         for o in outcomes}), indent=1, sort_keys=True, default=str, allow_nan=False))
    return html_path, md_path

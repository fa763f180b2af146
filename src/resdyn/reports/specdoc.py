"""The generated parts of docs/specs.md: data sets, model families and their fields, training
fields, measures and trackers, read from the registries (a test keeps the file in sync).

    python -m resdyn.reports.specdoc docs/specs.md          # rewrite the generated blocks
    python -m resdyn.reports.specdoc --check docs/specs.md  # exit 1 when they are stale
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

__all__ = ["BLOCKS", "generated_blocks", "update"]

BLOCKS = ("datasets", "families", "train", "measures", "trackers")
_BLOCK = re.compile(r"(<!-- BEGIN GENERATED (\w+) -->\n)(.*?)(<!-- END GENERATED \2 -->)", re.S)


def _cell(v: object) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _first_line(doc: str | None) -> str:
    """The docstring's first sentence (its first paragraph up to the first full stop)."""
    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    end = re.search(r"\.(\s|$)", para)
    return para[: end.start() + 1] if end else para


def _datasets() -> str:
    from ..data.registry import INFO

    rows = ["| name | kind | input shape | classes | options (default) |", "|---|---|---|---|---|"]
    for name, info in INFO.items():
        opts = ", ".join(f"`{k}` ({v!r})" for k, v in info.options.items()) or "none"
        rows.append(f"| `{name}` | {info.kind} | {_cell(info.input_shape)} | {_cell(info.classes)} "
                    f"| {_cell(opts)} |")
    return "\n".join(rows)


def _families() -> str:
    from ..models.registry import FAMILIES, family_class

    out = []
    for family in FAMILIES:
        try:
            cls = family_class(family)
        except ValueError:
            continue
        out.append(f"#### `family = \"{family}\"` ({cls.__name__})\n")
        doc = _first_line(cls.__doc__)
        if doc:
            out.append(f"{_cell(doc)}\n")
        out.append("| field | default |\n|---|---|")
        for f in dataclasses.fields(cls):
            if f.name == "family" or not f.init:
                continue
            default = (f.default if f.default is not dataclasses.MISSING else
                       f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else "(required)")
            out.append(f"| `{f.name}` | `{default!r}` |")
        out.append("")
    return "\n".join(out).rstrip()


def _train() -> str:
    from ..training.engine import TrainConfig

    rows = ["| key | default |", "|---|---|", "| `lr` | `0.01` (the learning rate; sweepable) |"]
    for f in dataclasses.fields(TrainConfig):
        rows.append(f"| `{f.name}` | `{f.default!r}` |")
    return "\n".join(rows)


def _registry(kind: str) -> str:
    from ..sweeps import measures as m

    names = m.measure_names() if kind == "measures" else m.tracker_names()
    get = m.get_measure if kind == "measures" else m.get_tracker
    rows = [f"| {kind[:-1]} | provided by | what it records |", "|---|---|---|"]
    for name in names:
        fn = get(name)
        doc = _first_line(fn.__doc__) or f"see the docstring of `{fn.__module__}`"
        rows.append(f"| `{name}` | `{fn.__module__}` | {_cell(doc)} |")
    return "\n".join(rows)


def generated_blocks() -> dict[str, str]:
    """Block name -> its Markdown, from the registries as installed."""
    return {"datasets": _datasets(), "families": _families(), "train": _train(),
            "measures": _registry("measures"), "trackers": _registry("trackers")}


def update(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""
    blocks = generated_blocks()
    found = {m.group(2) for m in _BLOCK.finditer(text)}
    missing = [b for b in BLOCKS if b not in found]
    if missing:
        raise ValueError(f"docs/specs.md lacks the generated block(s) {', '.join(missing)}: add "
                         "'<!-- BEGIN GENERATED NAME -->' ... '<!-- END GENERATED NAME -->'")
    return _BLOCK.sub(lambda m: f"{m.group(1)}{blocks[m.group(2)]}\n{m.group(4)}", text)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"] or ["docs/specs.md"]
    path = Path(paths[0])
    text = path.read_text()
    new = update(text)
    if check:
        if new != text:
            print(f"{path} is stale: run python -m resdyn.reports.specdoc {path}")
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""From a store to experiment outcomes: the analyses read the store, never a live run."""

from __future__ import annotations

import base64
import binascii
import dataclasses
from pathlib import Path
from typing import Any

from .._paths import inside, safe_file_name
from ..experiments.base import Claim, ExperimentOutcome
from ..experiments.registry import reproduction_of_spec
from ..sweeps.store import Store, StoreError, check_outcome

__all__ = ["outcome_from_json", "outcome_to_json", "outcomes_from_store"]


def outcome_to_json(o: ExperimentOutcome) -> dict[str, Any]:
    """An outcome as JSON-able data, figures carried as base64 PNG."""
    return {"name": o.name, "tables": o.tables, "data": o.data,
            "claims": [dataclasses.asdict(c) for c in o.claims],
            "figures": {k: base64.b64encode(Path(p).read_bytes()).decode() for k, p in o.figures.items()}}


def outcome_from_json(d: dict[str, Any], fig_dir: Path) -> ExperimentOutcome:
    """A stored outcome (see :func:`resdyn.sweeps.store.check_outcome`) back as an outcome, its
    figures written under ``fig_dir``; ``ValueError`` naming the fault for one that is not."""
    fault = check_outcome(d)
    if fault is not None:
        raise ValueError(f"outcome {str(d.get('name', '?'))[:60]!r} {fault}" if isinstance(d, dict)
                         else f"outcome {fault}")
    try:
        claims = [Claim(**c) for c in d.get("claims", [])]
        pngs = [base64.b64decode(b64, validate=True) for b64 in d.get("figures", {}).values()]
    except (TypeError, ValueError, binascii.Error) as err:
        raise ValueError(f"outcome {d['name'][:60]!r}: {str(err)[:200]}") from None
    figures = {}
    for i, (k, png) in enumerate(zip(d.get("figures", {}), pngs, strict=True)):
        path = inside(fig_dir, f"{safe_file_name(d['name'])}-{i}.png")  # a stored name is untrusted
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        figures[k] = path
    return ExperimentOutcome(d["name"], d.get("tables", {}), claims, figures, d.get("data", {}))


def outcomes_from_store(store_path: str | Path, fig_dir: str | Path,
                        generic: bool = True) -> list[ExperimentOutcome]:
    """Every outcome the report of a store shows, in order: the analysis of each shipped
    reproduction the store holds (its claims on top), the stored outcomes of custom reproductions,
    then (``generic``) the generic section of every other spec in the store (see
    :mod:`resdyn.reports.generic`), one palette for all of them."""
    from ..plotting import Palette
    from .generic import sweep_outcome

    fig_dir = Path(fig_dir)
    with Store(store_path, create=False, readonly=True) as st:
        rows = st.records(series=True)  # analyses such as mean-field's read the series too
        stored = st.outcomes()
    by_spec: dict[str, list] = {}
    for r in rows:
        by_spec.setdefault(r.spec, []).append(r)
    groups: dict[str, tuple[Any, list]] = {}
    for spec_name, rs in sorted(by_spec.items()):
        found = reproduction_of_spec(spec_name)
        if found is None:
            continue
        repro, quick = found
        name = f"{repro.name}-quick" if quick else repro.name
        groups.setdefault(name, (repro, []))[1].extend(rs)
    out = []
    for name, (repro, rs) in sorted(groups.items()):
        out.append(repro.load("analyze")(rs, fig_dir, name))
    for _name, d in sorted(stored.items()):
        try:
            out.append(outcome_from_json(d, fig_dir))
        except ValueError as err:
            raise StoreError(f"store {store_path}: {err}; the store is damaged: see `resdyn status "
                             f"--verify {store_path}`") from None
    if generic:
        palette = Palette()
        for spec_name, rs in sorted(by_spec.items()):
            if spec_name in stored:  # a custom reproduction's cells: its stored outcome shows them
                continue
            out.append(sweep_outcome(spec_name, rs, fig_dir, palette))
    return out

"""The package's layout: every import points down the layer order, and one loop updates parameters.

The layer order is declared once, here (docs/sweeps.md, "Layers"). A module may import modules of
its own layer or of a lower one. Strings that name a resdyn module (``"resdyn.x.y"`` or
``"resdyn.x.y:attr"``, as an import by string would use) count as imports.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "resdyn"

# Highest first. Each entry: the layer's top-level names under resdyn (packages or modules).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("reports",),
    ("experiments", "api"),
    ("sweeps", "specs"),
    ("training",),
    ("theory", "analysis", "plotting"),
    ("data", "models"),
    ("_checks", "_seeds", "_paths"),
)
LEVEL = {name: len(LAYERS) - i for i, names in enumerate(LAYERS) for name in names}

_MODULE_STRING = re.compile(r"resdyn(\.[A-Za-z_][A-Za-z0-9_]*)+(:[A-Za-z_][A-Za-z0-9_]*)?")


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def _dotted(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _top(dotted: str) -> str | None:
    """The layer name of module ``resdyn.<top>...`` (None for ``resdyn`` itself)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "resdyn" else None


def _imports(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, absolute module name) of every resdyn module that ``path`` imports or names."""
    tree = ast.parse(path.read_text(), str(path))
    here = _dotted(path, root)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("resdyn")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("resdyn"):
                continue
            # ``from . import x`` imports the submodule x: judge x, not the package.
            if node.module is None:
                for a in node.names:
                    sub = root.parent.joinpath(*f"{mod}.{a.name}".split("."))
                    is_module = sub.is_dir() or sub.with_suffix(".py").is_file()
                    out.append((node.lineno, f"{mod}.{a.name}" if is_module else mod))
            else:
                out.append((node.lineno, mod))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                _MODULE_STRING.fullmatch(node.value):
            out.append((node.lineno, node.value.split(":")[0]))
    return out


def _layer_violations(path: Path, root: Path = SRC) -> list[str]:
    here = _dotted(path, root)
    top = _top(here)
    if top is None:
        return []
    if top not in LEVEL:
        return [f"{here}: module resdyn.{top} is in no layer; add it to LAYERS"]
    bad = []
    for line, mod in _imports(path, root):
        other = _top(mod)
        if other is None:
            continue
        if other not in LEVEL:
            bad.append(f"{here}:{line} imports {mod}, which is in no layer")
        elif LEVEL[other] > LEVEL[top]:
            bad.append(f"{here}:{line} imports {mod} (layer {other!r} is above {top!r})")
    return bad


def test_every_import_points_down():
    bad = [v for p in _modules() for v in _layer_violations(p)]
    assert not bad, "imports that point up:\n" + "\n".join(bad)


# --------------------------------------------------------------------------- one update loop
_OPT_ATTRS = {"step", "zero_grad"}
_INPLACE = {"add_", "sub_", "mul_", "div_", "copy_", "addcmul_", "addcdiv_", "lerp_", "set_"}


def _is_torch_optim(node: ast.AST) -> bool:
    """``torch.optim`` (or ``torch.optim.X``) as an attribute chain."""
    while isinstance(node, ast.Attribute):
        if node.attr == "optim" and isinstance(node.value, ast.Name) and node.value.id == "torch":
            return True
        node = node.value
    return False


def _names_param(node: ast.AST) -> bool:
    """An expression that names parameters: ``params``, ``p.params``, ``params[k]``, ``param``..."""
    while isinstance(node, ast.Subscript | ast.Attribute):
        if isinstance(node, ast.Attribute) and "param" in node.attr:
            return True
        node = node.value
    return isinstance(node, ast.Name) and "param" in node.id


def _update_violations(path: Path, root: Path = SRC) -> list[str]:
    """Parameter updates outside the engine: torch.optim, optimiser steps, in-place updates of
    parameters, ``p.data`` / ``p.grad`` writes."""
    tree = ast.parse(path.read_text(), str(path))
    here = _dotted(path, root)
    bad = []
    optimisers: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("torch.optim"):
            bad.append(f"{here}:{node.lineno} imports {node.module}")
        elif isinstance(node, ast.Import) and any(a.name.startswith("torch.optim") for a in node.names):
            bad.append(f"{here}:{node.lineno} imports torch.optim")
        elif isinstance(node, ast.Attribute) and node.attr == "optim" and \
                isinstance(node.value, ast.Name) and node.value.id == "torch":
            bad.append(f"{here}:{node.lineno} uses torch.optim")
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                _is_torch_optim(node.value.func):
            optimisers |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        attr, owner = node.func.attr, node.func.value
        if attr in _OPT_ATTRS and isinstance(owner, ast.Name) and (owner.id in optimisers
                                                                    or "opt" in owner.id.lower()):
            bad.append(f"{here}:{node.lineno} calls {owner.id}.{attr}() (an optimiser step)")
        elif attr in _INPLACE and _names_param(owner):
            bad.append(f"{here}:{node.lineno} updates parameters in place ({attr})")
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AugAssign) else []
        for t in targets:
            if isinstance(t, ast.Attribute) and t.attr in ("data", "grad") and _names_param(t.value):
                bad.append(f"{here}:{node.lineno} writes {t.attr} of parameters")
            elif isinstance(node, ast.AugAssign) and _names_param(t):
                bad.append(f"{here}:{node.lineno} updates parameters in place (augmented assignment)")
    return bad


def test_only_the_engine_updates_parameters():
    bad = [v for p in _modules() if _top(_dotted(p)) != "training" for v in _update_violations(p)]
    assert not bad, "parameter updates outside resdyn.training:\n" + "\n".join(bad)


# --------------------------------------------------------------------------- the checks can fail
def _check_source(tmp_path: Path, rel: str, source: str, check) -> list[str]:
    """``check`` applied to ``source`` as if it were the package's module ``rel``."""
    root = tmp_path / "src" / "resdyn"
    fake = root / rel
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text(source)
    return check(fake, root)


@pytest.mark.parametrize("source, n_bad", [
    ("from ..sweeps.store import Store\n", 1),                 # theory -> sweeps: up
    ("from resdyn.experiments import meanfield\n", 1),        # absolute, up
    ("X = 'resdyn.sweeps.measures:get_measure'\n", 1),         # an import string, up
    ("from .bounds import bound_terms\nfrom ..models.base import Params\n", 0),  # same, down
    ("from .._seeds import generator_for\n", 0),
])
def test_layer_check_catches_upward_imports(tmp_path, source, n_bad):
    bad = _check_source(tmp_path, "theory/fake_module.py", source, _layer_violations)
    assert len(bad) == n_bad, bad


@pytest.mark.parametrize("source, n_bad", [
    ("import torch\nopt = torch.optim.Adam([w])\nopt.step()\n", 2),
    ("from torch.optim import LBFGS\n", 1),
    ("def f(params, g):\n    params['W'].sub_(0.1 * g)\n", 1),
    ("def f(params, g):\n    params['W'] -= 0.1 * g\n", 1),
    ("def f(param, g):\n    param.data = param.data - g\n", 1),
    ("def f(params, g):\n    return {k: v - g for k, v in params.items()}\n", 0),
])
def test_update_check_catches_optimiser_steps(tmp_path, source, n_bad):
    bad = _check_source(tmp_path, "sweeps/fake_module.py", source, _update_violations)
    assert len(bad) == n_bad, bad

"""The package's layout: every import points down the layer order, no module imports a private name
of another, the import graph has no cycle (imports inside functions included), and one loop
updates parameters.

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
    ("models",),
    ("data",),
    ("_checks", "_seeds", "_paths", "version"),
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


def _imports(path: Path, root: Path = SRC, strings: bool = True) -> list[tuple[int, str]]:
    """(line, absolute module name) of every resdyn module that ``path`` imports or (with
    ``strings``) names in a string."""
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
        elif strings and isinstance(node, ast.Constant) and isinstance(node.value, str) and \
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


# --------------------------------------------------------------------------- private names, cycles
def _imported_names(path: Path, root: Path = SRC) -> list[tuple[int, str, str]]:
    """(line, module, name) of every ``from resdyn.module import name`` in ``path`` where ``name``
    is not itself a module (a module's name is judged as a module, by the layer rule)."""
    tree = ast.parse(path.read_text(), str(path))
    here = _dotted(path, root)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")
            mod = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        if not mod.startswith("resdyn"):
            continue
        for a in node.names:
            sub = root.parent.joinpath(*f"{mod}.{a.name}".split("."))
            if not (sub.is_dir() or sub.with_suffix(".py").is_file()):
                out.append((node.lineno, mod, a.name))
    return out


def _private_violations(path: Path, root: Path = SRC) -> list[str]:
    """Imports of a private name (``_x``, not a dunder) defined in another module. Private
    *modules* (``resdyn._checks``) are the package's shared internals and may be imported."""
    here = _dotted(path, root)
    return [f"{here}:{line} imports private name {name} from {mod}"
            for line, mod, name in _imported_names(path, root)
            if mod != here and name.startswith("_") and not name.startswith("__")]


def test_no_private_name_crosses_modules():
    bad = [v for p in _modules() for v in _private_violations(p)]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def _cycles(root: Path = SRC) -> list[list[str]]:
    """The strongly connected components (more than one module) of the import graph: module ->
    every resdyn module it imports anywhere, inside functions too; ``from pkg import name``
    imports ``pkg`` (its ``__init__``) unless ``name`` is a submodule. A string naming a module
    (``resources.files("resdyn.data")``) is not an import here: it runs when its package is loaded."""
    mods = {_dotted(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = {m: sorted({mod for _, mod in _imports(p, root, strings=False) if mod in mods and mod != m})
             for m, p in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_import_graph_has_no_cycle():
    cycles = _cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


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


@pytest.mark.parametrize("source, n_bad", [
    ("from ..models.registry import _family_class\n", 1),
    ("def f():\n    from .bounds import _helper\n", 1),              # inside a function
    ("from .._checks import check_int\n", 0),                        # a private module, public name
    ("from ..models import registry\n", 0),
    ("from .fake_module import _mine\n", 0),                         # its own name
])
def test_private_check_catches_private_imports(tmp_path, source, n_bad):
    bad = _check_source(tmp_path, "theory/fake_module.py", source, _private_violations)
    assert len(bad) == n_bad, bad


def test_cycle_check_catches_a_cycle_through_a_function_level_import(tmp_path):
    root = tmp_path / "src" / "resdyn"
    (root / "models").mkdir(parents=True)
    for init in (root / "__init__.py", root / "models" / "__init__.py"):
        init.write_text("")
    (root / "models" / "a.py").write_text("from .b import g\n")
    (root / "models" / "b.py").write_text("def g():\n    from .c import h\n    return h\n")
    (root / "models" / "c.py").write_text("from . import d\n")
    (root / "models" / "d.py").write_text("")
    assert _cycles(root) == []
    (root / "models" / "c.py").write_text("from . import d\n\n\ndef h():\n    from .a import f\n")
    assert _cycles(root) == [["resdyn.models.a", "resdyn.models.b", "resdyn.models.c"]]


# --------------------------------------------------------------------------- complexity
def test_every_function_in_src_has_complexity_at_most_15():
    """ruff's McCabe check (C901) with the project's threshold, on the whole package."""
    import subprocess
    import sys

    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed beside this Python (install the test extras)")
    res = subprocess.run([str(ruff), "check", "--no-cache", "--select", "C901", "--config",
                          "lint.mccabe.max-complexity=15", str(SRC)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_complexity_check_can_fail(tmp_path):
    import subprocess
    import sys

    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed beside this Python (install the test extras)")
    branches = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(16))
    (tmp_path / "busy.py").write_text(f"def busy(x):\n{branches}\n    return -1\n")
    res = subprocess.run([str(ruff), "check", "--no-cache", "--select", "C901", "--config",
                          "lint.mccabe.max-complexity=15", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 1 and "busy" in res.stdout and "17 > 15" in res.stdout

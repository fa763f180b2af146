"""Argument checks shared by the whole library: each error names the argument and what is allowed."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["Constraint", "ConstraintError", "ConstraintTypeError", "Interval", "Kind", "ListOf",
           "Options", "OrNone", "Table", "check_bool", "check_choice", "check_int", "check_positive",
           "check_table", "constraints_of", "declare", "described", "max_threads",
           "resolve_device", "resolve_dtype", "validate"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def check_int(name: str, value: Any, minimum: int = 0) -> int:
    """``value`` as an int ``>= minimum``; bools are not ints here."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool; 0/1 and strings are not bools here."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {value!r}")
    return value


def check_positive(name: str, value: Any, allow_zero: bool = False) -> float:
    """``value`` as a finite float ``> 0`` (or ``>= 0`` with ``allow_zero``)."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a finite number {bound}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``'float32'``/``'float64'`` (or the torch dtype itself) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        return dtype
    return DTYPES[check_choice("dtype", dtype, DTYPES)]


def resolve_device(device: str | torch.device) -> torch.device:
    """``'cpu'`` or ``'cuda'`` (``'cuda:N'``) to a device, checking that CUDA is there."""
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use 'cpu'")
    return dev


def max_threads() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count): the
    most torch threads resdyn starts."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- declared constraints
#
# A constraint is declared once, on a dataclass field (``declare(default, Interval(...))``), and
# one validator serves both the dataclass's ``__post_init__`` (``validate(self)``) and a raw table
# read from a spec (``check_table``): the same declaration, the same message.


class ConstraintError(ValueError):
    """A value its declaration refuses. ``path`` names the key (``eps``, ``betas[0]``), ``reason``
    says what is allowed and what was given (``must be a number > 0 and finite, got 0``); the
    message is ``f"{path} {reason}"``."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path} {reason}")
        self.path = path
        self.reason = reason


class ConstraintTypeError(ConstraintError, TypeError):
    """A value of the wrong type (also a :class:`TypeError`, as :func:`check_int` raises)."""


class Constraint:
    """What a value must be: :meth:`check` raises :class:`ConstraintError` naming ``path``."""

    what: str = "a valid value"

    def type_ok(self, value: Any) -> bool:
        return True

    def value_ok(self, value: Any) -> bool:
        return True

    def reason(self, value: Any) -> str:
        return f"must be {self.what}, got {value!r}"

    def check(self, path: str, value: Any) -> Any:
        if not self.type_ok(value):
            raise ConstraintTypeError(path, self.reason(value))
        if not self.value_ok(value):
            raise ConstraintError(path, self.reason(value))
        return value


def _is_number(value: Any, integer: bool) -> bool:
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too big for a float
        return False


class Interval(Constraint):
    """A finite real number (an int, with ``integer=True``) x with low <op> x <op> high; ``closed``
    ('both', 'left', 'right', 'neither') says which ends belong to it, None is no bound. ``what``
    replaces the default description ("a number > 0 and finite", "an integer in [1, 100]")."""

    def __init__(self, low: float | None, high: float | None, closed: str = "both",
                 integer: bool = False, what: str | None = None):
        check_choice("closed", closed, ("both", "left", "right", "neither"))
        self.low, self.high, self.integer = low, high, integer
        self.left = closed in ("both", "left")
        self.right = closed in ("both", "right")
        self.what = what or self._describe()

    def _describe(self) -> str:
        noun = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return f"{noun} in {'[' if self.left else '('}{self.low}, {self.high}{']' if self.right else ')'}"
        tail = "" if self.integer else " and finite"
        if self.low is not None:
            return f"{noun} {'>=' if self.left else '>'} {self.low}{tail}"
        if self.high is not None:
            return f"{noun} {'<=' if self.right else '<'} {self.high}{tail}"
        return noun if self.integer else "a finite number"

    def type_ok(self, value: Any) -> bool:
        return _is_number(value, self.integer)

    def value_ok(self, value: Any) -> bool:
        if not _finite(value):
            return False
        above = self.low is None or (value >= self.low if self.left else value > self.low)
        below = self.high is None or (value <= self.high if self.right else value < self.high)
        return above and below


class Options(Constraint):
    """One of the given values (compared with ``==``; a bool is not the number 0 or 1)."""

    def __init__(self, *choices: Any, what: str | None = None):
        self.choices = choices
        self.what = what or f"one of {', '.join(map(repr, choices))}"

    def value_ok(self, value: Any) -> bool:
        return any(value == c and type(value) is type(c) for c in self.choices)


class Kind(Constraint):
    """A value of one of ``types`` (a bool only where ``bool`` is listed); ``nonempty``: a value of
    length at least one."""

    def __init__(self, types: type | tuple[type, ...], what: str, nonempty: bool = False):
        self.types = types if isinstance(types, tuple) else (types,)
        self.what, self.nonempty = what, nonempty

    def type_ok(self, value: Any) -> bool:
        return isinstance(value, self.types) and (bool in self.types or not isinstance(value, bool))

    def value_ok(self, value: Any) -> bool:
        return not self.nonempty or len(value) > 0


class ListOf(Constraint):
    """A list or tuple of ``length`` items, each satisfying ``item`` (checked at ``path[i]``);
    ``what`` describes the whole ("a list of two numbers in [0, 1)")."""

    def __init__(self, item: Constraint, length: int, what: str):
        self.item, self.length, self.what = item, length, what

    def check(self, path: str, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise ConstraintTypeError(path, self.reason(value))
        if len(value) != self.length:
            raise ConstraintError(path, self.reason(value))
        for i, v in enumerate(value):
            self.item.check(f"{path}[{i}]", v)
        return value


class OrNone(Constraint):
    """None, or a value satisfying ``inner`` (whose message is the one shown)."""

    def __init__(self, inner: Constraint):
        self.inner = inner
        self.what = f"{inner.what} or none"

    def check(self, path: str, value: Any) -> Any:
        return value if value is None else self.inner.check(path, value)


class Table(Constraint):
    """A table of the fields of dataclass ``cls``: every key a field, each value satisfying the
    field's declaration; with ``whole`` (the table is all there is) ``cls(**table)`` is built too,
    so its cross-field checks run. An error names the table's path and the field
    (``control: lbfgs_iters must be an integer >= 0, got -1``); an unknown key names its own path."""

    def __init__(self, cls: type, what: str, whole: bool = True):
        self.cls, self.what, self.whole = cls, what, whole

    def check(self, path: str, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ConstraintTypeError(path, self.reason(value))
        declared = constraints_of(self.cls)
        allowed = [f.name for f in dataclasses.fields(self.cls)]
        for k in value:
            if k not in allowed:
                raise ConstraintError(f"{path}.{k}", f"unknown key; allowed: {', '.join(allowed)}")
        try:
            if self.whole:
                self.cls(**value)
            else:
                check_table(declared, value)
        except (ValueError, TypeError) as err:
            raise ConstraintError(path, str(err)) from None
        return value


def declare(default: Any, constraint: Constraint) -> Any:
    """A dataclass field with ``default`` whose values must satisfy ``constraint``."""
    return dataclasses.field(default=default, metadata={"constraint": constraint})


def constraints_of(cls: type) -> dict[str, Constraint]:
    """The declared constraint of each field of dataclass ``cls`` (field order)."""
    return {f.name: f.metadata["constraint"] for f in dataclasses.fields(cls)
            if "constraint" in f.metadata}


def plain(value: Any) -> Any:
    """A field's value as a table holds it: a tuple as a list, anything else as it is."""
    return list(value) if isinstance(value, tuple) else value


def described(obj: Any) -> dict[str, Any]:
    """The fields of the dataclass instance ``obj`` as a plain table (tuples as lists), in field
    order, leaving out each field of its class's ``later_fields`` (name -> default: fields added
    after stores existed) that is at that default, so that what older stores hashed stays the
    same."""
    later = getattr(obj, "later_fields", {})
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.name in later and v == later[f.name]:
            continue
        out[f.name] = plain(v)
    return out


def validate(obj: Any) -> None:
    """Every declared field of the dataclass instance ``obj`` satisfies its declaration (call it
    from ``__post_init__``); raises :class:`ConstraintError` naming the field."""
    for name, constraint in constraints_of(type(obj)).items():
        constraint.check(name, getattr(obj, name))


def check_table(constraints: Mapping[str, Constraint], table: Mapping[str, Any]) -> None:
    """Every key of the raw ``table`` is declared in ``constraints`` and its value satisfies the
    declaration; a :class:`ConstraintError` names the key (``betas[0]``, ``control``)."""
    for k, v in table.items():
        if k not in constraints:
            raise ConstraintError(k, f"unknown key; allowed: {', '.join(constraints)}")
        constraints[k].check(k, v)

"""The one training engine: E models trained as one batched computation.

Model e has parameters params[name][e], its own training indices S_e into the data set's pool,
its own learning rate lr[e] and its own seed (which orders its minibatches). Each step computes
every model's mean loss

    L_e(theta_e) = (1 / S_e) sum_{i in batch_e} loss(f(theta_e; x_i), y_i),

differentiates sum_e L_e (whose gradient in theta_e is exactly grad L_e: the sum passes a 1.0 to
every model) and updates all models at once. A single model is E = 1; there is no other path.

A model whose loss or gradient stops being finite is frozen at its last finite parameters and
flagged with the step it happened at; selection by ``torch.where`` keeps its NaN out of every
other model's numbers. Nothing in a step synchronises with the host (no ``.item()``), so on a GPU
the steps queue without stalls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._checks import Interval, Options, OrNone, check_int, declare, validate
from ..data.base import Dataset
from ..models.base import Model, Params, forward_chunks, generator_for
from .flat import FlatLayout
from .layout import ChunkLayout, chunk_layout
from .losses import correct, per_sample_loss
from .objective import LOSS, Objective
from .optim import BETAS, EPS, MOMENTUM, OPTIMIZER, WEIGHT_DECAY, Optimizer, OptimizerSpec, StepContext
from .progress import ProgressFn, make_progress

__all__ = ["LEARNING_RATE", "MAX_BATCH_SIZE", "MAX_CHUNK_SIZE", "MAX_STEPS", "TrainConfig",
           "TrainResult", "TrainState", "evaluate", "per_model_finite", "per_model_lr", "train"]

Hook = Callable[[int, "TrainState"], None]
LR_SCHEDULES = ("constant", "cosine")
#: Upper limits (inclusive) of the number of updates, the minibatch size and the chunk size.
MAX_STEPS = 10_000_000
MAX_BATCH_SIZE = 10_000_000
MAX_CHUNK_SIZE = 1_000_000
#: A learning rate (``train``'s ``lr``, each entry of a per-model list, a spec's ``train.lr``).
LEARNING_RATE = Interval(0, None, closed="neither")


@dataclass(frozen=True)
class TrainConfig:
    """steps: number of updates. loss: 'cross_entropy' or 'squared'. optimizer: 'adam' or 'sgd'
    (betas, eps for Adam; momentum for SGD; weight_decay for both). batch_size: per-model
    minibatch size, None for full batch. chunk_size: rows per chunk of the ragged layout.
    lr_schedule: the factor a(t) every model's rate is multiplied by at update t (0-based):
    'constant' (a = 1) or 'cosine' (a linear warm-up over ``warmup_steps`` updates,
    a(t) = (t + 1) / W, then a(t) = (1 + cos(pi (t - W) / (steps - W))) / 2).

    Each field's valid values are declared on it (shared with the optimisers and checked on
    construction and in a spec's [train] table by one validator, ``resdyn._checks.validate``)."""

    #: Fields added after stores existed, with their defaults: left out of a cell's config at
    #: them (``resdyn._checks.described``), so the cells of older stores keep their ids.
    later_fields: ClassVar[dict[str, Any]] = {"lr_schedule": "constant", "warmup_steps": 0}

    steps: int = declare(1000, Interval(0, MAX_STEPS, integer=True))
    loss: str = declare("cross_entropy", LOSS)
    optimizer: str = declare("adam", OPTIMIZER)
    betas: tuple[float, float] = declare((0.9, 0.999), BETAS)
    eps: float = declare(1e-8, EPS)
    momentum: float = declare(0.0, MOMENTUM)
    weight_decay: float = declare(0.0, WEIGHT_DECAY)
    batch_size: int | None = declare(None, OrNone(Interval(1, MAX_BATCH_SIZE, integer=True)))
    chunk_size: int = declare(64, Interval(1, MAX_CHUNK_SIZE, integer=True))
    lr_schedule: str = declare("constant", Options(*LR_SCHEDULES))
    warmup_steps: int = declare(0, Interval(0, None, integer=True))

    def __post_init__(self) -> None:
        validate(self)
        if self.warmup_steps and self.lr_schedule == "constant":
            raise ValueError("warmup_steps needs lr_schedule = 'cosine'; 'constant' has no warm-up")

    def lr_factor(self, t: int) -> float:
        """a(t), the schedule's factor at update t = 0, ..., steps - 1 (class docstring)."""
        if self.lr_schedule == "constant":
            return 1.0
        W = min(self.warmup_steps, self.steps)
        if t < W:
            return (t + 1) / W
        return 0.5 * (1.0 + math.cos(math.pi * (t - W) / max(self.steps - W, 1)))

    @property
    def optimizer_spec(self) -> OptimizerSpec:
        return OptimizerSpec(self.optimizer, tuple(self.betas), self.eps, self.momentum,
                             self.weight_decay)


@dataclass
class TrainState:
    """Everything a resumed run needs: after ``step`` updates, params and optimiser state, which
    models are still active, the step each diverged model diverged at (-1: none), and the loss of
    every model before every update so far (``loss_history[t, e]``)."""

    params: Params
    opt_state: dict[str, Tensor]
    step: int
    active: Tensor
    diverged_step: Tensor
    loss_history: Tensor

    def tensors(self) -> dict[str, Tensor]:
        """Flat dict for a checkpoint file (safetensors); inverse: :meth:`from_tensors`."""
        out = {f"param.{k}": v for k, v in self.params.items()}
        out.update({f"opt.{k}": v for k, v in self.opt_state.items()})
        out["step"] = torch.tensor([self.step])
        out["active"] = self.active.to(torch.uint8)
        out["diverged_step"] = self.diverged_step
        out["loss_history"] = self.loss_history[: self.step]
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], steps: int, device: torch.device) -> TrainState:
        step = int(t["step"][0])
        hist = t["loss_history"]
        full = torch.full((steps, hist.shape[1]), float("nan"), dtype=hist.dtype)
        full[:step] = hist
        return cls(
            params={k[6:]: v.to(device) for k, v in t.items() if k.startswith("param.")},
            opt_state={k[4:]: v.to(device) for k, v in t.items() if k.startswith("opt.")},
            step=step,
            active=t["active"].to(device=device, dtype=torch.bool),
            diverged_step=t["diverged_step"].to(device),
            loss_history=full.to(device),
        )


@dataclass
class TrainResult:
    """Final state and per-model metrics (each a CPU tensor of shape (E,))."""

    state: TrainState
    metrics: dict[str, Tensor] = field(default_factory=dict)

    @property
    def params(self) -> Params:
        return self.state.params


def per_model_lr(lr: float | Sequence[float] | Tensor, E: int, dtype: torch.dtype, device) -> Tensor:
    """One learning rate per model, shape (E,): ``lr`` is one number or one per model, each
    satisfying :data:`LEARNING_RATE` (> 0 and finite) in ``dtype``."""
    out = torch.as_tensor(lr, dtype=dtype).flatten().to(device)
    given = out.numel()
    if given == 1:
        out = out.expand(E).clone()
    if out.numel() != E:
        raise ValueError(f"lr must be one number or one per model ({E}), got {given} values")
    bad = ~((out > 0) & torch.isfinite(out))
    if bool(bad.any()):  # the first refused entry, with the declaration's message
        e = int(bad.nonzero()[0, 0])
        path = "lr" if given == 1 else f"lr[{e}]"
        entry = lr if given == 1 else lr[e] if isinstance(lr, list | tuple) else None
        if isinstance(entry, int | float):  # shown as the caller wrote it
            LEARNING_RATE.check(path, entry)
        LEARNING_RATE.check(path, out[e].item())  # refused in ``dtype`` only (1e-50 in float32)
    return out


def evaluate(
    model: Model,
    params: Params,
    data: Dataset,
    indices: Sequence[Tensor] | None,
    loss: str,
    chunk_size: int = 64,
    split: str = "train",
    max_rows: int = 1 << 18,
    max_elements: int = 1 << 22,
) -> dict[str, Tensor]:
    """Mean loss and accuracy of every model on its own ``indices`` of the training pool
    (``split='train'``) or on the whole test set (``split='test'``, ``indices`` ignored).

    Memory is bounded whatever E and the set's size: the chunks of all models go through the
    model a slice at a time, each slice at most ``max_rows`` rows and ``max_elements`` input
    numbers (2^22 inputs: 5,350 MNIST images). Slices are summed per model in chunk order, the
    order of a single pass, so the numbers do not depend on the slicing.
    """
    E = next(iter(params.values())).shape[0]
    p0 = next(iter(params.values()))
    if split == "test":
        x_all, y_all = data.x_test, data.y_test
        indices = [torch.arange(len(y_all))] * E
    else:
        x_all, y_all = data.x, data.y
        if indices is None or len(indices) != E:
            raise ValueError("evaluate(split='train') needs one index set per model")
    lay = chunk_layout(indices, chunk_size)
    row_numbers = max(1, x_all[:1].numel())
    per_slice = max(1, min(max_rows, max_elements // row_numbers) // chunk_size)
    sums = torch.zeros(2, E, dtype=p0.dtype, device=p0.device)
    zero = torch.zeros((), dtype=p0.dtype, device=p0.device)
    with torch.no_grad():
        for c0 in range(0, len(lay.owner), per_slice):
            index, mask = lay.index[c0 : c0 + per_slice], lay.mask[c0 : c0 + per_slice].to(p0.device)
            owner = lay.owner[c0 : c0 + per_slice].to(p0.device)
            x = data.prepare(x_all[index], p0.dtype, p0.device)
            y = y_all[index].to(p0.device)
            out = forward_chunks(model, params, x, owner)
            for row, values in enumerate((per_sample_loss(out, y, loss), correct(out, y))):
                sums[row].index_add_(0, owner, torch.where(mask, values.to(p0.dtype), zero).sum(1))
    means = (sums / lay.count.to(device=p0.device, dtype=p0.dtype)).cpu()
    return {"loss": means[0], "acc": means[1]}


class _Minibatches:
    """Model e's minibatch at step t: epoch q = t // (S_e // B_e) draws a permutation from the
    (seed_e, 'minibatch/q') stream, so a resumed run needs no generator state."""

    def __init__(self, indices: Sequence[Tensor], seeds: Sequence[int], batch_size: int):
        self.indices = [torch.as_tensor(i, dtype=torch.long) for i in indices]
        self.seeds = list(seeds)
        self.bs = [min(batch_size, len(i)) for i in self.indices]
        self.per_epoch = [len(i) // b for i, b in zip(self.indices, self.bs, strict=True)]
        self._cache: dict[int, tuple[int, Tensor]] = {}

    def at(self, step: int) -> list[Tensor]:
        out = []
        for e, idx in enumerate(self.indices):
            q, pos = divmod(step, self.per_epoch[e])
            if self._cache.get(e, (-1, None))[0] != q:
                g = generator_for(self.seeds[e], f"minibatch/{q}")
                self._cache[e] = (q, idx[torch.randperm(len(idx), generator=g)])
            b = self.bs[e]
            out.append(self._cache[e][1][pos * b : (pos + 1) * b])
        return out


def per_model_finite(model_loss: Tensor, grads: Sequence[Tensor]) -> Tensor:
    """(E,) bool: model e's loss and every gradient entry of model e are finite."""
    ok = torch.isfinite(model_loss)
    for g in grads:
        ok = ok & torch.isfinite(g).flatten(1).all(1)
    return ok


def train(
    model: Model,
    params: Params,
    data: Dataset,
    train_indices: Sequence[Tensor],
    *,
    lr: float | Sequence[float] | Tensor,
    config: TrainConfig = TrainConfig(),
    seeds: Sequence[int] | None = None,
    state: TrainState | None = None,
    hooks: Sequence[tuple[int, Hook]] = (),
    evaluate_test: bool = True,
    objective: Objective | None = None,
    optimizer: Optimizer | None = None,
    progress: bool | ProgressFn = False,
    max_rows: int | None = None,
) -> TrainResult:
    """Train the E models in ``params`` (leading axis E) and report per-model metrics.

    train_indices[e]: model e's rows of ``data``'s training pool (its sample of size S_e). The
    arguments after ``train_indices`` are keyword-only.
    lr: one rate or one per model. seeds[e]: orders model e's minibatches and names its random
    streams (default: e). state: resume from a :class:`TrainState` (``params`` is then ignored).
    hooks: pairs (every, fn); fn(step, state) runs at step 0, every ``every`` steps, and at the
    last step. objective: what is minimised (:class:`Objective`; default: ``config.loss``, no
    penalty); ``loss_history[t, e]`` holds model e's objective J_e before update t+1. optimizer:
    an :class:`~resdyn.training.optim.Optimizer` (default: built from ``config``). Each thing is
    said once: with ``objective``, ``config.loss`` stays at its default (or equals
    ``objective.loss``); with ``optimizer``, ``config``'s optimiser fields stay at their defaults
    (or build an equal optimiser); otherwise a ValueError names both. progress: True
    for a progress bar, or a callable fn(step, total, objective (E,)) called after every step.
    max_rows: train the models in consecutive blocks of at most this many rows per step (memory of
    one block; numbers unchanged); None: one block.
    Metrics: train_loss, train_acc, test_loss, test_acc, loss_gap = test_loss - train_loss,
    error_gap = train_acc - test_acc, diverged (0/1), diverged_step (-1: none); losses are the
    objective's per-sample loss, at the forward parameters of ``objective.sample`` (if any) at
    step ``config.steps``.
    """
    E = next(iter(params.values())).shape[0]
    if len(train_indices) != E:
        raise ValueError(f"train_indices has {len(train_indices)} index sets for {E} models")
    seeds = list(range(E)) if seeds is None else list(seeds)
    if len(seeds) != E:
        raise ValueError(f"seeds has {len(seeds)} entries for {E} models")
    objective = _resolve_objective(config, objective)
    opt = _resolve_optimizer(config, optimizer)
    trainable, frozen = objective.split(params)
    p0 = next(iter(params.values()))
    dtype, device = p0.dtype, p0.device
    lr_t = per_model_lr(lr, E, dtype, device)
    scales = getattr(model, "lr_scales", lambda: {})()
    if max_rows is not None:
        check_int("max_rows", max_rows, 1)
    batches_of = config.batch_size

    if state is None:
        params = {k: v.detach().clone() for k, v in params.items()}
        state = TrainState(
            params=params,
            opt_state=opt.init_state({k: params[k] for k in trainable}),
            step=0,
            active=torch.ones(E, dtype=torch.bool, device=device),
            diverged_step=torch.full((E,), -1, dtype=torch.long, device=device),
            loss_history=torch.full((config.steps, E), float("nan"), dtype=dtype, device=device),
        )

    # Models are split into consecutive blocks of at most ``max_rows`` training rows; each block
    # runs its own forward and backward, so memory is that of one block. A model's arithmetic is
    # the same in any block (its own chunks), so blocks change no number.
    blocks = _model_blocks([len(i) if batches_of is None else min(batches_of, len(i))
                            for i in train_indices], max_rows)
    batches = None if config.batch_size is None else _Minibatches(train_indices, seeds,
                                                                   config.batch_size)
    fixed_data = None if batches is not None else [
        _block_data(data, [train_indices[e] for e in range(e0, e1)], config.chunk_size, dtype, device)
        for e0, e1 in blocks]

    flat = None
    if hasattr(opt, "flat_step"):
        flat = FlatLayout(trainable, state.params)
        x_flat = flat.flatten(state.params)
        slots = {s_: flat.flatten(state.opt_state, f"{s_}.") for s_ in opt.slots}
        rate = flat.rate(lr_t, scales)

    def run_hooks(step: int, final: bool = False) -> None:
        for every, fn in hooks:
            if step == 0 or final or (every > 0 and step % every == 0):
                fn(step, state)

    def block_J(theta: Params, t: int, bi: int, lay: ChunkLayout, x: Tensor, y: Tensor) -> Tensor:
        e0, e1 = blocks[bi]
        whole = len(blocks) == 1
        sub = theta if whole else {k: v[e0:e1] for k, v in theta.items()}
        fixed = {k: (state.params[k] if whole else state.params[k][e0:e1]) for k in frozen}
        fwd = objective.forward_params(sub, fixed, t, seeds[e0:e1])
        out = forward_chunks(model, fwd, x, lay.owner)
        return objective.value(lay.per_model_mean(per_sample_loss(out, y, objective.loss)), sub)

    report = make_progress(progress, E, config.steps, state.step)
    if state.step == 0:
        run_hooks(0)
    try:
        for t in range(state.step, config.steps):
            step_data = fixed_data if batches is None else _step_data(
                data, batches.at(t), blocks, config.chunk_size, dtype, device)

            def evaluate_at(theta: Params, t=t, step_data=step_data) -> Tensor:
                with torch.no_grad():
                    return torch.cat([block_J(theta, t, bi, *d) for bi, d in enumerate(step_data)])

            if flat is not None:
                leaf = x_flat.detach().requires_grad_(True)
                theta = flat.views(leaf)
                J = _J_and_grad(block_J, theta, [leaf], t, step_data)
                g = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
                ok = torch.isfinite(J) & flat.per_model_all_finite(g)
            else:
                leaves = {k: state.params[k].detach().requires_grad_(True) for k in trainable}
                J = _J_and_grad(block_J, leaves, list(leaves.values()), t, step_data)
                grads = {k: torch.zeros_like(v) if v.grad is None else v.grad for k, v in leaves.items()}
                ok = per_model_finite(J, list(grads.values()))
            newly = state.active & ~ok
            state.diverged_step = torch.where(newly, t, state.diverged_step)
            state.active = state.active & ok
            state.loss_history[t] = J
            if flat is not None:
                a = config.lr_factor(t)
                x_flat, slots = opt.flat_step(x_flat, g, slots, rate if a == 1.0 else rate * a,
                                              flat.per_element(state.active), t + 1)
                new = flat.views(x_flat)
                state.opt_state = {k: v for s_, buf in slots.items()
                                   for k, v in flat.views(buf, f"{s_}.").items()}
            else:
                a = config.lr_factor(t)
                ctx = StepContext(lr_t if a == 1.0 else lr_t * a, t + 1, state.active, scales, J,
                                  evaluate_at)
                new, state.opt_state = opt.step({k: v.detach() for k, v in leaves.items()}, grads,
                                                state.opt_state, ctx)
            state.params = {k: new[k] if k in new else state.params[k] for k in state.params}
            state.step = t + 1
            run_hooks(state.step, final=state.step == config.steps)
            report(state.step, J)
    finally:
        report.close()

    metrics = _final_metrics(model, state, data, train_indices, config, evaluate_test, objective,
                             seeds, frozen)
    return TrainResult(state=state, metrics=metrics)


_DEFAULT = TrainConfig()


def _resolve_objective(config: TrainConfig, objective: Objective | None) -> Objective:
    """``objective``, or the plain ``config.loss``; both saying the loss (differently) is an error."""
    if objective is None:
        return Objective(loss=config.loss)
    if config.loss != _DEFAULT.loss and config.loss != objective.loss:
        raise ValueError(f"train got objective= (loss {objective.loss!r}) and config.loss="
                         f"{config.loss!r}: say the loss once, in the objective (leave config.loss "
                         f"at {_DEFAULT.loss!r}) or in config (no objective)")
    return objective


def _resolve_optimizer(config: TrainConfig, optimizer: Optimizer | None) -> Optimizer:
    """``optimizer``, or the one ``config`` names; both saying it (differently) is an error."""
    if optimizer is None:
        return config.optimizer_spec.build()
    spec = config.optimizer_spec
    if spec != _DEFAULT.optimizer_spec and spec.build() != optimizer:
        raise ValueError(f"train got optimizer={optimizer!r} and config's optimiser settings "
                         f"{spec!r}: say the optimiser once, as optimizer= (leave config's "
                         f"optimizer, betas, eps, momentum, weight_decay at their defaults) or in "
                         f"config (no optimizer)")
    return optimizer


def _model_blocks(rows: Sequence[int], max_rows: int | None) -> list[tuple[int, int]]:
    """Consecutive (start, stop) model ranges of at most ``max_rows`` rows (one model at least)."""
    if max_rows is None:
        return [(0, len(rows))]
    out, start, acc = [], 0, 0
    for e, r in enumerate(rows):
        if e > start and acc + r > max_rows:
            out.append((start, e))
            start, acc = e, 0
        acc += r
    out.append((start, len(rows)))
    return out


def _block_data(data: Dataset, indices: Sequence[Tensor], chunk_size: int, dtype, device
                ) -> tuple[ChunkLayout, Tensor, Tensor]:
    lay = chunk_layout(indices, chunk_size)
    return (lay.to(device), data.prepare(data.x[lay.index], dtype, device),
            data.y[lay.index].to(device))


def _step_data(data, batch: Sequence[Tensor], blocks, chunk_size, dtype, device) -> list:
    return [_block_data(data, batch[e0:e1], chunk_size, dtype, device) for e0, e1 in blocks]


def _J_and_grad(block_J, theta: Params, leaves: list[Tensor], t: int, step_data) -> Tensor:
    """(E,) objective; gradients of sum_e J_e accumulated into ``leaves``' ``.grad``, block by
    block (a block's gradient is zero outside its models, so the sum is exact)."""
    Js = []
    for bi, d in enumerate(step_data):
        J = block_J(theta, t, bi, *d)
        grads = torch.autograd.grad(J.sum(), leaves, allow_unused=True)
        for leaf, g in zip(leaves, grads, strict=True):
            if g is not None:
                leaf.grad = g if leaf.grad is None else leaf.grad + g
        Js.append(J.detach())
    return Js[0] if len(Js) == 1 else torch.cat(Js)


def _final_metrics(model, state, data, train_indices, config, evaluate_test, objective, seeds,
                   frozen) -> dict[str, Tensor]:
    params = state.params
    if objective.sample is not None:
        with torch.no_grad():
            params = objective.forward_params({k: v for k, v in params.items() if k not in frozen},
                                              {k: params[k] for k in frozen}, config.steps, seeds)
    tr = evaluate(model, params, data, train_indices, objective.loss, config.chunk_size)
    m = {"train_loss": tr["loss"], "train_acc": tr["acc"]}
    if evaluate_test and len(data.y_test):
        te = evaluate(model, params, data, None, objective.loss, config.chunk_size, "test")
        m.update(test_loss=te["loss"], test_acc=te["acc"],
                 loss_gap=te["loss"] - tr["loss"], error_gap=tr["acc"] - te["acc"])
    m["diverged"] = (state.diverged_step >= 0).cpu().to(torch.long)
    m["diverged_step"] = state.diverged_step.cpu()
    return m

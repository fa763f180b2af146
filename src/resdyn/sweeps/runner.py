"""Train one group of cells as one batched computation and turn it into per-cell results.

``train_group`` is a pure function of the cells' configurations (plus where to keep
checkpoints), so the same code runs in-process and in a Ray worker. A cell's numbers depend only
on its own configuration: its sample and initial weights come from its own seed, and the engine
keeps batch-mates apart bitwise.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import resolve_dtype
from ..models import native
from ..models.base import Params, init_params
from ..training.certify import certify_sample
from ..training.control import control_diagnostics, controls_distance, lift, train_control
from ..training.engine import TrainConfig, TrainState, train
from ..training.objective import Objective
from .cells import Cell
from .measures import MeasureContext, TrackContext, get_measure, get_tracker
from .store import CellResult

__all__ = ["CheckpointIO", "GroupProgress", "WarmStart", "train_group"]

CheckpointIO = tuple[Callable[[str], Any], Callable[[str, dict, dict], None]]


@dataclass(frozen=True)
class WarmStart:
    """What a cell that depends on the level below receives: ``params`` (leading axis 1), the
    best source's weights prolonged to the cell's model, and that ``source`` model with its
    ``source_params`` as stored (leading axis 1)."""

    params: Params
    source: Any
    source_params: Params


@dataclass(frozen=True)
class GroupProgress:
    """Where a group's training stands: ``step`` of ``steps`` (it started or resumed at
    ``start_step``), ``models`` trained together, ``mean_loss`` the mean over them of the latest
    step's training loss (non-finite ones left out; NaN before the first step)."""

    step: int
    steps: int
    start_step: int
    models: int
    mean_loss: float


def _split_state(state: TrainState) -> list[dict[str, torch.Tensor]]:
    """Each model's share of a group's state, as flat dicts for checkpoint files."""
    flat = state.tensors()
    E = len(state.active)

    def share(k: str, v: torch.Tensor, e: int) -> torch.Tensor:
        if k == "step":
            return v
        return (v[:, e : e + 1] if k == "loss_history" else v[e : e + 1]).contiguous()

    return [{k: share(k, v, e) for k, v in flat.items()} for e in range(E)]


def _join_states(parts: Sequence[dict[str, torch.Tensor]], steps: int, device) -> TrainState:
    keys = parts[0].keys()
    flat = {}
    for k in keys:
        if k == "step":
            flat[k] = parts[0][k]
        elif k == "loss_history":
            flat[k] = torch.cat([p[k] for p in parts], dim=1)
        else:
            flat[k] = torch.cat([p[k] for p in parts], dim=0)
    return TrainState.from_tensors(flat, steps, torch.device(device))


def _checkpoint_fault(loaded: Sequence[tuple[dict[str, torch.Tensor], dict]], params0: Params,
                      config: TrainConfig) -> str | None:
    """What keeps checkpoints (tensors, metadata) from resuming a group whose initial parameters
    are ``params0``, or None. A checkpoint's sha256 only says it is the file that was written;
    its contents must also be this group's state: the tensors, dtypes and shapes of a fresh
    state (parameters, optimiser slots, active flags, divergence steps), one step in
    [0, steps] shared by all, a loss history of that many rows, and series of (step, value)."""
    trainable, _ = Objective(loss=config.loss).split(params0)
    E = next(iter(params0.values())).shape[0]
    ref = _split_state(TrainState(
        params=params0, opt_state=config.optimizer_spec.build().init_state(
            {k: params0[k] for k in trainable}),
        step=0, active=torch.ones(E, dtype=torch.bool),
        diverged_step=torch.full((E,), -1, dtype=torch.long),
        loss_history=torch.zeros((0, E), dtype=next(iter(params0.values())).dtype)))[0]
    steps = set()
    for i, (tensors, meta) in enumerate(loaded):
        if set(tensors) != set(ref):
            return f"checkpoint {i} holds {', '.join(sorted(tensors))[:200]}"
        step_t = tensors["step"]
        if step_t.shape != (1,) or step_t.dtype != torch.int64:
            return f"checkpoint {i}: step is {step_t.dtype} of shape {tuple(step_t.shape)}"
        step = int(step_t[0])
        if not 0 <= step <= config.steps:
            return f"checkpoint {i}: step {step} is outside [0, {config.steps}]"
        steps.add(step)
        for k, v in tensors.items():
            want = ((step, 1) if k == "loss_history" else (1,) if k == "step"
                    else tuple(ref[k].shape))
            if tuple(v.shape) != want or v.dtype != ref[k].dtype:
                return (f"checkpoint {i}: {k} is {v.dtype} of shape {tuple(v.shape)}, not "
                        f"{ref[k].dtype} of shape {want}")
        if not bool(((tensors["active"] == 0) | (tensors["active"] == 1)).all()):
            return f"checkpoint {i}: active flags other than 0 and 1"
        if not bool(((tensors["diverged_step"] >= -1) & (tensors["diverged_step"] <= step)).all()):
            return f"checkpoint {i}: a divergence step outside [-1, {step}]"
        fault = _series_fault(meta)
        if fault is not None:
            return f"checkpoint {i}: {fault}"
    if len(steps) > 1:
        return f"they were taken at different steps {sorted(steps)}"
    return None


def _series_fault(meta: Any) -> str | None:
    """What is wrong with a checkpoint's recorded series (``{name: [[step, value], ...]}``)."""
    series = meta.get("series", {}) if isinstance(meta, dict) else None
    if not isinstance(series, dict):
        return "its metadata has no series table"
    for name, points in series.items():
        if not isinstance(points, list) or not all(
                isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], int)
                and not isinstance(p[0], bool) and isinstance(p[1], int | float | None)
                for p in points):
            return f"series {name[:60]!r} is not a list of [step, value] pairs"
    return None


def _qualified(name: str, key: str) -> str:
    """A measure's value names: ``name`` itself, or ``name.key`` (keys already so named kept)."""
    if not key or key == name or key.startswith(name + "."):
        return key or name
    return f"{name}.{key}"


def train_group(
    cells: Sequence[Cell],
    device: str = "cpu",
    checkpoint: CheckpointIO | None = None,
    checkpoint_seconds: float = 120.0,
    warm: Mapping[str, WarmStart] | None = None,
    progress: Callable[[GroupProgress], None] | None = None,
) -> list[CellResult]:
    """Train ``cells`` (one group key) together; return one :class:`CellResult` per cell.

    warm: by cell id, the :class:`WarmStart` of each cell that depends on the level below
    (``resdyn.sweeps.sweep.warm_params`` resolves them): a warm cell (``warm_init``) starts from its
    ``params``, already prolonged to the cell's model; other cells start from their seed.
    progress: called with a :class:`GroupProgress` when training starts (or resumes) and about a
    hundred times along it.
    Cells with a ``[certificate]`` are certified one at a time (:func:`_certificate_cell`).
    Each result's provenance gets, under "native", what the native kernel reports about this group
    (``resdyn.models.native.provenance``: whether it ran, its libraries, compiler and CPU flags).
    """
    first = cells[0]
    if any(c.group_key != first.group_key for c in cells):
        raise ValueError("train_group: cells of one group must share every setting but S, seed, lr")
    native.reset_usage()
    if first.certificate is not None:
        results = _train_certificate_group(cells, device)
    elif first.training.control is not None:
        results = _train_control_group(cells, device, warm or {})
    else:
        results = _train_engine_group(cells, device, checkpoint, checkpoint_seconds, warm, progress)
    used = native.provenance()
    for r in results:
        r.provenance = {**r.provenance, "native": used}
    return results


@dataclass
class _Group:
    """What the hooks of one engine-trained group share: its cells, model, data, samples,
    initial parameters, seeds and configuration, and the series recorded per cell."""

    cells: Sequence[Cell]
    model: Any
    data: Any
    idx: list[torch.Tensor]
    params0: Params
    seeds: list[int]
    config: TrainConfig
    series: dict[str, dict[str, list]]


def _train_engine_group(cells: Sequence[Cell], device: str, checkpoint: CheckpointIO | None,
                        checkpoint_seconds: float, warm: Mapping[str, WarmStart] | None,
                        progress: Callable[[GroupProgress], None] | None) -> list[CellResult]:
    """:func:`train_group` for cells trained by the engine (no ``[train.control]``)."""
    t0 = time.perf_counter()
    first = cells[0]
    dtype = resolve_dtype(first.dtype)
    data = first.data.load()
    # The engine's per-model seed is the seed of the initial weights (it orders minibatches too).
    seeds = [c.init_seed for c in cells]
    g = _Group(cells, first.model, data, [c.data.indices(data, c.sample_size, c.seed) for c in cells],
               init_params(first.model, seeds, dtype, device), seeds, first.training.config,
               {c.cell_id: {} for c in cells})
    lr = torch.tensor([c.lr for c in cells], dtype=dtype)
    _start_warm(cells, g.params0, warm)
    state = _resume(g, checkpoint, device) if checkpoint is not None else None
    hooks = _tracker_hooks(g)
    if checkpoint is not None:
        hooks.append(_checkpoint_hook(g, checkpoint, checkpoint_seconds))
    if progress is not None:
        hooks.append(_progress_hook(g, progress, state.step if state is not None else 0))
    result = train(g.model, g.params0, data, g.idx, lr=lr, config=g.config, seeds=seeds, state=state,
                   hooks=hooks)
    t_train = time.perf_counter() - t0
    measures = _measures(g, result)
    t_all = time.perf_counter() - t0
    out = []
    for e, c in enumerate(cells):
        hist = result.state.loss_history[:, e].detach().cpu().tolist()
        metrics = {k: float(v[e]) for k, v in result.metrics.items()}
        metrics["final_train_objective"] = hist[-1] if hist else float("nan")
        out.append(CellResult(
            cell_id=c.cell_id,
            cell=c,
            metrics=metrics,
            measures={k: v[e] for k, v in measures.items()},
            series={**g.series[c.cell_id], "train_objective": _loss_series(hist)},
            weights={k: v[e].detach().cpu() for k, v in result.params.items()},
            timing={"group_seconds": t_all, "train_seconds": t_train, "group_size": len(cells),
                    "seconds_per_model": t_all / len(cells)},
        ))
    return out


def _resume(g: _Group, checkpoint: CheckpointIO, device: str) -> TrainState | None:
    """The group's state from its cells' checkpoints (their series into ``g.series``), or None
    when a cell has none or they do not fit the group (a warning says so)."""
    loaded = [checkpoint[0](c.cell_id) for c in g.cells]
    if not all(x is not None for x in loaded):
        return None
    fault = _checkpoint_fault(loaded, g.params0, g.config)
    if fault is not None:
        warnings.warn(f"the checkpoints of cells {', '.join(c.cell_id for c in g.cells)} do "
                      f"not fit their cells ({fault}); they train from scratch",
                      RuntimeWarning, stacklevel=4)
        return None
    for c, (_, meta) in zip(g.cells, loaded, strict=True):
        g.series[c.cell_id] = {k: [tuple(p) for p in v] for k, v in meta.get("series", {}).items()}
    return _join_states([x[0] for x in loaded], g.config.steps, device)


def _tracker_hooks(g: _Group) -> list[tuple[int, Callable[[int, TrainState], None]]]:
    """One hook per tracker of the group's cells: its values per cell into ``g.series``."""
    hooks = []
    for name, opts in g.cells[0].trackers.items():
        tracker = get_tracker(name)
        options = {k: v for k, v in opts.items() if k != "every"}

        def record(step: int, st: TrainState, tracker=tracker, options=options, name=name) -> None:
            ctx = TrackContext(g.model, st.params, g.params0, g.data, g.idx, step, st.loss_history,
                               g.seeds, options, g.config)
            for key, vals in tracker(ctx).items():
                for c, v in zip(g.cells, vals.detach().cpu().tolist(), strict=True):
                    g.series[c.cell_id].setdefault(_qualified(name, key), []).append((step, v))

        hooks.append((int(opts["every"]), record))
    return hooks


def _checkpoint_hook(g: _Group, checkpoint: CheckpointIO, seconds: float
                     ) -> tuple[int, Callable[[int, TrainState], None]]:
    """Save every cell's share of the state at most every ``seconds`` (not at the first or last
    step)."""
    last = [time.perf_counter()]

    def save(step: int, st: TrainState) -> None:
        if step in (0, g.config.steps) or time.perf_counter() - last[0] < seconds:
            return
        for c, part in zip(g.cells, _split_state(st), strict=True):
            checkpoint[1](c.cell_id, part, {"series": g.series[c.cell_id]})
        last[0] = time.perf_counter()

    return max(1, min(50, g.config.steps // 20 or 1)), save


def _progress_hook(g: _Group, progress: Callable[[GroupProgress], None], start: int
                   ) -> tuple[int, Callable[[int, TrainState], None]]:
    """Report the start now, then about a hundred times along training."""
    steps, models = g.config.steps, len(g.cells)

    def report(step: int, st: TrainState) -> None:
        loss = float("nan")
        if step > 0:
            last = st.loss_history[step - 1]
            finite = last[torch.isfinite(last)]
            loss = float(finite.mean()) if finite.numel() else loss
        progress(GroupProgress(step, steps, start, models, loss))

    progress(GroupProgress(start, steps, start, models, float("nan")))
    return max(1, steps // 100), report


def _measures(g: _Group, result: Any) -> dict[str, list[float]]:
    """Every measure of the group's cells on the trained parameters, per cell."""
    measures: dict[str, list[float]] = {}
    for name, opts in g.cells[0].measures.items():
        ctx = MeasureContext(g.model, result.params, g.data, g.idx, g.config, result.metrics,
                             g.seeds, dict(opts))
        for key, vals in get_measure(name)(ctx).items():
            measures[_qualified(name, key)] = torch.as_tensor(vals).detach().cpu().double().tolist()
    return measures


def _start_warm(cells: Sequence[Cell], params0: Params, warm: Mapping[str, WarmStart] | None) -> None:
    """Warm cells (``warm_init``) start from their prolonged source, in place."""
    for e, c in enumerate(cells):
        if warm and c.cell_id in warm and c.warm_init:
            for k, v in warm[c.cell_id].params.items():
                params0[k][e] = v[0].to(device=params0[k].device, dtype=params0[k].dtype)


def _loss_series(hist: list[float]) -> list[tuple[int, float]]:
    """About 200 points of a training curve, its last point always kept."""
    stride = max(1, len(hist) // 200)
    series = [(t, hist[t]) for t in range(0, len(hist), stride)]
    if hist and series[-1][0] != len(hist) - 1:
        series.append((len(hist) - 1, hist[-1]))
    return series


def _train_control_group(cells: Sequence[Cell], device: str, warm: Mapping[str, WarmStart]
                         ) -> list[CellResult]:
    """Cells with ``[train.control]``: the control problem J_N (``train_control``: the engine's
    Adam for ``steps``, then its L-BFGS), the frozen lifting applied to every cell's initial
    weights (warm ones included). Cells that share one training sample train as one batch (J_N
    averages over one data set). Per cell: the final J, loss, penalty, accuracy, gradient norm,
    the same at the initial weights, the H^1 seminorm and (``fine_steps``) the continuous
    objective of its minimizer, and, for a cell that depends on the level below, the distance
    ``source_distance`` = ||Pi theta_source - Pi theta_cell||_{L^2(Delta)} to the best of it.
    Such a group is not checkpointed along training (a resumed run trains it again from the
    start) and reports no progress within it."""
    t0 = time.perf_counter()
    first = cells[0]
    ctl, cfg = first.training.control, first.training.config
    dtype = resolve_dtype(first.dtype)
    model, data = first.model, first.data.load()
    params0 = init_params(model, [c.init_seed for c in cells], dtype, device)
    _start_warm(cells, params0, warm)
    if ctl.lift_scale:
        params0 = lift(params0, ctl.lift_scale, ctl.lift_seed)
    batches: dict[tuple[int, ...], list[int]] = {}
    for e, c in enumerate(cells):
        batches.setdefault(tuple(c.data.indices(data, c.sample_size, c.seed).tolist()), []).append(e)
    out: dict[int, CellResult] = {}
    for key, members in batches.items():
        idx = torch.tensor(key, dtype=torch.long)
        x, y = data.prepare(data.x[idx], dtype, device), data.y[idx].to(device)
        sub = {k: v[members] for k, v in params0.items()}
        lr = torch.tensor([cells[e].lr for e in members], dtype=dtype)
        res = train_control(model, sub, x, y, ctl.weights, adam_steps=cfg.steps, lr=lr,
                            lbfgs_iters=ctl.lbfgs_iters, loss=cfg.loss, grad_tol=ctl.grad_tol,
                            history_size=ctl.history_size, optimizer=cfg.optimizer_spec.build())
        metrics = {**res.metrics, **control_diagnostics(model, res.params, x, y, ctl.weights,
                                                        ctl.fine_steps, cfg.loss)}
        for i, e in enumerate(members):
            c = cells[e]
            m = {k: float(v[i]) for k, v in metrics.items()}
            if c.cell_id in warm:
                one = {k: v[i : i + 1] for k, v in res.params.items()}
                w = warm[c.cell_id]
                m["source_distance"] = float(controls_distance(w.source, w.source_params, model, one)[0])
            m.update(train_loss=m["loss"], train_acc=m["acc"], final_train_objective=m["J"],
                     diverged=float(not math.isfinite(m["J"])), diverged_step=-1.0)
            hist = res.history[:, i].tolist() if res.history is not None else []
            out[e] = CellResult(
                cell_id=c.cell_id, cell=c, metrics=m,
                series={"train_objective": _loss_series(hist)},
                weights={k: v[i].detach().cpu() for k, v in res.params.items()},
                timing={})
    t_all = time.perf_counter() - t0
    for r in out.values():
        r.timing = {"group_seconds": t_all, "train_seconds": t_all, "group_size": len(cells),
                    "seconds_per_model": t_all / len(cells)}
    return [out[e] for e in range(len(cells))]


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _train_certificate_group(cells: Sequence[Cell], device: str) -> list[CellResult]:
    """Cells with a ``[certificate]``, one at a time (each has its own split and normalisation):
    :func:`_certificate_cell` each. Not checkpointed (a resumed run trains an unfinished cell
    again)."""
    t_group = time.perf_counter()
    out = [_certificate_cell(c, device) for c in cells]
    t_all = time.perf_counter() - t_group
    for r in out:
        r.timing.update(group_seconds=t_all, group_size=len(cells))
    return out


def _certificate_extras(res: Any) -> dict[str, dict[str, torch.Tensor]]:
    """The stored extras of a certificate cell: the prior mean, the whitened posterior and, with
    a data-independent baseline, its whitened posterior (its prior mean is the initialisation)."""
    def one(p: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v[0].detach().cpu() for k, v in p.items()}

    out = {"prior_mean": one(res.prior_mean), "posterior_u": one(res.posterior)}
    if res.baseline_posterior is not None:
        out["baseline_u"] = one(res.baseline_posterior)
    return out


def _certificate_cell(c: Cell, device: str) -> CellResult:
    """``certify_sample`` with the cell's initial weights (its init seed), its sample and seed,
    its [train] settings for the prior mean. The certificate's numbers are the metrics, with
    ``diverged`` measured: 1 when the prior mean's or the posterior's training objective or the
    certificate is not finite, or when the recipe refused a non-finite number on the way (its
    message in the provenance, ``certificate_error``; such a cell has no weights). That cell
    fails, not its group. The posterior mean network m + A u is the cell's weights, the prior mean
    m and the whitened posterior u extras of the same file; both training curves are series."""
    t0 = time.perf_counter()
    dtype = resolve_dtype(c.dtype)
    data = c.data.load()
    idx = c.data.indices(data, c.sample_size, c.seed)
    params0 = init_params(c.model, [c.init_seed], dtype, device)
    try:
        res = certify_sample(c.model, params0, data, idx, c.seed, c.lr, c.training.config,
                             c.certificate)
    except ValueError as err:  # kl_inv refuses a NaN risk or KL: the cell diverged
        seconds = time.perf_counter() - t0
        return CellResult(cell_id=c.cell_id, cell=c,
                          metrics={"certificate": float("nan"), "diverged": 1.0, "diverged_step": -1.0},
                          timing={"train_seconds": seconds, "seconds_per_model": seconds},
                          provenance={"certificate_error": str(err)[:500]})
    numbers = dict(res.numbers)
    ok = (_finite(res.prior_history) and _finite(res.posterior_history)
          and math.isfinite(numbers["certificate"]))
    prior_hist = res.prior_history[:, 0].tolist()
    post_hist = res.posterior_history[:, 0].tolist()
    numbers.update(diverged=float(not ok), diverged_step=-1.0,
                   final_train_objective=prior_hist[-1] if prior_hist else float("nan"),
                   posterior_objective=post_hist[-1] if post_hist else float("nan"))
    seconds = time.perf_counter() - t0
    return CellResult(
        cell_id=c.cell_id, cell=c, metrics=numbers,
        series={"train_objective": _loss_series(prior_hist),
                "posterior_objective": _loss_series(post_hist)},
        weights={k: v[0].detach().cpu() for k, v in res.posterior_mean.items()},
        extras=_certificate_extras(res),
        timing={"train_seconds": seconds, "seconds_per_model": seconds})

"""Landscape renders on disk: cells written as they finish (resumable), shared by MPI ranks, assembled and logged
by rank 0. The surface itself is computed by the pure functions of landscape.py."""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from projects.depth_limit import landscape as LS
from projects.depth_limit import models as M
from shared import interrupts
from shared.data import DataConfig, load_data
from shared.errors import UsageError, check
from shared.experiment import default_out_dir, load_model_from, resolve_snapshot
from shared.files import atomic_write, ensure_writable_dir, write_json
from shared.mpi import world
from shared.plotting import save_figure
from shared.progress import progress_bar, say
from shared.tracking import Tracker, resolve_input

PROJECT = "depth_limit"


# ---------------------------------------------------------------------------------------------------------------
# landscape render: cells on disk, resumable, MPI over cells


@dataclass
class RenderSettings:
    steps: int = 100
    res: float = 0.05
    seed: int = 1234
    cell_size: int = 10
    batch_points: int = 64
    samples: int = 17
    sample_seed: int = 0
    dtype: str = "float32"

    def validate(self) -> None:
        check(self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        check(self.res > 0, f"--res must be > 0, got {self.res}")
        check(self.cell_size >= 1, f"--cell-size must be >= 1, got {self.cell_size}")
        check(self.batch_points >= 1, f"--batch-points must be >= 1, got {self.batch_points}")
        check(self.samples >= 0, f"--samples must be >= 0 (0: the whole training split), got {self.samples}")
        check(self.dtype in ("float32", "float64"), f"--dtype must be float32 or float64, got {self.dtype}")


def landscape_inputs(source: str, dataset: str | None, data_path: str | None, settings: RenderSettings):
    """(model, x, y, task, snapshot, source_run_id) for a render: the snapshot's model and ``samples`` training
    samples (test-time transforms) drawn with ``sample_seed``."""
    snap_ref = resolve_snapshot(source)
    model, snap, run_id = load_model_from(snap_ref, project=PROJECT)
    dc = dict(snap.get("data_config") or {})
    if not dc and dataset is None:
        raise UsageError("the snapshot does not say which data it was trained on; pass --dataset")
    known = {f.name for f in fields(DataConfig)}
    dc = {k: tuple(v) if isinstance(v, list) else v for k, v in dc.items() if k in known}
    cfg = DataConfig(**dc) if dc else DataConfig(dataset=dataset)
    if dataset is not None:
        cfg.dataset = dataset
    if data_path is not None:
        cfg.data_path = data_path
    cfg.noise, cfg.pixel_shuffle, cfg.augmentation = 0.0, False, False
    data = load_data(cfg, seed=0)
    loader = data.train_eval
    n = loader.num_samples
    k = n if settings.samples == 0 else min(settings.samples, n)
    idx = torch.from_numpy(np.sort(np.random.RandomState(settings.sample_seed).permutation(n)[:k]))
    x = loader.transform(loader.x[idx], None)
    y = loader.y[idx]
    return model, x, y, data, snap, run_id, snap_ref


def make_evaluator(model, x, y, task: str, settings: RenderSettings, loss_p: float = 2.0,
                   loss_convention: str = "code"):
    """Directions and the batched evaluator for ``model`` (the fast path for DepthLimitResNet, vmap otherwise)."""
    dtype = torch.float32 if settings.dtype == "float32" else torch.float64
    model = model.eval()
    if isinstance(model, M.DepthLimitResNet):
        d1, d2 = LS.random_directions({"W": model.W.detach()}, settings.seed, settings.res)
        ev = LS.depth_limit_evaluator(model, d1["W"], d2["W"], x, y, task, loss_p, loss_convention, dtype=dtype)
        return ev
    model = model.to(dtype)
    theta = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    d1, d2 = LS.random_directions(theta, settings.seed, settings.res)
    d1 = {k: v.to(dtype) for k, v in d1.items()}
    d2 = {k: v.to(dtype) for k, v in d2.items()}
    return LS.functional_evaluator(model, d1, d2, x.to(dtype), y, task, loss_p, loss_convention)


def _fingerprint(snap: dict, settings: RenderSettings, dataset: str) -> dict:
    sd = snap["model_state_dict"]
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return {"weights_sha256": h.hexdigest()[:16], "dataset": dataset, **asdict(settings)}


def _cell_path(cells_dir: Path, index: int) -> Path:
    return cells_dir / f"cell_{index:05d}.npy"


def done_cells(cells_dir: Path, plan: list[LS.Cell] | None = None) -> set[int]:
    """Indices of the finished cells. With ``plan``, each cell file is read back: a damaged one (empty, truncated,
    not an array of the cell's shape) is removed with a warning on stderr, so that it is computed again."""
    shapes = {c.index: (c.i1 - c.i0, c.j1 - c.j0) for c in plan or ()}
    done = set()
    for f in sorted(cells_dir.glob("cell_*.npy")):
        index = int(f.stem.split("_")[1])
        if plan is not None:
            problem = _cell_problem(f, shapes.get(index))
            if problem is not None:
                say(f"warning: {f} is damaged ({problem}); computing cell {index} again")
                f.unlink(missing_ok=True)
                continue
        done.add(index)
    return done


def _cell_problem(path: Path, shape: tuple[int, int] | None) -> str | None:
    """Why a cell file cannot be used (None when it holds a float array of ``shape``)."""
    if path.stat().st_size == 0:
        return "zero bytes"
    try:
        v = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - EOFError, ValueError, OSError: all mean a damaged file
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'unreadable'}"
    if shape is None:
        return "not a cell of this grid"
    if v.shape != shape or v.dtype.kind != "f":
        return f"holds {v.dtype} {v.shape}, expected float {shape}"
    return None


def write_cell(cells_dir: Path, index: int, values: np.ndarray) -> Path:
    return atomic_write(_cell_path(cells_dir, index), lambda tmp: np.save(open(tmp, "wb"), values))


def render_cells(evaluate: LS.BatchEvaluator, pending: list[LS.Cell], cells_dir: Path, steps: int,
                 batch_points: int, rank: int = 0, size: int = 1, echo: Callable[[str], None] = say,
                 comm: Any = None) -> int:
    """Evaluate this rank's round-robin share of ``pending`` (the same list on every rank), writing each cell as it
    finishes; returns the number of cells this rank evaluated. After each round of cells every rank passes a safe
    point together (:func:`shared.interrupts.check` with ``comm``): a stop ends all ranks after their cell."""
    todo = LS.assign_cells(pending, rank, size)
    rounds = -(-len(pending) // max(size, 1))  # the same on every rank: the collective safe points match
    t0 = time.perf_counter()
    with progress_bar(rank == 0) as bar:
        task = bar.add_task("landscape cells", total=len(todo))
        for k in range(rounds):
            if k < len(todo):
                cell = todo[k]
                write_cell(cells_dir, cell.index, LS.evaluate_cell(cell, steps, evaluate, batch_points))
                bar.advance(task)
            interrupts.check(comm if size > 1 else None)
            if k == 0 and rank == 0 and len(todo) > 1:
                per = (time.perf_counter() - t0) / max(cell.size, 1)
                left = sum(c.size for c in todo[1:])
                echo(f"  {per * 1e3:.2f} ms per grid point; about {per * left:.0f} s left on this rank")
    return len(todo)


def load_cells(cells_dir: Path, plan: list[LS.Cell]) -> dict[int, np.ndarray]:
    out = {}
    for c in plan:
        p = _cell_path(cells_dir, c.index)
        if p.exists():
            out[c.index] = np.load(p)
    return out


def landscape_dir(source: str) -> Path:
    """Where a render of ``source`` lives by default: the same folder for the same input, so that re-running the
    command resumes it (``<outputs>/depth_limit/landscape/<source>``)."""
    stem = re.sub(r"[^0-9A-Za-z_.-]+", "_", str(source).strip("/"))[-60:]
    return default_out_dir(PROJECT, f"landscape/{stem}")


def save_landscape_figures(surface: np.ndarray, res: float, prefix: Path, levels: int = 50,
                           tracker: Tracker | None = None) -> list[Path]:
    """``<prefix>_surface.png`` and ``<prefix>_contour.png`` (logged under figures/ when a tracker is given)."""
    from projects.depth_limit.plots import plot_landscape

    prefix = Path(prefix)
    return [save_figure(fig, prefix.with_name(f"{prefix.name}_{name}.png"), tracker=tracker)
            for name, fig in plot_landscape(surface, res, levels).items()]


def render_landscape(source: str, out_dir: str | None, settings: RenderSettings, *, dataset: str | None = None,
                     data_path: str | None = None, fresh: bool = False, plot: bool = True,
                     run_name: str | None = None, echo: Callable[[str], None] = say) -> dict:
    """Render (or finish rendering) a surface into ``out_dir``; MPI ranks share the cells; rank 0 assembles,
    plots and logs the analysis run. Returns {'surface': path, 'run_id': ...} on rank 0. ``out_dir`` None: the
    source's :func:`landscape_dir`."""
    settings.validate()
    interrupts.install()  # every rank: Ctrl-C / SIGTERM stop all of them after their cell in progress
    comm = world()
    rank, size = comm.Get_rank(), comm.Get_size()
    out = Path(out_dir) if out_dir else landscape_dir(source)
    cells_dir = out / "cells"
    model, x, y, data, snap, run_id, snap_ref = landscape_inputs(source, dataset, data_path, settings)
    spec_opts = (snap.get("model_spec") or {}).get("options", {})
    fp = _fingerprint(snap, settings, dataset or (snap.get("data_config") or {}).get("dataset", "?"))
    meta_path = out / "render.json"
    if rank == 0:
        ensure_writable_dir(cells_dir)
        if meta_path.exists() and not fresh:
            old = json.loads(meta_path.read_text())
            if old.get("fingerprint") != fp:
                diff = [k for k in fp if old.get("fingerprint", {}).get(k) != fp[k]]
                raise UsageError(f"{out} holds a render with other settings ({', '.join(diff)}); use another --out-dir "
                                 "or --fresh to start over")
        if fresh:
            for f in cells_dir.glob("cell_*.npy"):
                f.unlink()
        write_json(meta_path, {"fingerprint": fp, "source": source, "snapshot": snap_ref,
                               "source_run_id": run_id})
    comm.Barrier()
    plan = LS.plan_cells(settings.steps, settings.cell_size)
    meta = snap.get("depth_limit") or {}
    evaluate = make_evaluator(model, x, y, data.task, settings, float(meta.get("p_loss", 2.0)),
                              meta.get("loss_convention", "code"))
    # rank 0 lists the finished cells once and every rank gets the same list (ranks write cells while others list)
    pending = comm.bcast(LS.pending_cells(plan, done_cells(cells_dir, plan)) if rank == 0 else None, root=0)
    if rank == 0:
        echo(f"landscape: {settings.steps}x{settings.steps} points on {len(y)} samples, {len(plan)} cells "
             f"({len(plan) - len(pending)} done), {size} rank(s)")
    n_done = render_cells(evaluate, pending, cells_dir, settings.steps, settings.batch_points, rank, size, echo, comm)
    comm.Barrier()
    if rank != 0:
        return {"cells": n_done}
    surface = LS.assemble(settings.steps, plan, load_cells(cells_dir, plan))
    if np.isnan(surface).any():
        raise UsageError(f"{int(np.isnan(surface).sum())} grid points are missing in {cells_dir}; re-run the same "
                         "command to finish them")
    surf_path = atomic_write(out / "surface.npy", lambda tmp: np.save(open(tmp, "wb"), surface))
    result = {"surface": str(surf_path), "min": float(surface.min()), "max": float(surface.max()),
              "centre": float(surface[settings.steps // 2, settings.steps // 2])}
    tracker = Tracker()
    params = {f"landscape.{k}": v for k, v in asdict(settings).items()}
    params.update({"landscape.source": source, "landscape.snapshot": snap_ref,
                   **{f"model.{k}": v for k, v in spec_opts.items()}})
    with tracker.start(PROJECT, "landscape", run_name=run_name, params=params,
                       tags={"source_run_id": run_id} if run_id else {}) as t:
        t.log_data(data)  # the data the loss surface is evaluated on (a sample of its training split)
        t.log_artifact(surf_path, "landscape")
        t.log_metrics({"landscape_min": result["min"], "landscape_max": result["max"],
                       "landscape_centre": result["centre"]})
        if plot:
            save_landscape_figures(surface, settings.res, out / "landscape", tracker=t)
        result["run_id"] = t.run_id
    return result


def load_surface(source: str) -> np.ndarray:
    path, _ = resolve_input(source, "surface")
    try:
        s = np.load(path)
    except Exception as e:
        raise UsageError(f"{path} is not a .npy surface ({type(e).__name__}); pass the surface.npy a render wrote") from None
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise UsageError(f"{path} holds an array of shape {s.shape}; a surface is square (steps x steps)")
    return s



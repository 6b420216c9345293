"""Loss landscape on a 2-D grid around trained weights (pure computation; files and MPI live in runner.py).

Directions (as the original's visualization.py, generalised from the (L, dim, dim) block stack to any set of
weight tensors; a "layer" is a slice along the first axis: one W_k, or one conv filter):

1. d1 ~ N(0, 1) and d2 ~ N(0, 1), drawn from a generator seeded with ``seed`` (d1 first, tensor by tensor);
2. each layer of d2 is made orthogonal to the same layer of d1 (Gram-Schmidt) and scaled to unit Frobenius norm;
3. filter normalisation (Li et al. 2018): each layer of d1 and of d2 is rescaled to the Frobenius norm of the same
   layer of the trained weights;
4. both are multiplied by ``res``.

Grid: surface[i, j] = loss(theta + (j - c) d1 + (i - c) d2), c = steps // 2: rows move along d2, columns along d1.

The grid is cut into rectangular cells (:func:`plan_cells`); a cell is evaluated in one or a few batched forward
passes (:func:`evaluate_cell`), many grid points per pass: for the depth-limit ResNet with a batched matmul over
stacked weights (:func:`depth_limit_evaluator`), for any other model with ``torch.func.functional_call`` + ``vmap``
(:func:`functional_evaluator`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from shared.errors import UsageError

Directions = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
# evaluate(a, b) -> losses: a, b are 1-d tensors of G grid offsets (in units of d1, d2), the result has G losses
BatchEvaluator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _layer_norms(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def random_directions(theta: Mapping[str, torch.Tensor], seed: int = 1234, res: float = 0.05,
                      ignore_1d: bool = True) -> Directions:
    """Two seeded, per-layer orthogonalised, filter-normalised directions scaled by ``res`` (see module doc).

    Tensors with at most one axis (biases, BatchNorm) get zero directions when ``ignore_1d``."""
    if not res > 0:
        raise UsageError(f"--res must be > 0 (the grid spacing), got {res}; the original used 0.05")
    gen = torch.Generator().manual_seed(int(seed))
    d1 = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in theta.items()}
    d2 = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in theta.items()}
    out1, out2 = {}, {}
    for k, w in theta.items():
        w = w.detach().double().cpu()
        a, b = d1[k], d2[k]
        if w.dim() <= 1:
            if ignore_1d:
                out1[k], out2[k] = torch.zeros_like(a), torch.zeros_like(b)
                continue
            w, a, b = w.reshape(1, -1), a.reshape(1, -1), b.reshape(1, -1)
        n = w.shape[0]
        a2, b2 = a.reshape(n, -1), b.reshape(n, -1)
        proj = (a2 * b2).sum(1, keepdim=True) / (a2 * a2).sum(1, keepdim=True).clamp(min=1e-300)
        b2 = b2 - proj * a2
        b2 = b2 / b2.norm(dim=1, keepdim=True).clamp(min=1e-300)
        b = b2.reshape(a.shape)
        wn = _layer_norms(w)
        a = a * wn / (_layer_norms(a) + 1e-10)
        b = b * wn / (_layer_norms(b) + 1e-10)
        out1[k] = (res * a).reshape(theta[k].shape)
        out2[k] = (res * b).reshape(theta[k].shape)
    return out1, out2


def grid_offsets(steps: int) -> np.ndarray:
    """The offsets j - steps // 2 of columns (and rows) j = 0..steps-1."""
    if steps < 1:
        raise UsageError(f"--steps must be >= 1, got {steps}")
    return np.arange(steps) - steps // 2


@dataclass(frozen=True)
class Cell:
    """Rows i0..i1-1 and columns j0..j1-1 of the grid; ``index`` numbers cells in row-major order."""

    index: int
    i0: int
    i1: int
    j0: int
    j1: int

    @property
    def size(self) -> int:
        return (self.i1 - self.i0) * (self.j1 - self.j0)


def plan_cells(steps: int, cell_size: int) -> list[Cell]:
    """Cut the steps x steps grid into cells of cell_size x cell_size points (smaller at the borders)."""
    grid_offsets(steps)
    if cell_size < 1:
        raise UsageError(f"--cell-size must be >= 1, got {cell_size}")
    cells = []
    for i0 in range(0, steps, cell_size):
        for j0 in range(0, steps, cell_size):
            cells.append(Cell(len(cells), i0, min(steps, i0 + cell_size), j0, min(steps, j0 + cell_size)))
    return cells


def pending_cells(plan: list[Cell], done: set[int]) -> list[Cell]:
    """The cells of ``plan`` whose index is not in ``done``."""
    return [c for c in plan if c.index not in done]


def assign_cells(cells: list[Cell], rank: int, size: int) -> list[Cell]:
    """Round-robin share of ``cells`` for MPI rank ``rank`` of ``size`` (balanced to within one cell)."""
    return cells[rank::size]


def cell_coordinates(cell: Cell, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) offsets along d1 and d2 of the cell's points in row-major order."""
    off = torch.as_tensor(grid_offsets(steps), dtype=torch.float64)
    b, a = torch.meshgrid(off[cell.i0:cell.i1], off[cell.j0:cell.j1], indexing="ij")
    return a.reshape(-1), b.reshape(-1)


def evaluate_cell(cell: Cell, steps: int, evaluate: BatchEvaluator, batch_points: int = 64) -> np.ndarray:
    """Losses of the cell's points as a (rows, cols) array, ``batch_points`` grid points per forward pass."""
    if batch_points < 1:
        raise UsageError(f"--batch-points must be >= 1, got {batch_points}")
    a, b = cell_coordinates(cell, steps)
    out = []
    for s in range(0, a.numel(), batch_points):
        out.append(evaluate(a[s:s + batch_points], b[s:s + batch_points]).detach().double().cpu())
    return torch.cat(out).numpy().reshape(cell.i1 - cell.i0, cell.j1 - cell.j0)


def assemble(steps: int, plan: list[Cell], values: Mapping[int, np.ndarray]) -> np.ndarray:
    """The steps x steps surface from per-cell arrays; cells not in ``values`` stay NaN."""
    surface = np.full((steps, steps), np.nan)
    for c in plan:
        if c.index in values:
            v = np.asarray(values[c.index])
            if v.shape != (c.i1 - c.i0, c.j1 - c.j0):
                raise UsageError(f"cell {c.index} has shape {v.shape}, expected {(c.i1 - c.i0, c.j1 - c.j0)}; "
                                 "the checkpoint folder belongs to another grid: use a fresh --out")
            surface[c.i0:c.i1, c.j0:c.j1] = v
    return surface


def render_surface(steps: int, evaluate: BatchEvaluator, cell_size: int = 16, batch_points: int = 64) -> np.ndarray:
    """Every cell, in memory (no checkpoints): the whole surface."""
    plan = plan_cells(steps, cell_size)
    return assemble(steps, plan, {c.index: evaluate_cell(c, steps, evaluate, batch_points) for c in plan})


# ---------------------------------------------------------------------------------------------------------------
# losses per grid point


def per_point_loss(out: torch.Tensor, y: torch.Tensor, task: str, p: float = 2.0, convention: str = "code") -> torch.Tensor:
    """out: (G, B, k) outputs for G weight settings -> (G,) batch-mean losses (cross entropy or p-loss)."""
    G, B = out.shape[0], out.shape[1]
    if task == "classification":
        ce = F.cross_entropy(out.reshape(G * B, -1), y.reshape(-1).repeat(G), reduction="none")
        return ce.view(G, B).mean(dim=1)
    r = (y.reshape(1, B, -1).to(out.dtype) - out).abs().pow(p).sum(-1).mean(dim=1)
    return r / p if convention == "readme" else r


def depth_limit_evaluator(model, d1: torch.Tensor, d2: torch.Tensor, x: torch.Tensor, y: torch.Tensor, task: str,
                          p: float = 2.0, convention: str = "code", dtype: torch.dtype = torch.float32) -> BatchEvaluator:
    """Evaluate a DepthLimitResNet at theta + a d1 + b d2 for G points at once (one batched matrix product per
    layer for all G), in ``dtype`` (the original evaluated its float32 model)."""
    theta = model.W.detach().to(dtype)
    d1, d2 = d1.to(dtype), d2.to(dtype)
    x = x.to(dtype)
    model = copy.deepcopy(model).to(dtype)

    @torch.no_grad()
    def evaluate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = model.forward_on_plane(x, theta, d1, d2, a, b)
        return per_point_loss(out, y, task, p, convention)

    return evaluate


def functional_evaluator(model: torch.nn.Module, d1: Mapping[str, torch.Tensor], d2: Mapping[str, torch.Tensor],
                         x: torch.Tensor, y: torch.Tensor, task: str, p: float = 2.0,
                         convention: str = "code") -> BatchEvaluator:
    """Evaluate any module at theta + a d1 + b d2 for G points with torch.func.functional_call + vmap."""
    from torch.func import functional_call, vmap

    model = model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    names = [k for k in params if k in d1]

    def one(a, b):
        full = dict(params)
        for k in names:
            full[k] = params[k] + (a * d1[k] + b * d2[k]).to(params[k].dtype)
        return functional_call(model, (full, buffers), (x,))

    batched = vmap(one)

    @torch.no_grad()
    def evaluate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return per_point_loss(batched(a, b), y, task, p, convention)

    return evaluate


def pointwise_evaluator(model, d1: torch.Tensor, d2: torch.Tensor, x: torch.Tensor, y: torch.Tensor, task: str,
                        p: float = 2.0, convention: str = "code", dtype: torch.dtype = torch.float32) -> BatchEvaluator:
    """The one-point-at-a-time baseline: copy theta + a d1 + b d2 into the model and run a normal forward pass."""
    model = copy.deepcopy(model).to(dtype)
    theta = model.W.detach().clone()
    d1, d2 = d1.to(dtype), d2.to(dtype)
    x = x.to(dtype)

    @torch.no_grad()
    def evaluate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = []
        for ai, bi in zip(a.tolist(), b.tolist()):
            model.W.copy_(theta + ai * d1 + bi * d2)
            out.append(per_point_loss(model(x).unsqueeze(0), y, task, p, convention))
        model.W.copy_(theta)
        return torch.cat(out)

    return evaluate

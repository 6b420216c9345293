"""Automatic micro-batch splitting with gradient accumulation (a working replacement for the original's estimate).

The logical batch ``B`` (128) never changes: one optimizer step always sees ``B`` samples. When the step does not
fit in memory the batch is cut into ``k`` chunks of ``ceil(B/k)`` samples; each chunk's mean loss is scaled by
``chunk / B`` and back-propagated, so the accumulated gradient equals the full-batch gradient (without BatchNorm;
with BatchNorm the batch statistics are per chunk, as in the original).

Instead of predicting memory, :class:`AutoSplitter` *tries*: it runs real training steps (forward, backward and
``optimizer.step()``, so gradients and momentum buffers are allocated) with ``k = 1, 2, 4, ...``, catches
out-of-memory errors (``torch.OutOfMemoryError`` and the CPU allocator's "DefaultCPUAllocator: can't allocate
memory"), halves the micro-batch and retries. The probe restores the model, the optimizer and the RNG afterwards,
so it leaves no trace in training. The working micro-batch is remembered per (architecture, input shape, device,
batch size, limit) in memory and in a small JSON file written atomically. Training itself runs in the shared
Trainer (``Trainer.micro_batches`` = the chosen number of chunks); an out-of-memory error there is handled by the
runner (halve the micro-batch, continue from the newest snapshot; below the smallest one, a :class:`MemoryFailure`).

On CPU the kernel overcommits memory, so a real out-of-memory error rarely arrives as an exception. A memory
limit (``memory_limit`` bytes) makes the CPU case testable and useful: during a probe the peak memory of the step is
*measured* (glibc's ``mallinfo2`` sampled after every ATen operation, forward and backward, through a
``TorchDispatchMode``), and a step whose footprint exceeds the limit is treated exactly as an out-of-memory error.
On CUDA the limit is checked against ``torch.cuda.max_memory_allocated``; real CUDA OOMs are caught as well.
"""
from __future__ import annotations

import copy
import ctypes
import ctypes.util
import gc
import hashlib
import json
import math
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from shared.errors import UsageError
from shared.files import write_json

OOM_MESSAGES = (
    "out of memory",  # CUDA ("CUDA out of memory."), MPS, XPU
    "DefaultCPUAllocator: can't allocate memory",
    "CUDNN_STATUS_NOT_SUPPORTED",  # cuDNN's way of saying its workspace does not fit
    "CUBLAS_STATUS_ALLOC_FAILED",
)


class MemoryLimitExceeded(torch.OutOfMemoryError):
    """Raised by a probe whose measured peak memory is above the configured limit (handled like a real OOM)."""


class MemoryFailure(UsageError):
    """A network that does not fit even in the smallest micro-batch (at probing or in training): a failure of this
    memory limit and device, not of the network, so a sweep records it and tries it again when they change."""


def is_oom(exc: BaseException) -> bool:
    """True for real out-of-memory errors (CUDA and CPU allocators) and for :class:`MemoryLimitExceeded`."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MESSAGES)


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_memory(text: str | int | float | None) -> int | None:
    """'512MB', '1.5G', '2GiB', '1048576' -> bytes (binary units); None, '', '0' or 'none' -> None (no limit)."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return int(text) if text > 0 else None
    s = str(text).strip().lower()
    if s in ("", "0", "none", "off"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([a-z]*)", s)
    if not m or m.group(2) not in _UNITS:
        raise UsageError(f"cannot read memory size {text!r}; write e.g. --memory-limit 512MB or 2GB (0 = no limit)")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if value < 1:
        raise UsageError(f"memory size {text!r} is below one byte; write e.g. 512MB")
    return int(value)


def chunk_sizes(n: int, micro: int) -> list[int]:
    """Sizes of the chunks ``torch.split(batch, micro)`` produces for a batch of ``n``."""
    if micro < 1:
        raise ValueError(f"micro-batch must be >= 1, got {micro}")
    return [min(micro, n - s) for s in range(0, n, micro)]


def micro_for_chunks(batch_size: int, chunks: int) -> int:
    """The micro-batch size that cuts ``batch_size`` into ``chunks`` pieces (ceil)."""
    if chunks < 1 or chunks > batch_size:
        raise UsageError(f"--split must be between 1 and the batch size {batch_size}, got {chunks}")
    return math.ceil(batch_size / chunks)


# --------------------------------------------------------------------------------------------------------------
# One accumulated optimizer step


@dataclass
class StepResult:
    loss_sum: float  # sum over samples of the (unscaled) per-sample mean loss, i.e. mean loss * n
    correct: int  # top-1 hits
    n: int  # samples
    chunks: int  # micro-batches used


class OptimizerStepStarted(Exception):
    """Internal marker: an OOM happened inside ``optimizer.step()``, after which the step cannot be redone."""


def accumulate_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, x: torch.Tensor,
                    y: torch.Tensor, micro: int, scale_by: int | None = None) -> StepResult:
    """One optimizer step on the logical batch (x, y), cut into micro-batches of ``micro`` samples.

    Each chunk's loss (a mean over the chunk) is multiplied by ``chunk / scale_by`` before ``backward``;
    ``scale_by`` defaults to ``len(x)``, which makes the accumulated gradient that of the batch mean loss.
    """
    n = int(x.shape[0])
    denom = n if scale_by is None else int(scale_by)
    optimizer.zero_grad(set_to_none=True)
    loss_acc = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    k = 0
    for xc, yc in zip(torch.split(x, micro), torch.split(y, micro)):
        out = model(xc)
        loss = loss_fn(out, yc)
        (loss * (xc.shape[0] / denom)).backward()
        with torch.no_grad():
            loss_acc += loss.detach().double() * xc.shape[0]
            correct += (out.argmax(dim=1) == yc).sum()
        k += 1
        del out, loss
    try:
        optimizer.step()
    except Exception as e:  # noqa: BLE001 - re-raised, tagged so that callers do not retry
        if is_oom(e):
            raise OptimizerStepStarted(str(e)) from e
        raise
    return StepResult(float(loss_acc.item()), int(correct.item()), n, k)


# --------------------------------------------------------------------------------------------------------------
# Peak-memory measurement


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_libc = None


def _mallinfo2():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            fn = lib.mallinfo2
            fn.restype = _MallInfo2
            _libc = fn
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def cpu_heap_bytes() -> int:
    """Bytes currently allocated through malloc (glibc ``mallinfo2``: in-use arena chunks + mmapped chunks)."""
    fn = _mallinfo2()
    if fn is None:
        raise UsageError("measuring CPU memory needs glibc's mallinfo2 (Linux, glibc >= 2.33); "
                         "run without --memory-limit or use --split to choose the split by hand")
    m = fn()
    return int(m.uordblks + m.hblkhd)


class _PeakSampler(TorchDispatchMode):
    """Samples the malloc heap after every ATen op run on this thread; keeps the maximum."""

    def __init__(self):
        super().__init__()
        self.peak = cpu_heap_bytes()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        u = cpu_heap_bytes()
        if u > self.peak:
            self.peak = u
        self.ops += 1
        return out


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes held by parameters, their gradients, buffers and optimizer state tensors (unique storages)."""
    seen: set[int] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            key = st.data_ptr()
            if key not in seen:
                seen.add(key)
                total += st.nbytes()

    for p in model.parameters():
        add(p)
        add(p.grad)
    for b in model.buffers():
        add(b)
    if optimizer is not None:
        for s in optimizer.state.values():
            for v in s.values():
                add(v)
    return total


class PeakMemory:
    """Context manager measuring the peak memory (bytes above the level at entry) of a block on ``device``."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peak_above_start = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self.device.type == "cpu":
            self._start = cpu_heap_bytes()
            self._sampler = _PeakSampler()
            self._sampler.__enter__()
        else:
            raise UsageError(f"memory limits are supported on cpu and cuda devices, not {self.device.type}")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._sampler.__exit__(*exc)
            peak = max(self._sampler.peak, cpu_heap_bytes())
        self.peak_above_start = max(0, int(peak - self._start))


# --------------------------------------------------------------------------------------------------------------
# The cache


class SplitCache:
    """Working micro-batch sizes by key, in memory and (optionally) in a JSON file replaced atomically."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        self._mem: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _read_file(self) -> dict[str, dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # a damaged cache is ignored (and rewritten on the next put)
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            if key in self._mem:
                return dict(self._mem[key])
            entry = self._read_file().get(key)
            if isinstance(entry, dict) and isinstance(entry.get("micro_batch"), int):
                self._mem[key] = entry
                return dict(entry)
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self._mem[key] = dict(entry)
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = self._read_file()
            data[key] = dict(entry)
            write_json(self.path, data, indent=1, sort_keys=True)


def device_name(device: torch.device | str) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        idx = d.index if d.index is not None else torch.cuda.current_device()
        return f"cuda:{torch.cuda.get_device_name(idx)}:{torch.cuda.get_device_properties(idx).total_memory}"
    return d.type


def architecture_key(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> str:
    """A short hash of the module tree (layer types and sizes), the parameter dtypes and the optimizer class."""
    h = hashlib.sha1(repr(model).encode())
    h.update(",".join(str(p.dtype) for p in model.parameters()).encode())
    if optimizer is not None:
        h.update(type(optimizer).__name__.encode())
    return h.hexdigest()[:16]


def split_key(arch: str, input_shape: Sequence[int], device: torch.device | str, batch_size: int,
              memory_limit: int | None) -> str:
    shape = "x".join(str(int(s)) for s in input_shape)
    return f"{arch}|in={shape}|dev={device_name(device)}|B={int(batch_size)}|limit={memory_limit or 0}"


# --------------------------------------------------------------------------------------------------------------
# The splitter


@dataclass
class Probe:
    micro_batch: int
    ok: bool
    peak_bytes: int | None = None  # measured footprint (state + peak above start); None when not measured
    error: str | None = None


@dataclass
class SplitDecision:
    batch_size: int
    micro_batch: int
    source: str  # "probe", "cache", "forced"
    key: str = ""
    probes: list[Probe] = field(default_factory=list)

    @property
    def chunks(self) -> int:
        return math.ceil(self.batch_size / self.micro_batch)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunks"] = self.chunks
        return d


class _Snapshot:
    """Model, optimizer and RNG state, so that probing leaves no trace."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.model = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.opt = _to_cpu(copy.deepcopy(optimizer.state_dict()))
        self.rng_cpu = torch.get_rng_state()
        self.rng_cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        optimizer.zero_grad(set_to_none=True)
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.opt)  # moves state tensors back to the parameters' device
        torch.set_rng_state(self.rng_cpu)
        if self.rng_cuda is not None:
            torch.cuda.set_rng_state(self.rng_cuda, device)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _free(device: torch.device, collect: bool = True) -> None:
    if collect:  # tensors of a failed step may sit in reference cycles (frames of the traceback)
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class AutoSplitter:
    """Chooses and applies the micro-batch for a fixed logical batch.

    ``memory_limit``: bytes (None = only real OOM errors count). ``chunks``: force ``k`` micro-batches (no probing).
    ``probe_steps``: training steps per candidate. ``cache``: a :class:`SplitCache` (None = a private in-memory one).
    ``min_micro``: the smallest micro-batch tried (2 for networks with BatchNorm, which cannot train on 1 sample).
    """

    def __init__(self, batch_size: int = 128, memory_limit: int | None = None, chunks: int | None = None,
                 probe_steps: int = 1, cache: SplitCache | None = None, arch: str | None = None,
                 min_micro: int = 1):
        if batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
        if probe_steps < 1:
            raise UsageError(f"probe steps must be >= 1, got {probe_steps}")
        self.batch_size = int(batch_size)
        self.memory_limit = memory_limit
        self.forced = None if not chunks else micro_for_chunks(self.batch_size, int(chunks))
        self.probe_steps = int(probe_steps)
        self.cache = cache if cache is not None else SplitCache(None)
        self.arch = arch
        self.min_micro = max(1, min(int(min_micro), self.batch_size))
        self.decision: SplitDecision | None = None
        self.history: list[SplitDecision] = []

    # -- probing -----------------------------------------------------------------------------------------------
    def _try(self, model, optimizer, loss_fn, x, y, micro: int, device: torch.device) -> Probe:
        error = None
        peak = None
        snap = _Snapshot(model, optimizer, device)
        try:
            for _ in range(self.probe_steps):
                base_state = state_bytes(model, optimizer)
                if self.memory_limit is not None:
                    with PeakMemory(device) as pm:
                        accumulate_step(model, optimizer, loss_fn, x, y, micro, scale_by=self.batch_size)
                    peak = max(peak or 0, base_state + pm.peak_above_start)
                    if peak > self.memory_limit:
                        raise MemoryLimitExceeded(
                            f"step with micro-batch {micro} needs {peak / 2**20:.1f} MiB, above the limit "
                            f"{self.memory_limit / 2**20:.1f} MiB")
                else:
                    accumulate_step(model, optimizer, loss_fn, x, y, micro, scale_by=self.batch_size)
        except (OptimizerStepStarted, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
            if not (isinstance(e, OptimizerStepStarted) or is_oom(e)):
                snap.restore(model, optimizer, device)
                raise
            error = " ".join(str(e).split())[:300]
        # outside the except block, so the traceback (and the tensors it holds) is gone before we retry
        snap.restore(model, optimizer, device)
        _free(device, collect=error is not None)
        return Probe(micro, error is None, peak, error)

    def choose(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, x: torch.Tensor,
               y: torch.Tensor) -> SplitDecision:
        """Decide the micro-batch for batches shaped like ``x`` (a full logical batch); cached after the first call."""
        device = x.device
        if x.shape[0] != self.batch_size:
            raise ValueError(f"probe with a full logical batch of {self.batch_size}, got {x.shape[0]}")
        arch = self.arch or architecture_key(model, optimizer)
        key = split_key(arch, tuple(x.shape[1:]), device, self.batch_size, self.memory_limit)
        if self.forced is not None:
            return self._set(SplitDecision(self.batch_size, self.forced, "forced", key))
        hit = self.cache.get(key)
        if hit is not None:
            return self._set(SplitDecision(self.batch_size, int(hit["micro_batch"]), "cache", key))
        probes: list[Probe] = []
        micro = self.batch_size
        while True:
            p = self._try(model, optimizer, loss_fn, x, y, micro, device)
            probes.append(p)
            if p.ok:
                break
            if micro <= self.min_micro:
                raise MemoryFailure(
                    f"even a micro-batch of {micro} sample(s) does not fit ({p.error}); raise --memory-limit, "
                    f"use narrower variants (--width-multiplier) or a smaller --patch-size")
            micro = max(self.min_micro, math.ceil(micro / 2))
        decision = SplitDecision(self.batch_size, micro, "probe", key, probes)
        self.cache.put(key, {"micro_batch": micro, "batch_size": self.batch_size, "chunks": decision.chunks,
                             "peak_bytes": p.peak_bytes})
        return self._set(decision)

    def _set(self, d: SplitDecision) -> SplitDecision:
        self.decision = d
        self.history.append(d)
        return d

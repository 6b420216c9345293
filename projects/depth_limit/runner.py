"""The I/O edges of depth_limit: training runs, landscape renders on disk (resumable, MPI), weight and metric inputs
from MLflow runs or files, and the analysis runs. The statistics themselves are pure functions in the other modules.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from projects.depth_limit import landscape as LS
from projects.depth_limit import models as M
from projects.depth_limit import paths as P
from projects.depth_limit.curvefit import OmegaFit, fit_history
from shared.errors import UsageError, check

PROJECT = "depth_limit"
FULL_BATCH = 2 ** 31 - 1  # a batch size larger than any split: one batch per epoch (the original's full-batch GD)
IMAGE_SETS_WITH_PERCENTAGE = ("mnist", "cifar10")  # the original's data modules that split off a training percentage


# ---------------------------------------------------------------------------------------------------------------
# fit: the depth-limit ResNet


@dataclass
class FitOptions:
    """Model, loss and logging options of ``fit`` (the original's --model.* options)."""

    L: int = 10
    dim: int = 1
    alpha: float = 0.5
    gamma: float = 0.5
    activation: str = "tanh"
    augmentation: str = "skip"
    init: str = "constant"
    init_convention: str = "code"
    p_loss: float = 2.0
    loss_convention: str = "code"
    p_var: float = 2.0
    pvar_method: str = "auto"
    log_pvar: bool = True
    dynamic_lr: bool = False
    store_grad: bool = False
    omega_convention: str = "code"

    def model_options(self) -> dict:
        return {"L": self.L, "dim": self.dim, "alpha": self.alpha, "gamma": self.gamma, "activation": self.activation,
                "augmentation": self.augmentation, "init": self.init, "init_convention": self.init_convention}

    def validate(self) -> None:
        check(self.L >= 1 and self.dim >= 1, f"--L and --dim must be >= 1, got L={self.L}, dim={self.dim}")
        check(self.p_loss >= 1, f"--p-loss must be >= 1, got {self.p_loss}")
        M.check_p_var(self.p_var)
        for value, allowed, name in ((self.activation, tuple(M.ACTIVATIONS), "--activation"),
                                     (self.augmentation, M.AUGMENTATIONS, "--update-rule"),
                                     (self.init, M.INITS, "--init"),
                                     (self.init_convention, M.CONVENTIONS, "--init-convention"),
                                     (self.loss_convention, M.CONVENTIONS, "--loss-convention"),
                                     (self.omega_convention, M.CONVENTIONS, "--omega-convention"),
                                     (self.pvar_method, ("auto", "dense", "tree", "reference"), "--pvar-method")):
            check(value in allowed, f"unknown {name} {value!r}; use one of: {', '.join(allowed)}")
        M.init_scale(self.L, self.alpha, self.gamma)


def trainer_loss(task: str, p: float = 2.0, convention: str = "code"):
    """``loss_fn(model, x, y) -> (loss, output)`` for the shared Trainer."""
    loss = M.make_loss(task, p, convention)

    def fn(model, x, y):
        out = model(x)
        return loss(out, y), out

    return fn


def _train_base():
    from shared.train import Callback

    return Callback


class DepthLimitLogger(_train_base()):
    """Per optimization step: p/(p/2)/(3p/4)-variation of the weight path, train loss, Omega, lr (+ dynamic_lr),
    and for classification macro accuracy/precision/recall of the batch; at the end: the exported weights."""

    def __init__(self, opts: FitOptions, task: str, num_classes: int, lr0: float):
        self.o, self.task, self.num_classes, self.lr0 = opts, task, num_classes, lr0
        self.loss = M.make_loss(task, opts.p_loss, opts.loss_convention)
        self.beta = 1.0 - opts.alpha
        self.key_p = M.pvar_keys(opts.p_var)[0]
        self.last: dict[str, float] = {}
        self.weights_path: Path | None = None

    def _pvar(self, model) -> dict[str, float]:
        if not self.o.log_pvar and not self.o.dynamic_lr:
            return {}
        return M.pvar_metrics(model.W, self.o.p_var, self.beta, self.o.pvar_method)

    def on_train_start(self, tr) -> None:
        if tr.global_step == 0 and self.o.log_pvar:
            tr.tracker.log_metrics(self._pvar(tr.model), step=0)

    def on_step_end(self, tr, loss, output, y) -> None:
        m = {"train_loss_step": loss}
        pv = self._pvar(tr.model)
        if self.o.log_pvar:
            m.update(pv)
        if self.o.store_grad:
            m["avg_grad_norm"] = M.omega(output.detach(), y, self.loss, self.o.omega_convention)
        if self.task == "classification":
            m.update(M.classification_scores(output.detach(), y, self.num_classes))
        if self.o.dynamic_lr:
            new = M.dynamic_lr(self.lr0, pv[self.key_p], self.o.activation)
            if new is not None:
                for g in tr.optimizer.param_groups:
                    g["lr"] = new
        m["lr_step"] = tr.lr
        tr.tracker.log_metrics(m, step=tr.global_step)
        self.last = m

    def on_epoch_end(self, tr, metrics) -> None:
        if self.task == "regression" and "test_loss" in metrics:
            metrics["test_p_loss"] = evaluate_loss(tr.model, tr.data.test, self.loss, tr.device)

    def on_train_end(self, tr) -> None:
        self.weights_path = export_weights(tr.model, tr.out_dir, tr.tracker)

    def state_dict(self) -> dict:
        return {"lr0": self.lr0}

    def load_state_dict(self, state: dict) -> None:
        self.lr0 = state.get("lr0", self.lr0)


@torch.no_grad()
def evaluate_loss(model, loader, loss, device) -> float:
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        total += float(loss(model(x), y)) * len(y)
        n += len(y)
    model.train(was)
    return total / max(n, 1)


def export_weights(model, out_dir: Path | None, tracker) -> Path | None:
    """Save the list of the L trained matrices as ``weights/resnet_{L}.pth`` (the original's export format) in the
    run's own folder and as an MLflow artifact of the run (so runs never overwrite each other)."""
    from shared.files import atomic_write

    if out_dir is None:
        import tempfile

        out_dir = Path(tempfile.mkdtemp(prefix="geomlab-weights-"))
    path = Path(out_dir) / "weights" / f"resnet_{model.L}.pth"
    weights = model.export_weights()
    atomic_write(path, lambda tmp: torch.save(weights, tmp))
    tracker.log_artifact(path, "weights")
    return path


def fit_data_config(dataset: str, *, data_path: str, batch_size: int, training_data_percentage: float | None,
                    num_samples: int, c: float, seed: int, shuffle: bool, verify_checksums: bool = True,
                    download: bool = False):
    """The original's data rules: full batch by default, no shuffling, mnist/cifar10 use 20% of the training set,
    the synthetic sets their 90/10 split."""
    from shared.data import DATASETS, DataConfig

    spec = DATASETS.get(dataset)
    if training_data_percentage is None:
        training_data_percentage = 0.2 if dataset in IMAGE_SETS_WITH_PERCENTAGE else 1.0
    check(0 < training_data_percentage <= 1, f"--train-fraction must be in (0, 1], got "
          f"{training_data_percentage}")
    check(batch_size >= 0, f"--batch-size must be >= 0 (0: full batch), got {batch_size}")
    check(num_samples >= 2, f"--num-samples must be >= 2, got {num_samples}")
    if spec.task == "regression":
        check(training_data_percentage == 1.0, "--train-fraction applies to image data sets; the synthetic "
              "sets use --num-samples")
    return DataConfig(dataset=dataset, data_path=data_path, batch_size=batch_size or FULL_BATCH,
                      train_fraction=training_data_percentage, split_seed=seed, num_samples=num_samples,
                      synthetic_c=c, shuffle=shuffle, verify_checksums=verify_checksums, download=download)


@dataclass
class FitOutcome:
    run_id: str | None
    final: dict
    last_step: dict
    weights_path: Path | None
    out_dir: Path
    model: torch.nn.Module = field(repr=False)


def run_fit(opts: FitOptions, data_cfg, *, lr: float, epochs: int, seed: int, eval_every: int = 0,
            device: str = "auto", out_dir: str | None = None, resume_from: str | None = None,
            run_name: str | None = None, progress: bool = True, precision: str = "fp32",
            channels_last: bool = False, fresh: bool = False, resume_override: str | None = None) -> FitOutcome:
    """Train the depth-limit ResNet with plain SGD (no momentum, no weight decay), one MLflow run."""
    from shared.experiment import run_training
    from shared.train import TrainConfig

    opts.validate()
    check(epochs >= 1, f"--epochs must be >= 1, got {epochs}")
    check(eval_every >= 0, f"--eval-every must be >= 0 (0: only after the last epoch), got {eval_every}")
    from shared.data import load_data

    data = load_data(data_cfg, seed=seed)
    tcfg = TrainConfig(epochs=epochs, optimizer="sgd", lr=lr, momentum=0.0, weight_decay=0.0, schedule="none",
                       seed=seed, eval_every=eval_every or epochs, device=device, precision=precision,
                       channels_last=channels_last)
    logger = DepthLimitLogger(opts, data.task, data.num_classes, lr)
    params = {"model.p_loss": opts.p_loss, "model.loss_convention": opts.loss_convention, "model.p_var": opts.p_var,
              "model.dynamic_lr": opts.dynamic_lr, "model.store_grad": opts.store_grad,
              "model.omega_convention": opts.omega_convention, "model.pvar_method": opts.pvar_method,
              "model.beta": 1.0 - opts.alpha, "model.delta": float(opts.L) ** (-opts.alpha),
              "data.full_batch": data_cfg.batch_size == FULL_BATCH}
    out = run_training(project=PROJECT, entry_point="fit", arch="depth_limit_resnet", data_cfg=data_cfg,
                       train_cfg=tcfg, model_options=opts.model_options(), out_dir=out_dir, resume_from=resume_from,
                       fresh=fresh, resume_override=resume_override,
                       callbacks=[logger], loss_fn=trainer_loss(data.task, opts.p_loss, opts.loss_convention),
                       params=params, run_name=run_name, data=data, progress=progress,
                       tags={"task": data.task},
                       snapshot_meta={"depth_limit": {"p_loss": opts.p_loss, "loss_convention": opts.loss_convention,
                                                      "p_var": opts.p_var}})
    return FitOutcome(out.run_id, out.result.final, logger.last, logger.weights_path, out.out_dir, out.trainer.model)


# ---------------------------------------------------------------------------------------------------------------
# resnet_cifar10


class CifarStepLogger(_train_base()):
    """Omega ('avg_grad_norm', the batch-mean gradient quantity of the original) and the loss at every step; after
    training the test set's top-1 / per-sample top-2 / per-class accuracy."""

    def __init__(self, class_names: list[str], num_classes: int):
        self.class_names, self.num_classes = class_names, num_classes
        self.loss = M.make_loss("classification")
        self.test: dict[str, float] = {}

    def on_step_end(self, tr, loss, output, y) -> None:
        tr.tracker.log_metrics({"avg_grad_norm": M.omega(output.detach(), y, self.loss), "train_loss_step": loss},
                               step=tr.global_step)

    @torch.no_grad()
    def on_train_end(self, tr) -> None:
        model = tr.model
        model.eval()
        logits, ys = [], []
        for x, y in tr.data.test:
            logits.append(model(x.to(tr.device)).cpu())
            ys.append(y)
        lg, yy = torch.cat(logits), torch.cat(ys)
        res = {"test_top1": M.topk_accuracy(lg, yy, 1), "test_top2": M.topk_accuracy(lg, yy, 2)}
        pred = lg.argmax(1)
        for c in range(self.num_classes):
            mask = yy == c
            if mask.any():
                name = re.sub(r"[^0-9A-Za-z_.-]", "_", self.class_names[c] if c < len(self.class_names) else str(c))
                res[f"test_acc_class_{name}"] = float((pred[mask] == c).double().mean())
        tr.tracker.log_metrics(res, step=tr.global_step)
        self.test = res


def cifar_data_config(dataset: str, *, data_path: str, batch_size: int, seed: int, train_fraction: float,
                      verify_checksums: bool = True, download: bool = False, channels: int = 3):
    """ToTensor, RandomCrop(32, padding 4) (no flip) and Normalize(0.5, 0.5) on training batches only."""
    from shared.data import DataConfig

    return DataConfig(dataset=dataset, data_path=data_path, batch_size=batch_size, augmentation=True, flip=False,
                      crop_padding=4, normalize="channel", mean=(0.5,) * channels, std=(0.5,) * channels,
                      shuffle=True, split_seed=seed, train_fraction=train_fraction,
                      verify_checksums=verify_checksums, download=download)


def run_resnet_cifar10(depth: int, *, dataset: str = "cifar10", data_path: str = "./data", epochs: int = 16,
                       batch_size: int = 128, alpha: float = 0.75, lr: float | None = None, seed: int = 1231,
                       block_init: str = "default", train_fraction: float = 1.0, verify_checksums: bool = True,
                       device: str = "auto", out_dir: str | None = None, run_name: str | None = None,
                       resume_from: str | None = None, progress: bool = True, data_options: dict | None = None,
                       precision: str = "fp32", channels_last: bool = False, fresh: bool = False,
                       resume_override: str | None = None):
    """``data_options``: further DataConfig fields (split, noise, pixel_shuffle, ...; the original had none)."""
    from dataclasses import replace

    from shared.data import DATASETS, load_data
    from shared.experiment import run_training
    from shared.train import TrainConfig

    M.cifar_resnet(depth)  # validates the depth before any data is read
    check(batch_size >= 1, f"--batch-size must be >= 1, got {batch_size}")
    spec = DATASETS.get(dataset)
    check(spec.task == "classification", f"resnet-cifar10 trains image classifiers; {dataset} is a regression set")
    channels = len(spec.mean)
    dcfg = cifar_data_config(dataset, data_path=data_path, batch_size=batch_size, seed=seed,
                             train_fraction=train_fraction, verify_checksums=verify_checksums, channels=channels)
    dcfg = replace(dcfg, **(data_options or {}))
    dcfg.validate()
    data = load_data(dcfg, seed=seed)
    eta = M.cifar_lr(depth, alpha) if lr is None else lr
    tcfg = TrainConfig(epochs=epochs, optimizer="sgd", lr=eta, momentum=0.0, weight_decay=0.0, schedule="none",
                       seed=seed, eval_every=max(1, epochs), device=device, precision=precision,
                       channels_last=channels_last)
    logger = CifarStepLogger(data.class_names, data.num_classes)
    out = run_training(project=PROJECT, entry_point="resnet_cifar10", arch=f"resnet{depth}_scaled", data_cfg=dcfg,
                       train_cfg=tcfg, model_options={"alpha": alpha, "block_init": block_init}, out_dir=out_dir,
                       resume_from=resume_from, fresh=fresh, resume_override=resume_override,
                       callbacks=[logger], params={"model.lr_rule": "L^(alpha-beta-0.05)",
                                                                             "model.depth": depth},
                       run_name=run_name, data=data, progress=progress)
    return out, logger.test, eta


# ---------------------------------------------------------------------------------------------------------------
# inputs: snapshots, weights and metric histories from MLflow runs or files

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def _looks_like_run(ref: str) -> bool:
    return bool(_RUN_ID.match(ref)) or (ref.startswith("runs:/") and ref[len("runs:/"):].strip("/").count("/") == 0)


def resolve_snapshot(source: str) -> str:
    """A snapshot path/URI as given, or the last snapshot of a run given as ``<run id>`` or ``runs:/<run id>``."""
    from shared.tracking import list_run_artifacts, parse_run_ref

    if Path(source).exists() or not _looks_like_run(source):
        return source
    run_id = parse_run_ref(source)
    snaps = [s for s in list_run_artifacts(run_id, "snapshots") if s.endswith(".pt")]
    if not snaps:
        raise UsageError(f"run {run_id} has no snapshots/ artifacts; pass a snapshot file or the run of a fit")
    return f"runs:/{run_id}/{snaps[-1]}"


def _stack_from_object(obj, where: str) -> np.ndarray:
    if isinstance(obj, dict):
        sd = obj.get("model_state_dict", obj)
        if isinstance(sd, dict) and "W" in sd:
            return P.as_stack(sd["W"])
        raise UsageError(f"{where} is a dict without depth-limit weights (no 'W'); pass an exported "
                         "weights/resnet_L.pth file, a fit snapshot or a fit run")
    if isinstance(obj, (list, tuple)) or torch.is_tensor(obj) or isinstance(obj, np.ndarray):
        return P.as_stack(obj)
    raise UsageError(f"{where} holds a {type(obj).__name__}; expected a list of L weight matrices")


def load_weight_file(path: Path) -> np.ndarray:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # corrupt file, not a torch file
        raise UsageError(f"{path} is not a readable torch file ({type(e).__name__}); pass an exported weights file") from None
    return _stack_from_object(obj, str(path))


def load_weight_sources(sources: list[str], ext: str = "pth") -> list[tuple[str, np.ndarray, str | None]]:
    """(label, stack, source_run_id) for every weight stack named by ``sources``: MLflow runs (their
    ``weights/resnet_*.pth``), artifact URIs, exported files, or folders of ``resnet_*.<ext>`` files (the original's
    layout: one folder per repetition, one file per L)."""
    from shared.tracking import list_run_artifacts, parse_run_ref, resolve_input

    expanded: list[str] = []
    for src in sources:  # an MLproject passes all sources as one space-separated value
        expanded += [src] if Path(src).expanduser().exists() else src.split()
    if not expanded:
        raise UsageError("no inputs given; pass MLflow run ids, runs:/ URIs, weight files or folders of them")
    out = []
    for src in expanded:
        p = Path(src).expanduser()
        if p.is_dir():
            files = sorted(p.glob(f"resnet_*.{ext}"), key=lambda f: _first_int(f.stem))
            if not files:
                raise UsageError(f"folder {p} holds no resnet_<L>.{ext} files; pass --ext or the files themselves")
            out += [(f"{p.name}/{f.stem}", load_weight_file(f), None) for f in files]
        elif p.is_file():
            out.append((p.stem, load_weight_file(p), None))
        elif _looks_like_run(src):
            run_id = parse_run_ref(src)
            arts = [a for a in list_run_artifacts(run_id, "weights") if a.endswith(f".{ext}")]
            if not arts:
                raise UsageError(f"run {run_id} has no weights/*.{ext} artifacts; pass the run of a depth-limit fit")
            for a in arts:
                local, _ = resolve_input(f"runs:/{run_id}/{a}", "weights")
                out.append((f"{run_id[:8]}/{Path(a).stem}", load_weight_file(local), run_id))
        else:
            local, run_id = resolve_input(src, "weights")
            out.append((Path(src).stem, load_weight_file(local), run_id))
    return out


def _first_int(text: str) -> int:
    m = re.search(r"\d+", text)
    return int(m.group()) if m else 0


def metric_history(run: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of an MLflow metric, ordered by step."""
    from mlflow.tracking import MlflowClient

    from shared.tracking import configure_tracking, parse_run_ref

    configure_tracking()
    run_id = parse_run_ref(run)
    client = MlflowClient()
    try:
        run_obj = client.get_run(run_id)
    except Exception:
        raise UsageError(f"MLflow run {run_id} not found; check the run id (mlflow ui lists them)") from None
    hist = client.get_metric_history(run_id, key)
    if not hist:
        keys = ", ".join(sorted(run_obj.data.metrics)) or "(none)"
        raise UsageError(f"run {run_id} has no metric {key!r} (it has: {keys}); train with --store-grad or pass --tag")
    hist = sorted(hist, key=lambda m: (m.step, m.timestamp))
    return np.array([m.step for m in hist]), np.array([m.value for m in hist], dtype=np.float64)


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
    from shared.data import DataConfig, load_data
    from shared.experiment import load_model_from

    snap_ref = resolve_snapshot(source)
    model, snap, run_id = load_model_from(snap_ref, project=PROJECT)
    dc = dict(snap.get("data_config") or {})
    if not dc and dataset is None:
        raise UsageError("the snapshot does not say which data it was trained on; pass --dataset")
    from dataclasses import fields

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
    return model, x, y, data.task, snap, run_id, snap_ref


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


def done_cells(cells_dir: Path) -> set[int]:
    return {int(f.stem.split("_")[1]) for f in cells_dir.glob("cell_*.npy")}


def write_cell(cells_dir: Path, index: int, values: np.ndarray) -> Path:
    from shared.files import atomic_write

    return atomic_write(_cell_path(cells_dir, index), lambda tmp: np.save(open(tmp, "wb"), values))


def render_cells(evaluate: LS.BatchEvaluator, pending: list[LS.Cell], cells_dir: Path, steps: int,
                 batch_points: int, rank: int = 0, size: int = 1, echo: Callable[[str], None] = print) -> int:
    """Evaluate this rank's round-robin share of ``pending`` (the same list on every rank), writing each cell as it
    finishes; returns the number of cells this rank evaluated."""
    todo = LS.assign_cells(pending, rank, size)
    t0 = time.perf_counter()
    for k, cell in enumerate(todo):
        write_cell(cells_dir, cell.index, LS.evaluate_cell(cell, steps, evaluate, batch_points))
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


def render_landscape(source: str, out_dir: str, settings: RenderSettings, *, dataset: str | None = None,
                     data_path: str | None = None, fresh: bool = False, plot: bool = True,
                     run_name: str | None = None, echo: Callable[[str], None] = print) -> dict:
    """Render (or finish rendering) a surface into ``out_dir``; MPI ranks share the cells; rank 0 assembles,
    plots and logs the analysis run. Returns {'surface': path, 'run_id': ...} on rank 0."""
    from shared.files import ensure_writable_dir, write_json
    from shared.mpi import world
    from shared.tracking import Tracker

    settings.validate()
    comm = world()
    rank, size = comm.Get_rank(), comm.Get_size()
    out = Path(out_dir)
    cells_dir = out / "cells"
    model, x, y, task, snap, run_id, snap_ref = landscape_inputs(source, dataset, data_path, settings)
    spec_opts = (snap.get("model_spec") or {}).get("options", {})
    fp = _fingerprint(snap, settings, dataset or (snap.get("data_config") or {}).get("dataset", "?"))
    meta_path = out / "render.json"
    if rank == 0:
        ensure_writable_dir(cells_dir)
        if meta_path.exists() and not fresh:
            old = json.loads(meta_path.read_text())
            if old.get("fingerprint") != fp:
                diff = [k for k in fp if old.get("fingerprint", {}).get(k) != fp[k]]
                raise UsageError(f"{out} holds a render with other settings ({', '.join(diff)}); use another --out "
                                 "or --fresh to start over")
        if fresh:
            for f in cells_dir.glob("cell_*.npy"):
                f.unlink()
        write_json(meta_path, {"fingerprint": fp, "source": source, "snapshot": snap_ref,
                               "source_run_id": run_id})
    comm.Barrier()
    plan = LS.plan_cells(settings.steps, settings.cell_size)
    meta = snap.get("depth_limit") or {}
    evaluate = make_evaluator(model, x, y, task, settings, float(meta.get("p_loss", 2.0)),
                              meta.get("loss_convention", "code"))
    # rank 0 lists the finished cells once and every rank gets the same list (ranks write cells while others list)
    pending = comm.bcast(LS.pending_cells(plan, done_cells(cells_dir)) if rank == 0 else None, root=0)
    if rank == 0:
        echo(f"landscape: {settings.steps}x{settings.steps} points on {len(y)} samples, {len(plan)} cells "
             f"({len(plan) - len(pending)} done), {size} rank(s)")
    n_done = render_cells(evaluate, pending, cells_dir, settings.steps, settings.batch_points, rank, size, echo)
    comm.Barrier()
    if rank != 0:
        return {"cells": n_done}
    surface = LS.assemble(settings.steps, plan, load_cells(cells_dir, plan))
    if np.isnan(surface).any():
        raise UsageError(f"{int(np.isnan(surface).sum())} grid points are missing in {cells_dir}; re-run the same "
                         "command to finish them")
    from shared.files import atomic_write

    surf_path = atomic_write(out / "surface.npy", lambda tmp: np.save(open(tmp, "wb"), surface))
    result = {"surface": str(surf_path), "min": float(surface.min()), "max": float(surface.max()),
              "centre": float(surface[settings.steps // 2, settings.steps // 2])}
    tracker = Tracker()
    params = {f"landscape.{k}": v for k, v in asdict(settings).items()}
    params.update({"landscape.source": source, "landscape.snapshot": snap_ref,
                   **{f"model.{k}": v for k, v in spec_opts.items()}})
    with tracker.start(PROJECT, "landscape", run_name=run_name, params=params,
                       tags={"source_run_id": run_id} if run_id else {}) as t:
        t.log_artifact(surf_path, "landscape")
        t.log_metrics({"landscape_min": result["min"], "landscape_max": result["max"],
                       "landscape_centre": result["centre"]})
        if plot:
            from projects.depth_limit.plots import plot_landscape

            for f in plot_landscape(surface, settings.res, out / "landscape"):
                t.log_artifact(f, "figures")
        result["run_id"] = t.run_id
    return result


def load_surface(source: str) -> np.ndarray:
    from shared.tracking import resolve_input

    path, _ = resolve_input(source, "surface")
    try:
        s = np.load(path)
    except Exception as e:
        raise UsageError(f"{path} is not a .npy surface ({type(e).__name__}); pass the surface.npy a render wrote") from None
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise UsageError(f"{path} holds an array of shape {s.shape}; a surface is square (steps x steps)")
    return s


# ---------------------------------------------------------------------------------------------------------------
# curve fit


def curve_fit_run(*, run: str | None, event_path: str | None, tag: str, filter_period: int, window_size: int,
                  scaling_x: float, infer_shift: bool, out_dir: str, run_name: str | None = None,
                  plot: bool = True) -> tuple[OmegaFit, dict]:
    from projects.depth_limit.tfevents import read_scalar_series
    from shared.files import ensure_writable_dir, write_json
    from shared.tracking import Tracker, parse_run_ref

    if (run is None) == (event_path is None):
        raise UsageError("pass exactly one input: --run <MLflow run id> or --event-path <TensorBoard event file>")
    if run is not None:
        steps, values = metric_history(run, tag)
        source_run = parse_run_ref(run)
    else:
        steps, values = read_scalar_series(event_path, tag)
        source_run = None
    # the original indexes the history t = 1..n (MLflow steps of a fit are 1..n too)
    fit = fit_history(values, filter_period=filter_period, window_size=window_size, scaling_x=scaling_x,
                      infer_shift=infer_shift)
    out = ensure_writable_dir(out_dir)
    res = {"input": run or event_path, "tag": tag, "n_values": int(values.size), **fit.as_dict(),
           "options": {"filter_period": filter_period, "window_size": window_size, "scaling_x": scaling_x,
                       "infer_shift": infer_shift}}
    json_path = write_json(out / "curve_fit.json", res)
    tracker = Tracker()
    params = {"curve_fit.input": run or event_path, "curve_fit.tag": tag, "curve_fit.filter_period": filter_period,
              "curve_fit.window_size": window_size, "curve_fit.scaling_x": scaling_x,
              "curve_fit.infer_shift": infer_shift}
    with tracker.start(PROJECT, "curve_fit", run_name=run_name, params=params,
                       tags={"source_run_id": source_run} if source_run else {}) as t:
        t.log_metrics({**{f"fit_{k}": v for k, v in fit.params.items()},
                       **{f"fit_{k}_sd": v for k, v in fit.sd.items()},
                       **{f"fit_{k}_std_error": v for k, v in fit.std_error.items()}, "fit_points": fit.n_points})
        t.log_artifact(json_path, "curve_fit")
        if plot:
            from projects.depth_limit.plots import plot_curve_fit

            fig_path = plot_curve_fit(fit, tag, out / "avg_grad_norm.png")
            t.log_artifact(fig_path, "figures")
            res["figure"] = str(fig_path)
        res["run_id"] = t.run_id
    return fit, res


# ---------------------------------------------------------------------------------------------------------------
# paths


def paths_run(kind: str, sources: list[str], *, beta: float, p: float, pvar_only: bool, ci: bool, z: float,
              entries: str | None, ext: str, out_dir: str, run_name: str | None = None,
              echo: Callable[[str], None] = print) -> dict:
    """``norm`` (curves of |L^beta W_k|, or with pvar_only the p-variation table) or ``weights`` (chosen entries)."""
    from projects.depth_limit import plots
    from shared.files import ensure_writable_dir, write_json
    from shared.tracking import Tracker

    if kind == "norm" and pvar_only:
        from projects.depth_limit.pvar import check_p

        check_p(p)
    loaded = load_weight_sources(sources, ext)
    groups = P.group_by_depth([(label, w) for label, w, _ in loaded])
    run_ids = sorted({r for _, _, r in loaded if r})
    out = ensure_writable_dir(out_dir)
    result: dict = {"inputs": sources, "depths": list(groups), "runs_per_depth": {L: len(v) for L, v in groups.items()},
                    "beta": beta}
    figures: list[Path] = []
    text = None
    if kind == "norm" and pvar_only:
        table = P.pvar_table(groups, p, beta)
        text = P.format_pvar_table(table, p)
        echo(text)
        result.update(p=p, pvar={str(L): v for L, v in table.items()})
    elif kind == "norm":
        curves = P.norm_curves(groups, beta, z)
        figures.append(plots.plot_norm_curves(curves, beta, ci, out / f"path_norm_beta={beta:g}.png"))
        result["curves"] = {str(c.L): {"x": c.x.tolist(), "mean": c.mean.tolist(), "half_width": c.half_width.tolist(),
                                       "runs": c.runs} for c in curves}
    else:
        ent = P.parse_entries(entries)
        curves = P.entry_curves(groups, ent, beta)
        for (i, j), lines in curves.items():
            figures.append(plots.plot_entry_curves(lines, (i, j), beta, out / f"path_weights_{i}_{j}.png"))
        result["entries"] = [list(e) for e in ent]
    json_path = write_json(out / f"paths_{kind}.json", result)
    tags = {"source_run_id": run_ids[0]} if len(run_ids) == 1 else ({"source_run_ids": ",".join(run_ids)} if run_ids else {})
    params = {"paths.kind": kind, "paths.inputs": " ".join(sources)[:5000], "paths.beta": beta, "paths.p": p,
              "paths.pvar_only": pvar_only, "paths.ci": ci, "paths.entries": entries or "default"}
    with Tracker().start(PROJECT, "paths", run_name=run_name, params=params, tags=tags) as t:
        t.log_artifact(json_path, "paths")
        for f in figures:
            t.log_artifact(f, "figures")
        if text:
            t.log_text(text, "paths/pvar_table.txt")
        result["run_id"] = t.run_id
    result["figures"] = [str(f) for f in figures]
    return result

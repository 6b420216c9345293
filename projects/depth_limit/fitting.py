"""depth_limit's training runs: the depth-limit ResNet (``fit``, p-variation logged every step) and the scaled
ResNets of ``resnet-cifar10``, on the shared Trainer. The statistics are pure functions in models.py / pvar.py."""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from projects.depth_limit import models as M
from shared.data import DATASETS, DataConfig, load_data
from shared.errors import check
from shared.experiment import run_training
from shared.files import atomic_write
from shared.metrics import topk_accuracy
from shared.train import Callback, TrainConfig

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



class DepthLimitLogger(Callback):
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
    if out_dir is None:
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
    opts.validate()
    check(epochs >= 1, f"--epochs must be >= 1, got {epochs}")
    check(eval_every >= 0, f"--eval-every must be >= 0 (0: only after the last epoch), got {eval_every}")
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


class CifarStepLogger(Callback):
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
        res = {"test_top1": topk_accuracy(lg, yy, 1), "test_top2": topk_accuracy(lg, yy, 2)}
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



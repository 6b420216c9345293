"""The edges of cone_geometry: training runs, distillation, nesting analyses and plots as MLflow runs.

Everything that reads files, talks to MLflow or draws lives here; the statistics are in nesting.py / aggregate.py.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from projects.cone_geometry import aggregate, nesting, plots, student_kernel
from projects.cone_geometry.distill import DistillLoss, check_kd
from projects.cone_geometry.models import (ConeNet, build, check_init, convert_original_state_dict, is_student,
                                           student_of, teacher_name)
from shared import interrupts
from shared.data import DataConfig, load_data
from shared.errors import UsageError, check
from shared.experiment import (default_out_dir, model_for, model_from_snapshot, read_snapshot, resolve_snapshot, run_ref,
                               run_snapshots, run_training)
from shared.files import SNAPSHOT_FORMAT, ensure_writable_dir, load_weights, write_json
from shared.plotting import save_figure
from shared.progress import say
from shared.tracking import Tracker, list_run_artifacts, load_json_input, parse_run_ref
from shared.train import Callback, KillPlateaus, TrainConfig, autocast, seed_everything, to_memory_format

PROJECT = "cone_geometry"

# the original data_loaders.py: MNIST x - 0.5; CIFAR-10 per-channel mean / std of 0-255 values
ORIGINAL_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.5,), (1.0,)),
    "cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
}
# input (channels, size) of original-code checkpoints, which do not record it
ORIGINAL_INPUTS = {"mnist": (1, 28), "fashion_mnist": (1, 28), "kmnist": (1, 28), "digits": (1, 28),
                   "cifar10": (3, 32), "cifar100": (3, 32)}
OPTIMIZERS = ("sgd", "adam")


# --------------------------------------------------------------------------------------------------------------
# Configurations


def make_data_config(dataset: str = "cifar10", data_path: str = "./data", batch_size: int = 100,
                     noisy: float = 0.0, noise_seed: int = 12345, augmentation: bool | None = None,
                     verify_checksums: bool = True, download: bool = False, **more) -> DataConfig:
    """The original's data pipeline: its normalizations for MNIST / CIFAR-10 (dataset statistics otherwise),
    random crop + flip on CIFAR-10 training batches (``augmentation=None``: on for cifar10 only). ``more``: other
    DataConfig fields (split, pixel_shuffle, subsample_classes, ...), default off as in the original."""
    mean, std = ORIGINAL_NORMALIZATION.get(dataset, (None, None))
    cfg = DataConfig(dataset=dataset, data_path=data_path, batch_size=batch_size, noise=noisy, noise_seed=noise_seed,
                     augmentation=(dataset == "cifar10") if augmentation is None else augmentation,
                     normalize="channel", mean=mean, std=std, verify_checksums=verify_checksums, download=download,
                     **more)
    check(0.0 <= noisy <= 1.0, f"--noise is a fraction in [0, 1] (0.2 = 20% corrupted labels), got {noisy}")
    cfg.validate()
    return cfg


def make_train_config(epochs: int = 75, optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.9,
                      weight_decay: float = 5e-4, lr_step: int = 20, lr_decay: float = 0.1, seed: int = 0,
                      snapshot_every: int = 0, device: str = "auto") -> TrainConfig:
    """SGD(lr, momentum, weight decay) with StepLR every ``lr_step`` epochs, or Adam(lr) without weight decay and
    schedule (as the original)."""
    check(optimizer in OPTIMIZERS, f"unknown --optimizer {optimizer!r}; use sgd or adam")
    check(epochs >= 1, f"--epochs must be >= 1, got {epochs}")
    check(lr_step >= 0, f"--lr-step must be >= 0 (epochs; 0 = constant), got {lr_step}")
    check(snapshot_every >= 0, f"--snapshot-every must be >= 0, got {snapshot_every}")
    if optimizer == "adam":
        cfg = TrainConfig(epochs=epochs, optimizer="adam", lr=lr, momentum=0.0, weight_decay=0.0, schedule="none",
                          seed=seed, snapshot_every=snapshot_every, device=device)
    else:
        cfg = TrainConfig(epochs=epochs, optimizer="sgd", lr=lr, momentum=momentum, weight_decay=weight_decay,
                          schedule="step", lr_step=lr_step, lr_decay=lr_decay, seed=seed,
                          snapshot_every=snapshot_every, device=device)
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------------------------------------------
# Training from scratch


def train_runs(arch: str, data_cfg: DataConfig, train_cfg: TrainConfig, *, init: str = "x_gaussian",
               runs: int = 1, start_run: int = 0, kill_plateaus: bool = False, out_dir: str | None = None,
               resume_from: str | None = None, run_name: str | None = None, progress: bool = True,
               fresh: bool = False, resume_override: str | None = None) -> list[Any]:
    """Independent runs ``start_run .. runs-1`` (one MLflow run each, seed = seed + run, tag ``cone.run``)."""
    teacher_name(arch)
    check_init(init)
    check(runs >= 1 and 0 <= start_run < runs, f"need 0 <= --start-run < --runs, got --start-run {start_run} "
          f"and --runs {runs}")
    check(not resume_from or runs - start_run == 1, "--resume-from continues one run: pass --start-run R --runs R+1")
    outcomes = []
    for r in range(start_run, runs):
        cfg = replace(train_cfg, seed=train_cfg.seed + r)
        callbacks = [KillPlateaus("loss-ratio")] if kill_plateaus else []
        out = run_training(
            project=PROJECT, entry_point="train", arch=arch, data_cfg=data_cfg, train_cfg=cfg,
            model_options={"init": init}, out_dir=str(Path(out_dir) / f"run_{r}") if out_dir else None,
            resume_from=resume_from, fresh=fresh, resume_override=resume_override, callbacks=callbacks,
            progress=progress,
            params={"init": init, "cone.run": r, "kill_plateaus": kill_plateaus, "noisy": data_cfg.noise},
            tags={"cone.run": r, "init": init, **student_kernel.run_tags(arch, cfg.device)}, run_name=run_name or f"{arch}-{data_cfg.dataset}-run{r}",
            snapshot_meta={"cone_run": r, "init": init})
        final = out.result.final
        say(f"{arch} run {r}: {out.result.epochs_done} epochs, "
            + ", ".join(f"{k}={v:.4f}" for k, v in final.items() if k in ("train_loss", "test_loss", "test_acc"))
            + ("" if out.result.converged else f" (stopped: {out.result.stop_reason})") + f"; MLflow run {out.run_id}")
        outcomes.append(out)
    return outcomes


# --------------------------------------------------------------------------------------------------------------
# Snapshots of either code base


@dataclass
class LoadedSnapshot:
    source: str
    path: Path
    run_id: str | None
    snap: dict
    geomlab: bool
    epoch: str  # completed epochs ('' when unknown)
    run: str  # the cone.run index ('' when unknown)
    run_tags: dict = field(default_factory=dict)


def _run_tags(run_id: str | None) -> dict:
    if not run_id:
        return {}
    from mlflow.tracking import MlflowClient

    try:
        return dict(MlflowClient().get_run(run_id).data.tags)
    except Exception:
        return {}


def load_source(source: str, what: str) -> LoadedSnapshot:
    uri = resolve_snapshot(source, what)
    snap, run_id = read_snapshot(uri, what)
    path = snap["path"]
    geomlab = snap.get("format") == SNAPSHOT_FORMAT
    stem = Path(str(path)).stem
    if geomlab:
        epoch = str(snap.get("epoch", ""))
        run = str(snap.get("cone_run", ""))
    else:  # original code: <arch>_<e>_<init>.tar holds 'epoch' = e (0-based); <arch>_<E>_<init>.pt is named by E
        tokens = stem.split("_")
        if "epoch" in snap:
            epoch = str(int(snap["epoch"]) + 1)
        else:
            epoch = tokens[1] if len(tokens) > 1 and tokens[1].isdigit() else ""
        parent = Path(str(path)).parent.name
        run = parent.split("_", 1)[1] if parent.startswith("run_") else ""
    tags = _run_tags(run_id)
    if not run and tags.get("cone.run"):
        run = tags["cone.run"]
    return LoadedSnapshot(uri, Path(path), run_id, snap, geomlab, epoch, run, tags)


def _original_model(arch: str, dataset: str, snap: dict, init: str = "x_gaussian") -> ConeNet:
    check(dataset in ORIGINAL_INPUTS, f"checkpoints of the original code need --dataset to know the input size; "
          f"use one of: {', '.join(ORIGINAL_INPUTS)}")
    channels, size = ORIGINAL_INPUTS[dataset]
    sd = snap["model_state_dict"]
    last = [k for k in sd if k.endswith("weight") and "classifier" in k]
    num_classes = int(sd[last[-1]].shape[0]) if last else 10
    return build(arch, num_classes, channels, size, init=init)


def original_loader(dataset: str | None) -> Callable[[dict, str, Any], torch.nn.Module]:
    """The hook of :func:`shared.experiment.model_from_snapshot` for checkpoints of the original code: the network
    for ``data`` (or the dataset's input size), with the original's parameter names converted."""
    def load(snap: dict, arch: str, data: Any) -> torch.nn.Module:
        model = model_for(arch, data, PROJECT) if data is not None else _original_model(arch, dataset or "cifar10", snap)
        converted = dict(snap, model_state_dict=convert_original_state_dict(
            {k.replace("module.", "", 1) if k.startswith("module.") else k: v
             for k, v in snap["model_state_dict"].items()}, arch))
        return load_weights(model, converted)
    return load


# --------------------------------------------------------------------------------------------------------------
# Distillation


def teacher_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[float, float]:
    """Student-teacher agreement of one set of outputs (pure): the fraction of inputs whose top-1 classes agree,
    and the mean over inputs of KL(softmax(t) || softmax(s)) at T = 1, in nats (float64)."""
    s = student_logits.detach().to(torch.float64)
    t = teacher_logits.detach().to(torch.float64)
    check(s.shape == t.shape and s.ndim == 2 and len(s) > 0, "teacher_agreement needs (N, K) logits of equal shape")
    agree = float((s.argmax(1) == t.argmax(1)).to(torch.float64).mean())
    log_q, log_p = torch.log_softmax(t, 1), torch.log_softmax(s, 1)
    kl = float((log_q.exp() * (log_q - log_p)).sum(1).mean())
    return agree, kl


class TeacherAgreement(Callback):
    """Logs the student's agreement with its teacher on the test split (the validation split when there is no test
    split): ``<split>_teacher_agreement`` (top-1) and ``<split>_teacher_kl`` (KL(teacher || student) at T = 1, nats)
    at step 0 (the student at initialization, when training starts from it) and at the end of distillation (step =
    the epochs done). The teacher's and the student's outputs are those of eval mode, under the run's precision."""

    def __init__(self, teacher: torch.nn.Module):
        self.teacher = teacher

    def measure(self, trainer: Any) -> dict[str, float]:
        data, cfg = trainer.data, trainer.cfg
        split, loader = ("test", data.test) if data.test is not None else ("val", data.val)
        if loader is None:
            return {}
        model, dev = trainer.model, trainer.device
        was_training = model.training
        model.eval()
        self.teacher.to(dev).eval()
        outs_s, outs_t = [], []
        with torch.no_grad():
            for x, _ in loader:
                x = to_memory_format(x.to(dev, non_blocking=True), cfg.channels_last)
                with autocast(dev, cfg.precision):
                    outs_s.append(model(x).float().cpu())
                    outs_t.append(self.teacher(x).float().cpu())
        model.train(was_training)
        agree, kl = teacher_agreement(torch.cat(outs_s), torch.cat(outs_t))
        return {f"{split}_teacher_agreement": agree, f"{split}_teacher_kl": kl}

    def on_train_start(self, trainer: Any) -> None:
        if trainer.epoch == 0:
            trainer.tracker.log_metrics(self.measure(trainer), step=0)

    def on_train_end(self, trainer: Any) -> None:
        trainer.tracker.log_metrics(self.measure(trainer), step=trainer.epoch)
        trainer.tracker.flush()


def snapshot_agreement(student: str, teacher: str, *, dataset: str | None = None, data_path: str = "./data",
                       batch_size: int = 500, device: str = "cpu") -> tuple[float, float]:
    """:func:`teacher_agreement` of a student snapshot with any teacher snapshot (paths, MLflow URIs or runs) on the
    test split of ``dataset`` (default: the student's): what `distill` logs against its own teacher, for another
    pair (e.g. the student of the untrained teacher against the trained teacher). fp32, eval mode."""
    from shared.train import resolve_device

    s_loaded = load_source(student, "student snapshot")
    t_loaded = load_source(teacher, "teacher snapshot")
    ds = dataset or s_loaded.snap.get("dataset") or (s_loaded.snap.get("data_config") or {}).get("dataset")
    data = load_data(make_data_config(dataset=ds or "cifar10", data_path=data_path, batch_size=batch_size))
    dev = resolve_device(device)
    models = [model_from_snapshot(x.snap, None, data, PROJECT, original=original_loader(ds), source=x.source)
              .to(dev).eval() for x in (s_loaded, t_loaded)]
    outs: list[list[torch.Tensor]] = [[], []]
    with torch.no_grad():
        for x, _ in data.test:
            x = x.to(dev)
            for out, m in zip(outs, models):
                out.append(m(x).float().cpu())
    return teacher_agreement(torch.cat(outs[0]), torch.cat(outs[1]))


@dataclass
class DistillResult:
    run_id: str | None
    student_source: str  # URI or path of the final student snapshot
    teacher_epoch: str
    teacher_run: str
    converged: bool
    test_acc: float | None
    arch: str  # teacher arch


def distill(teacher: str, *, arch: str | None, data_options: dict, train_cfg: TrainConfig, init: str = "x_gaussian",
            temperature: float = 22.0, alpha: float = 0.7, kl_reduction: str = "mean", kill_plateaus: bool = False,
            out_dir: str | None = None, run_name: str | None = None, progress: bool = True,
            extra_tags: dict | None = None) -> DistillResult:
    """Distill ``Student_<teacher>`` from one teacher snapshot (path, MLflow URI or training run id).

    ``data_options`` are :func:`make_data_config` keywords; ``dataset=None`` takes the teacher's dataset.
    """
    check_kd(temperature, alpha, kl_reduction)
    check_init(init)
    loaded = load_source(teacher, "teacher snapshot")
    spec = loaded.snap.get("model_spec") or {}
    t_arch = teacher_name(arch) if arch else (spec.get("arch") if spec else None)
    if t_arch is None:
        raise UsageError(f"{teacher} does not say which architecture it holds; pass --arch (and --dataset)")
    if is_student(t_arch):
        raise UsageError(f"the teacher snapshot holds a student ({t_arch}); distill from a teacher network")
    opts = dict(data_options)
    if not opts.get("dataset"):
        opts["dataset"] = (loaded.snap.get("dataset") or (loaded.snap.get("data_config") or {}).get("dataset")
                           or "cifar10")
    data_cfg = make_data_config(**opts)
    data = load_data(data_cfg, seed=train_cfg.seed)
    teacher_model = model_from_snapshot(loaded.snap, t_arch, data, PROJECT, original=original_loader(data_cfg.dataset),
                                        source=loaded.source)
    seed_everything(train_cfg.seed)  # the student's initial weights follow --seed (students of one seed start alike)
    student = model_for(student_of(t_arch), data, PROJECT, init=init)
    loss = DistillLoss(teacher_model, temperature, alpha, kl_reduction)
    cfg = replace(train_cfg, snapshot_every=0, snapshot_all_until=0)  # init and final student, as the original
    tags = {"source_run_id": loaded.run_id or "", "teacher_run_id": loaded.run_id or "",
            "teacher_snapshot": loaded.source, "teacher_epoch": loaded.epoch, "cone.run": loaded.run,
            "teacher_arch": t_arch, "init": init, **student_kernel.run_tags(student_of(t_arch), cfg.device),
            **(extra_tags or {})}
    params = {"teacher": loaded.source, "teacher_arch": t_arch, "teacher_epoch": loaded.epoch, "init": init,
              "kd.temperature": temperature, "kd.alpha": alpha, "kd.kl_reduction": kl_reduction,
              "kill_plateaus": kill_plateaus, "noisy": data_cfg.noise}
    name = run_name or f"Student_{t_arch}-from-epoch{loaded.epoch or '?'}" + (f"-run{loaded.run}" if loaded.run else "")
    out = run_training(project=PROJECT, entry_point="distill", arch=student_of(t_arch), data_cfg=data_cfg,
                       train_cfg=cfg, data=data, model=student, loss_fn=loss,
                       callbacks=([KillPlateaus("loss-ratio")] if kill_plateaus else [])
                       + [TeacherAgreement(teacher_model)], out_dir=out_dir,
                       params=params, tags=tags, run_name=name, progress=progress,
                       snapshot_meta={"teacher_epoch": loaded.epoch, "cone_run": loaded.run,
                                      "teacher_source": loaded.source, "teacher_arch": t_arch, "init": init})
    final = out.result.final
    snap_path = out.result.last_snapshot
    student_source = (f"runs:/{out.run_id}/snapshots/{snap_path.name}" if out.run_id and snap_path is not None
                      else str(snap_path))
    say(f"Student_{t_arch} from teacher epoch {loaded.epoch or '?'}: test_acc={final.get('test_acc', float('nan')):.4f}"
        + ("" if out.result.converged else f" (stopped: {out.result.stop_reason})") + f"; MLflow run {out.run_id}")
    return DistillResult(out.run_id, student_source, loaded.epoch, loaded.run, out.result.converged,
                         final.get("test_acc"), t_arch)


def teacher_snapshots(teacher_run: str, epochs: Sequence[int] | None = None) -> list[str]:
    """Every snapshot of a teacher: an MLflow training run (id or runs:/<id>) or a local folder of snapshots."""
    p = Path(teacher_run).expanduser()
    if p.is_dir():
        files = sorted([f for f in p.rglob("*") if f.suffix in (".pt", ".tar")], key=_snapshot_epoch_key)
        found = [(str(f), _epoch_of_name(f.name)) for f in files]
    else:
        rid = run_ref(teacher_run)
        if rid is None:
            raise UsageError(f"--teacher-run {teacher_run!r} is neither a folder of snapshots nor an MLflow run id")
        found = [(uri, e) for e, uri in run_snapshots(rid)]
    if epochs is not None:
        wanted = set(int(e) for e in epochs)
        found = [(s, e) for s, e in found if e is not None and e in wanted]
    if not found:
        raise UsageError(f"no teacher snapshots found in {teacher_run}" + (f" for epochs {sorted(epochs)}" if epochs
                                                                              else ""))
    return [s for s, _ in found]


def _epoch_of_name(name: str) -> int | None:
    m = re.match(r"epoch_(\d+)\.pt$", name)
    if m:
        return int(m.group(1))
    tokens = Path(name).stem.split("_")  # original: <arch>_<e>_<init>.tar (e 0-based) / <arch>_<E>_<init>.pt
    if len(tokens) > 1 and tokens[1].isdigit():
        return int(tokens[1]) + (1 if name.endswith(".tar") else 0)
    return None


def _snapshot_epoch_key(f) -> tuple:
    e = _epoch_of_name(Path(str(f)).name)
    return (e if e is not None else 10**9, str(f))


def distill_all(teacher_run: str, *, epochs: Sequence[int] | None = None, nesting_too: bool = True,
                quick: bool = False, run_name: str | None = None, out_dir: str | None = None, **distill_kwargs
                ) -> tuple[str | None, list[DistillResult], list[str]]:
    """One student per teacher snapshot, as nested runs of one ``distill_all`` run; optionally the nesting
    statistics of each student (nested runs too).  Returns (parent run id, distill results, nesting JSON paths)."""
    sources = teacher_snapshots(teacher_run, epochs)
    results: list[DistillResult] = []
    docs: list[str] = []
    tracker = Tracker()
    with tracker.start(PROJECT, "distill_all", run_name=run_name or f"distill-all-{Path(str(teacher_run)).name}",
                       params={"teacher_run": teacher_run, "snapshots": len(sources), "nesting": nesting_too,
                               "quick": quick},
                       tags={"source_run_id": parse_run_ref(teacher_run) if not Path(teacher_run).exists() else ""}
                       ) as parent:
        base = Path(out_dir) if out_dir else default_out_dir(PROJECT, parent.run_id)
        for k, src in enumerate(sources):
            interrupts.check()  # a safe point: between students
            say(f"[distill-all] {k + 1}/{len(sources)}: {src}")
            res = distill(src, out_dir=str(base / f"student_{k:03d}"), **distill_kwargs)
            results.append(res)
            parent.log_metrics({"student_test_acc": res.test_acc if res.test_acc is not None else float("nan")},
                               step=int(res.teacher_epoch) if res.teacher_epoch.isdigit() else k)
            if nesting_too:
                out = nesting_analysis(res.student_source, quick=quick, out_dir=str(base / f"nesting_{k:03d}"),
                                       progress=False)
                if out is not None:
                    docs.append(str(out))
        parent.flush()
    return parent.run_id, results, docs


# --------------------------------------------------------------------------------------------------------------
# Nesting


def _student_meta(loaded: LoadedSnapshot, model: torch.nn.Module, dataset: str | None) -> dict:
    snap, tags = loaded.snap, loaded.run_tags
    arch = getattr(model, "arch", "") or ""
    t_arch = teacher_name(arch) if arch else ""
    data_cfg = snap.get("data_config") or {}
    ds = dataset or snap.get("dataset") or data_cfg.get("dataset") or tags.get("dataset", "")
    epoch = str(snap.get("teacher_epoch", "") or tags.get("teacher_epoch", ""))
    run = str(snap.get("cone_run", "") or tags.get("cone.run", "") or loaded.run)
    init = snap.get("init") or tags.get("init") or getattr(model, "init", "")
    scratch = False
    if loaded.geomlab:
        # a student trained from scratch (`train --arch Student_<arch>`) has no teacher: its epoch is its own
        scratch = not (snap.get("teacher_source") or tags.get("teacher_snapshot"))
        if scratch:
            epoch = loaded.epoch
        name = f"Student_{t_arch}_{epoch}_{init}" if t_arch and epoch and init else loaded.path.stem
    else:
        name = loaded.path.stem
        if not epoch:  # original student files: Student_<arch>_<e>_<init>.pt
            tokens = name.split("_")
            epoch = tokens[2] if len(tokens) > 2 and tokens[2].isdigit() else ""
    return {"name": name, "arch": t_arch, "dataset": ds, "epoch": epoch, "run": run,
            "student_source": loaded.source, "student_run_id": loaded.run_id or "",
            "teacher_run_id": tags.get("teacher_run_id", ""), "student_epoch": loaded.epoch,
            **({"from_scratch": True} if scratch else {})}


def nesting_analysis(student: str, *, arch: str | None = None, dataset: str | None = None, quick: bool = False,
                     out_dir: str | None = None, chunk_elements: int = nesting.DEFAULT_CHUNK_ELEMENTS,
                     threads: int = 1, run_name: str | None = None, comm: Any = None,
                     progress: bool = True, figures: bool = True) -> Path | None:
    """The nesting statistics of one student snapshot as an MLflow analysis run (rank 0 only under MPI).

    Writes ``<out_dir>/<name>.json`` (the original schema), logs it as ``nesting/<name>.json``, logs the state
    counts / fractions and continuous means per pair, block and network as metrics, and the figures.  Returns the
    JSON path on rank 0, None on other ranks.
    """
    from shared.mpi import world

    comm = comm or world()
    rank, size = comm.Get_rank(), comm.Get_size()
    check(threads >= 1, f"--threads must be >= 1, got {threads}")
    check(chunk_elements >= 1, f"--chunk-elements must be >= 1, got {chunk_elements}")
    payload: tuple = ("error", "internal error on rank 0")
    blocks = meta = loaded = None
    if rank == 0:
        try:
            loaded = load_source(student, "student snapshot")
            model = model_from_snapshot(loaded.snap, student_of(arch) if arch else None, None, PROJECT,
                                        original=original_loader(dataset), source=loaded.source)
            if not getattr(model, "is_student", False) and not any(
                    type(m).__name__ == "StudentConv" for m in model.modules()):
                raise UsageError(f"{student} holds {getattr(model, 'arch', 'a network')}, a teacher; nesting needs a "
                                 "student: distill one first (distill / distill-all) and pass its snapshot")
            size_hw = getattr(model, "input_size", None)
            if size_hw is None:
                raise UsageError("cannot tell the input size of this network; pass --dataset")
            blocks = nesting.conv_blocks(model, size_hw)
            if not any(b.pairs for b in blocks):
                raise UsageError(f"{getattr(model, 'arch', 'this network')} has one convolution per pooling block, "
                                 "so no two consecutive convolutions whose cones could nest: its nesting statistics "
                                 "are undefined; use a student with two or more convolutions per block (LeNet8, "
                                 "LeNet9, VGG)")
            meta = _student_meta(loaded, model, dataset)
            if out_dir is not None:
                ensure_writable_dir(out_dir)
            payload = ("ok", None)
        except UsageError as e:
            payload = ("error", str(e))
    if size > 1:
        payload = comm.bcast(payload, root=0)
    if payload[0] == "error":
        if rank != 0:
            raise SystemExit(2)  # rank 0 reports the error (exit code 2 on every rank)
        raise UsageError(payload[1])

    tracker = Tracker(enabled=(rank == 0))
    params = {"student": student, "quick": quick, "ranks": size, "chunk_elements": chunk_elements,
              "threads": threads}
    tags = {}
    if rank == 0:
        tags = {"source_run_id": loaded.run_id or "", "cone.run": meta["run"], "arch": meta["arch"],
                "dataset": meta["dataset"], "student": meta["name"],
                **({"from_scratch": "true", "student_epoch": meta["epoch"]} if meta.get("from_scratch")
                   else {"teacher_epoch": meta["epoch"]})}
    with tracker.start(PROJECT, "nesting", run_name=run_name or (f"nesting-{meta['name']}" if meta else None),
                       params=params, tags=tags) as t:
        def report(bi: int, p: int, block: nesting.Block, seconds: float) -> None:
            if rank == 0 and progress:
                c = block.convs[p + 1]
                say(f"  block {block.index} ({block.size[0]}x{block.size[1]}) pair {p}: "
                    f"{c.n_in}x{c.n_out} filter-channels x {block.convs[p].n_in} inputs in {seconds:.2f} s"
                    + (f" (rank 0 of {size})" if size > 1 else ""))
            interrupts.check(comm if size > 1 else None)  # a safe point of every rank: between pairs

        t0 = time.perf_counter()
        results = nesting.network_nesting(blocks, quick=quick, comm=comm if size > 1 else None,
                                          chunk_elements=chunk_elements, threads=threads, on_pair=report)
        seconds = time.perf_counter() - t0
        if rank != 0:
            return None
        meta = dict(meta, quick=quick, ranks=size)
        doc = nesting.to_json(results, blocks, meta)
        out = Path(out_dir) if out_dir else default_out_dir(PROJECT, t.run_id)
        path = write_json(out / f"{meta['name']}.json", doc)
        t.log_artifact(path, "nesting")
        summary = nesting.summarize(doc)
        t.log_metrics({**summary, "nesting_seconds": seconds}, step=int(meta["epoch"]) if meta["epoch"].isdigit()
                      else 0)
        if figures and doc["blocks"]:
            title = f"Student_{meta['arch']} {meta['dataset']} epoch {meta['epoch'] or '?'}"
            for stem, fig in plots.figure_set(aggregate.aggregate_states([doc]), aggregate.aggregate_values([doc]),
                                              title).items():
                save_figure(fig, out / "figures" / f"{stem}.png", tracker=t)
        fr = {k.split("/")[1]: v for k, v in summary.items() if k.startswith("net/frac_")}
        say(f"nesting of {meta['name']}: {int(summary['net/n'])} filter-channels in {seconds:.1f} s; "
            + ", ".join(f"{k[5:]}={v:.3f}" for k, v in fr.items()) + f"; JSON {path}; MLflow run {t.run_id}")
        return path


# --------------------------------------------------------------------------------------------------------------
# Plots over runs and epochs


def _child_runs(run_id: str, entry_point: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run = client.get_run(run_id)
    return client.search_runs([run.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{run_id}' and "
                                            f"tags.entry_point = '{entry_point}'", max_results=5000)


def _nesting_json_of_run(run_id: str) -> str:
    arts = [a for a in list_run_artifacts(run_id, "nesting") if a.endswith(".json")]
    if not arts:
        raise UsageError(f"MLflow run {run_id} has no nesting/*.json artifact; pass a nesting run, a distill-all run "
                         "or a JSON file")
    return f"runs:/{run_id}/{arts[0]}"


def collect_documents(sources: Iterable[str]) -> list[dict]:
    """Nesting JSON documents from files, folders (all *.json inside), MLflow URIs, nesting run ids, or
    distill-all run ids (all nesting runs nested under them)."""
    docs: list[dict] = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            files = sorted(p.rglob("*.json"))
            if not files:
                raise UsageError(f"folder {p} holds no JSON files; pass nesting JSON files or run ids")
            for f in files:
                obj, _ = load_json_input(str(f), "nesting JSON")
                if isinstance(obj, dict) and "blocks" in obj:
                    docs.append(obj)
            continue
        rid = run_ref(src)
        if rid is not None:
            tags = _run_tags(rid)
            if not tags:
                raise UsageError(f"MLflow run {rid} not found; check the run id or MLFLOW_TRACKING_URI")
            if tags.get("entry_point") == "nesting":
                uris = [_nesting_json_of_run(rid)]
            else:
                children = _child_runs(rid, "nesting")
                if not children:
                    raise UsageError(f"MLflow run {rid} ({tags.get('entry_point', '?')}) has no nesting runs nested "
                                     "under it; pass nesting runs, a distill-all run or JSON files")
                uris = [_nesting_json_of_run(c.info.run_id) for c in children]
            for u in uris:
                obj, _ = load_json_input(u, "nesting JSON")
                docs.append(obj)
            continue
        obj, _ = load_json_input(src, "nesting JSON")
        docs.append(obj)
    if not docs:
        raise UsageError("no nesting documents found; pass JSON files, nesting run ids or a distill-all run id")
    return docs


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "x"


def plot_documents(docs: Sequence[dict], *, out_dir: str | None = None, all_epochs: bool = False,
                   run_name: str | None = None, tracker: Tracker | None = None) -> dict[str, Any]:
    """Figures and aggregate JSON of nesting documents, grouped by (arch, dataset): per-epoch distributions (the
    last epoch, or every epoch with ``all_epochs``) with mean +- std over runs, and the evolution over teacher
    epochs when there are several.  Logged to one MLflow ``plot`` run.  Returns {group: aggregate dict}."""
    groups = aggregate.group_documents(docs)
    tracker = tracker or Tracker()
    summary: dict[str, Any] = {}
    with tracker.start(PROJECT, "plot", run_name=run_name or "cone-plot",
                       params={"documents": len(docs), "groups": len(groups), "all_epochs": all_epochs}) as t:
        base = Path(out_dir) if out_dir else default_out_dir(PROJECT, t.run_id)
        for (arch, dataset), by_epoch in groups.items():
            gname = _safe(f"{arch}_{dataset}")
            title = f"Student_{arch} {dataset}"
            epochs = list(by_epoch)
            chosen = epochs if all_epochs else epochs[-1:]
            group_summary: dict[str, Any] = {"epochs": {}}
            for e in chosen:
                st = aggregate.aggregate_states(by_epoch[e])
                va = aggregate.aggregate_values(by_epoch[e])
                for stem, fig in plots.figure_set(st, va, f"{title} epoch {e or '?'}").items():
                    save_figure(fig, base / gname / f"{stem}_epoch{_safe(e or 'na')}.png", tracker=t,
                                artifact_path=f"figures/{gname}")
                group_summary["epochs"][e] = {"runs": st["runs"], "states": st,
                                              "continuous_means": {"net": va["net"]["mean"].mean(axis=0)
                                                                   if va["net"]["mean"].size else []}}
            if len(epochs) > 1:
                evo = aggregate.evolution(by_epoch)
                save_figure(plots.evolution_states(evo, title), base / gname / "evolution_states.png", tracker=t,
                            artifact_path=f"figures/{gname}")
                save_figure(plots.evolution_continuous(evo, title), base / gname / "evolution_continuous.png",
                            tracker=t, artifact_path=f"figures/{gname}")
                group_summary["evolution"] = evo
                for i, e in enumerate(evo["epochs"]):
                    step = int(e) if str(e).isdigit() else i
                    t.log_metrics({f"{gname}/net/frac_{s}": evo["net_mean"][i, k]
                                   for k, s in enumerate(nesting.STATE_NAMES)}, step=step)
            path = write_json(base / gname / "aggregate.json", aggregate.to_jsonable(group_summary))
            t.log_artifact(path, f"aggregate/{gname}")
            summary[gname] = group_summary
            say(f"{title}: {sum(len(v) for v in by_epoch.values())} documents, epochs {', '.join(epochs)}; "
                f"figures in {base / gname}")
    return summary

"""``geomlab cone-geometry``: teachers, student networks, distillation and cone nesting statistics (seeds 000/002).

Commands: ``train`` (teachers or students from scratch), ``distill`` (one student from one teacher snapshot),
``distill-all`` (one student per snapshot of a teacher run, with their nesting statistics), ``nesting`` (the
statistics of one student; runs under ``mpiexec -n N python -m mpi4py -m shared.cli cone-geometry nesting``),
``plot`` (the poster's figures over runs and teacher epochs).
"""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from shared import options as opt
from shared.app import make_app
from shared.errors import UsageError, check


app = make_app("Cone geometry of rectifier CNNs (seeds 000/002): teachers, Student_<arch> networks by knowledge "
               "distillation, and the nesting statistics of their cones (exact rotation, MPI).")

# -- options -----------------------------------------------------------------------------------------------------
Arch = Annotated[Optional[str], typer.Option(help="Architecture: VGG7, VGG9, VGG11exp, VGG11, VGG13, VGG16, VGG19, "
                                                  "LeNet5, LeNet8, LeNet9, or Student_<one of them>.")]
Init = Annotated[str, typer.Option(help="Weight init: x_gaussian, x_uniform (Xavier, gain sqrt 2), h_uniform, "
                                        "h_gaussian (Kaiming fan-in), fallback (conv N(0, 2/(9 out)), linear "
                                        "N(0, 0.01^2)).")]
KillPlateaus = Annotated[bool, typer.Option(help="Stop a run whose smoothed loss at batch 100 of epoch 20 is not "
                                                 "half of that at batch 100 of the first epoch (the original rule).")]
Dataset = Annotated[str, typer.Option(help="Dataset: cifar10, mnist (the original's normalizations), "
                                           "fashion_mnist, kmnist, cifar100, digits.")]
DataPath = Annotated[str, typer.Option("--data-path", "--dataset-path", help="Folder of the dataset files.")]
Noisy = Annotated[float, typer.Option(help="Fraction of training labels replaced by a different class, in [0, 1].")]
NoiseSeed = Annotated[int, typer.Option(help="Seed of the label noise (the original fixed 12345).")]


def _augmentation(value: str):  # a Typer callback receives the value alone
    return opt.on_off_auto(value)


Augmentation = Annotated[str, typer.Option(callback=_augmentation, help="Random crop (padding 4) and flip of training "
                                           "images: on, off, or auto (on for cifar10 only, as the original).")]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
BatchSize = Annotated[int, typer.Option(help="Batch size.")]
Optimizer = Annotated[str, typer.Option(help="sgd (momentum, weight decay, StepLR) or adam (lr only, as the "
                                             "original).")]
Lr = Annotated[float, typer.Option(help="Learning rate.")]
LrStep = Annotated[int, typer.Option(help="Decay the SGD learning rate every this many epochs (0: constant).")]
LrDecay = Annotated[float, typer.Option(help="Factor of each learning-rate decay.")]
SnapshotEvery = Annotated[int, typer.Option(help="Snapshot every this many epochs (0: initialization and last "
                                                 "epoch only).")]
Temperature = Annotated[float, typer.Option(help="Distillation temperature T.")]
Alpha = Annotated[float, typer.Option(help="Weight of the KL term (the CE term gets 1 - alpha), in [0, 1].")]
KlReduction = Annotated[str, typer.Option(help="KL reduction: mean over batch x classes (the original's "
                                               "nn.KLDivLoss() default) or batchmean (the usual Hinton loss).")]
Quick = Annotated[bool, typer.Option(help="Skip the rotation (reported as 0), as the original --quick.")]
ChunkElements = Annotated[int, typer.Option(help="Size of the nesting work arrays in float64 elements (memory "
                                                 "bound: about 6 such arrays per rank).")]
Threads = Annotated[int, typer.Option(help="Torch threads of the nesting computation per process (1 is fastest; "
                                           "use MPI ranks to use more cores).")]


def _single_process(command: str) -> None:
    from shared.mpi import world

    if world().Get_size() > 1:
        raise UsageError(f"{command} runs in one process; only `nesting` is split over MPI ranks (drop mpiexec)")


def _data_options(ns: dict) -> dict:
    return {"dataset": ns["dataset"], "data_path": ns["data_path"], "batch_size": ns["batch_size"],
            "noisy": ns["noisy"], "noise_seed": ns["noise_seed"], "augmentation": ns["augmentation"],
            "verify_checksums": ns["verify_checksums"]}


def _train_config(ns: dict, snapshot_every: int = 0):
    from .runner import make_train_config

    return make_train_config(epochs=ns["epochs"], optimizer=ns["optimizer"], lr=ns["lr"], momentum=ns["momentum"],
                             weight_decay=ns["weight_decay"], lr_step=ns["lr_step"], lr_decay=ns["lr_decay"],
                             seed=ns["seed"], snapshot_every=snapshot_every, device=ns["device"])


def _epochs_list(text: Optional[str]) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"--teacher-epochs must be comma-separated integers, e.g. 0,10,20; got {text!r}") from None


@app.command("train")
def train_cmd(
    arch: Arch = None,
    init: Init = "x_gaussian",
    kill_plateaus: KillPlateaus = False,
    runs: Annotated[int, typer.Option(help="Number of independent runs (run r uses seed + r).")] = 1,
    start_run: Annotated[int, typer.Option(help="First run index (skip completed runs).")] = 0,
    dataset: Dataset = "cifar10",
    data_path: DataPath = "./data",
    noisy: Noisy = 0.0,
    noise_seed: NoiseSeed = 12345,
    augmentation: Augmentation = "auto",
    verify_checksums: opt.VerifyChecksums = True,
    epochs: Epochs = 75,
    batch_size: BatchSize = 100,
    optimizer: Optimizer = "sgd",
    lr: Lr = 0.1,
    lr_step: LrStep = 20,
    lr_decay: LrDecay = 0.1,
    weight_decay: opt.WeightDecay = 5e-4,
    momentum: opt.Momentum = 0.9,
    snapshot_every: SnapshotEvery = 0,
    resume_from: opt.ResumeFrom = None,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """Train a teacher (or a student from scratch): one MLflow run per independent run, snapshots as artifacts."""
    from .models import ARCHS
    from .runner import make_data_config, train_runs

    _single_process("train")
    if not arch:
        raise UsageError(f"no architecture given; pass --arch with one of: {', '.join(ARCHS)}")
    data_cfg = make_data_config(**_data_options(locals()))
    train_runs(arch, data_cfg, _train_config(locals(), snapshot_every), init=init, runs=runs, start_run=start_run,
               kill_plateaus=kill_plateaus, out_dir=out_dir, resume_from=resume_from, run_name=run_name)


def _distill_kwargs(ns: dict) -> dict:
    return dict(arch=ns["arch"], data_options={**_data_options(ns), "dataset": ns["dataset"] or None},
                train_cfg=_train_config(ns), init=ns["init"], temperature=ns["temperature"], alpha=ns["alpha"],
                kl_reduction=ns["kl_reduction"], kill_plateaus=ns["kill_plateaus"])


@app.command("distill")
def distill_cmd(
    teacher: Annotated[str, typer.Option("--teacher", "--resume-from", help="Teacher snapshot: a path (also the "
                                         "original .tar/.pt files), an MLflow URI such as runs:/<id>/snapshots/"
                                         "epoch_030.pt, or a training run id (its last snapshot).")],
    arch: Arch = None,
    init: Init = "x_gaussian",
    dataset: Annotated[Optional[str], typer.Option(help="Dataset (default: the teacher's; cifar10 for original "
                                                        "checkpoints).")] = None,
    data_path: DataPath = "./data",
    noisy: Noisy = 0.0,
    noise_seed: NoiseSeed = 12345,
    augmentation: Augmentation = "auto",
    verify_checksums: opt.VerifyChecksums = True,
    epochs: Epochs = 75,
    batch_size: BatchSize = 100,
    optimizer: Optimizer = "sgd",
    lr: Lr = 0.1,
    lr_step: LrStep = 20,
    lr_decay: LrDecay = 0.1,
    weight_decay: opt.WeightDecay = 5e-4,
    momentum: opt.Momentum = 0.9,
    temperature: Temperature = 22.0,
    alpha: Alpha = 0.7,
    kl_reduction: KlReduction = "mean",
    kill_plateaus: KillPlateaus = False,
    nesting: Annotated[bool, typer.Option(help="Also compute the nesting statistics of the student.")] = False,
    quick: Quick = False,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """Train Student_<teacher> by knowledge distillation from one teacher snapshot (--arch: teacher or Student_
    name; default: the snapshot's)."""
    from .runner import distill, nesting_analysis

    _single_process("distill")
    res = distill(teacher, out_dir=out_dir, run_name=run_name, **_distill_kwargs(locals()))
    if nesting:
        nesting_analysis(res.student_source, quick=quick)


@app.command("distill-all")
def distill_all_cmd(
    teacher_run: Annotated[str, typer.Option(help="The teacher's training run (id or runs:/<id>) or a folder of "
                                                  "its snapshots.")],
    teacher_epochs: Annotated[Optional[str], typer.Option(help="Only the snapshots of these teacher epochs, e.g. "
                                                               "0,10,20 (default: all).")] = None,
    arch: Arch = None,
    init: Init = "x_gaussian",
    dataset: Annotated[Optional[str], typer.Option(help="Dataset (default: the teacher's).")] = None,
    data_path: DataPath = "./data",
    noisy: Noisy = 0.0,
    noise_seed: NoiseSeed = 12345,
    augmentation: Augmentation = "auto",
    verify_checksums: opt.VerifyChecksums = True,
    epochs: Epochs = 75,
    batch_size: BatchSize = 100,
    optimizer: Optimizer = "sgd",
    lr: Lr = 0.1,
    lr_step: LrStep = 20,
    lr_decay: LrDecay = 0.1,
    weight_decay: opt.WeightDecay = 5e-4,
    momentum: opt.Momentum = 0.9,
    temperature: Temperature = 22.0,
    alpha: Alpha = 0.7,
    kl_reduction: KlReduction = "mean",
    kill_plateaus: KillPlateaus = False,
    nesting: Annotated[bool, typer.Option(help="Compute the nesting statistics of every student.")] = True,
    quick: Quick = False,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """Distill one student from every snapshot of a teacher run (nested MLflow runs tagged with the teacher
    epoch), and by default compute each student's nesting statistics; then `plot <this run id>`."""
    from .runner import distill_all

    _single_process("distill-all")
    parent, results, docs = distill_all(teacher_run, epochs=_epochs_list(teacher_epochs), nesting_too=nesting,
                                        quick=quick, run_name=run_name, out_dir=out_dir, **_distill_kwargs(locals()))
    typer.echo(f"distill-all run {parent}: {len(results)} students"
               + (f", {len(docs)} nesting JSON files" if nesting else "")
               + f"; figures: geomlab cone-geometry plot {parent}")


@app.command("nesting")
def nesting_cmd(
    student: Annotated[str, typer.Option(help="Student snapshot: path (also original .pt/.tar files), MLflow URI, "
                                              "or a distill run id (its final snapshot).")],
    arch: Annotated[Optional[str], typer.Option(help="Teacher or Student_ name; only needed for checkpoints of the "
                                                     "original code.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset; only needed for checkpoints of the original code "
                                                        "(input size).")] = None,
    quick: Quick = False,
    chunk_elements: ChunkElements = 1 << 18,
    threads: Threads = 1,
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """Nesting statistics of one student (JSON in the original schema, metrics, figures). Under mpiexec -n N the
    filter-channels are split over the N ranks; rank 0 alone writes and logs."""
    from .runner import nesting_analysis

    nesting_analysis(student, arch=arch, dataset=dataset, quick=quick, out_dir=out_dir, chunk_elements=chunk_elements,
                     threads=threads, run_name=run_name)


@app.command("plot")
def plot_cmd(
    sources: Annotated[list[str], typer.Argument(help="Nesting JSON files or folders, MLflow URIs, nesting run ids, "
                                                      "or distill-all run ids.")],
    all_epochs: Annotated[bool, typer.Option(help="Distribution figures for every teacher epoch (default: the "
                                                  "last one; the evolution figures cover all epochs).")] = False,
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """The poster's figures: net-wise and block-wise state distributions and continuous statistics (mean +- std over
    runs), and their evolution over the teacher's epochs."""
    from .runner import collect_documents, plot_documents

    _single_process("plot")
    check(len(sources) > 0, "pass at least one nesting JSON file or run id")
    plot_documents(collect_documents(sources), out_dir=out_dir, all_epochs=all_epochs, run_name=run_name)


# -- study (issue 13): the paper's experiment end to end, see study.py ------------------------------------------
def _register_study() -> None:
    from shared.study import register_study

    from . import study

    register_study(app, "cone_geometry", study.PRESETS, study.run, study.__doc__.split("\n\n")[0])


_register_study()

"""``geomlab cone-geometry``: teachers, student networks, distillation and cone nesting statistics (Gamba et al. 2019,
"On the geometry of rectifier convolutional neural networks", ICCV-W).

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


app = make_app("Cone geometry of rectifier CNNs (Gamba et al., ICCV-W 2019): teachers, Student_<arch> networks by "
               "knowledge distillation, and the nesting statistics of their cones (exact rotation, MPI).")

# -- options of this project (the shared ones come from shared.options) --------------------------------------------
#: Distillation options of `distill` and `distill-all` (one declaration; distill-all computes nesting by default).
TEMPERATURE = opt.Opt("temperature", float, "Distillation temperature T.", 22.0)
KL_WEIGHT = opt.Opt("kl_weight", float, "Weight of the KL term (the CE term gets 1 - weight), in [0, 1] (the "
                    "original's alpha).", 0.7, ("--kl-weight", "--alpha"))
KL_REDUCTION = opt.Opt("kl_reduction", str, "KL reduction: mean over batch x classes (the original's nn.KLDivLoss() "
                       "default) or batchmean (the usual Hinton loss).", "mean")
NESTING = opt.Opt("nesting", bool, "Compute the nesting statistics of the student(s).", False)
QUICK = opt.Opt("quick", bool, "Skip the rotation (reported as 0), as the original --quick.", False)
KD = (TEMPERATURE, KL_WEIGHT, KL_REDUCTION, NESTING, QUICK)
Quick = QUICK.annotated
ChunkElements = Annotated[int, typer.Option(help="Size of the nesting work arrays in float64 elements (memory "
                                                 "bound: about 6 such arrays per rank).")]
Threads = Annotated[int, typer.Option(help="Torch threads of the nesting computation per process (1 is fastest; "
                                           "use MPI ranks to use more cores).")]

#: The original's defaults (Gamba et al. 2019): batch 100, SGD lr 0.1 decayed x0.1 every 20 epochs, 75 epochs.
DEFAULTS = {"dataset": "cifar10", "batch_size": 100, "noise_seed": 12345, "augmentation": "auto", "epochs": 75,
            "lr": 0.1, "lr_step": 20, "init": "x_gaussian"}
#: Options the original's pipeline does not have (its own normalization constants; no per-epoch train accuracy).
NOT_HERE = ("normalize", "train_acc", "snapshot_all_until")
#: Distillation keeps the initial and final student only (the original), and --resume-from names the teacher.
NOT_IN_DISTILL = NOT_HERE + ("snapshot_every", "resume_from", "resume_override", "fresh")


def _single_process(command: str) -> None:
    from shared.mpi import world

    if world().Get_size() > 1:
        raise UsageError(f"{command} runs in one process; only `nesting` is split over MPI ranks (drop mpiexec)")


def _data_options(o: dict) -> dict:
    return {"dataset": o["dataset"], "data_path": o["data_path"], "batch_size": o["batch_size"],
            "noisy": o["noise"], "noise_seed": o["noise_seed"], "augmentation": o["augmentation"],
            "verify_checksums": o["verify_checksums"], "download": o["download"],
            **{k: o[k] for k in opt.EXTRA_DATA}}


def _train_config(o: dict):
    from .runner import make_train_config

    return opt.with_compute(make_train_config(epochs=o["epochs"], optimizer=o["optimizer"], lr=o["lr"],
                                              momentum=o["momentum"], weight_decay=o["weight_decay"],
                                              lr_step=o["lr_step"], lr_decay=o["lr_decay"], seed=o["seed"],
                                              snapshot_every=o.get("snapshot_every", 0), device=o["device"]), o)


def _epochs_list(text: Optional[str]) -> Optional[list[int]]:
    from shared.parsing import parse_int_list

    return parse_int_list(text, "--teacher-epochs", "0,10,20")


@app.command("train")
@opt.options(opt.ARCH, opt.INIT, opt.KILL_PLATEAUS, opt.DATA, opt.TRAIN, opt.RUN_OUTPUT, defaults=DEFAULTS,
             exclude=NOT_HERE)
def train_cmd(
    *,
    runs: Annotated[int, typer.Option(help="Number of independent runs (run r uses seed + r).")] = 1,
    start_run: Annotated[int, typer.Option(help="First run index (skip completed runs).")] = 0,
    o: opt.Values,
) -> None:
    """Train a teacher (or a student from scratch): one MLflow run per independent run, snapshots as artifacts."""
    from .models import ARCHS
    from .runner import make_data_config, train_runs

    _single_process("train")
    if not o.arch:
        raise UsageError(f"no architecture given; pass --arch with one of: {', '.join(ARCHS)}")
    data_cfg = make_data_config(**_data_options(o))
    train_runs(o.arch, data_cfg, _train_config(o), init=o.init, runs=runs, start_run=start_run,
               kill_plateaus=o.kill_plateaus, out_dir=o.out_dir, resume_from=o.resume_from, run_name=o.run_name,
               fresh=o.fresh, resume_override=o.resume_override)


def _distill_kwargs(o: dict) -> dict:
    return dict(arch=o["arch"], data_options={**_data_options(o), "dataset": o["dataset"] or None},
                train_cfg=_train_config(o), init=o["init"], temperature=o["temperature"], alpha=o["kl_weight"],
                kl_reduction=o["kl_reduction"], kill_plateaus=o["kill_plateaus"])


DISTILL_GROUPS = (opt.ARCH, opt.INIT, opt.KILL_PLATEAUS, opt.DATA, opt.TRAIN, opt.RUN_OUTPUT, KD)
DISTILL_DEFAULTS = {**DEFAULTS, "dataset": None}


@app.command("distill")
@opt.options(*DISTILL_GROUPS, defaults=DISTILL_DEFAULTS, exclude=NOT_IN_DISTILL)
def distill_cmd(
    teacher: Annotated[str, typer.Option("--teacher", "--resume-from", help="Teacher snapshot: a path (also the "
                                         "original .tar/.pt files), an MLflow URI such as runs:/<id>/snapshots/"
                                         "epoch_030.pt, or a training run id (its last snapshot).")],
    *,
    o: opt.Values,
) -> None:
    """Train Student_<teacher> by knowledge distillation from one teacher snapshot (--arch: teacher or Student_
    name; default: the snapshot's; --dataset: default the teacher's, cifar10 for original checkpoints)."""
    from .runner import distill, nesting_analysis

    _single_process("distill")
    res = distill(teacher, out_dir=o.out_dir, run_name=o.run_name, **_distill_kwargs(o))
    if o.nesting:
        nesting_analysis(res.student_source, quick=o.quick, out_dir=f"{o.out_dir}/nesting" if o.out_dir else None)


@app.command("distill-all")
@opt.options(*DISTILL_GROUPS, defaults={**DISTILL_DEFAULTS, "nesting": True}, exclude=NOT_IN_DISTILL)
def distill_all_cmd(
    teacher_run: Annotated[str, typer.Option(help="The teacher's training run (id or runs:/<id>) or a folder of "
                                                  "its snapshots.")],
    teacher_epochs: Annotated[Optional[str], typer.Option(help="Teacher epochs whose snapshots are distilled, e.g. "
                                                               "0,10,20 (distill-all without it: every one).")] = None,
    *,
    o: opt.Values,
) -> None:
    """Distill one student from every snapshot of a teacher run (nested MLflow runs tagged with the teacher
    epoch), and by default compute each student's nesting statistics; then `plot <this run id>`."""
    from .runner import distill_all

    _single_process("distill-all")
    parent, results, docs = distill_all(teacher_run, epochs=_epochs_list(teacher_epochs), nesting_too=o.nesting,
                                        quick=o.quick, run_name=o.run_name, out_dir=o.out_dir, **_distill_kwargs(o))
    typer.echo(f"distill-all run {parent}: {len(results)} students"
               + (f", {len(docs)} nesting JSON files" if o.nesting else "")
               + f"; figures: geomlab cone-geometry plot {parent}")


@app.command("nesting")
def nesting_cmd(
    student: Annotated[str, typer.Option(help="Student snapshot: path (also original .pt/.tar files), MLflow URI, "
                                              "or a distill run id (its final snapshot).")],
    arch: opt.Arch = None,
    dataset: opt.Dataset = None,
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


#: Options a `geomlab sweep cone_geometry <command>` space must give although they default to None.
SWEEP_REQUIRED = {"train": ["arch"]}


# -- study (issue 13): the paper's experiment end to end, see study.py ------------------------------------------
def _register_study() -> None:
    from shared.study import register_study

    from . import study

    register_study(app, "cone_geometry", study.PRESETS, study.run, study.__doc__.split("\n\n")[0])


_register_study()

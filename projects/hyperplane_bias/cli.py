"""``geomlab hyperplane-bias``: projection statistics over training and layer re-initialization robustness (Gamba et
al. 2020, "Hyperplane arrangements of trained ConvNets are biased", arXiv:2003.07797).

Commands: ``train``, ``projections``, ``reinit``, ``correlate``. Options keep the original scripts' defaults (and
their old names as hidden aliases: --cuda, --unnormalize, --results, --models-path, --normalize, --epochs of reinit);
see projects/hyperplane_bias/README.md for every option and the differences from the original code.
"""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from shared import options as opt
from shared.app import make_app
from shared.errors import UsageError, check

app = make_app("Hyperplane arrangements of trained ConvNets (Gamba et al. 2020, arXiv:2003.07797): train with "
               "snapshots, projection statistics of each conv layer on the all-ones direction, layer "
               "re-initialization robustness (Zhang et al.) and their rank correlation; everything logged to MLflow.")

# -- options of this project (the shared ones come from shared.options) --------------------------------------------
Pretrained = Annotated[bool, typer.Option("--pretrained", help="torchvision's ImageNet weights, read from the local "
                                          "torch cache (TORCH_HOME/hub/checkpoints), never downloaded: train starts "
                                          "from them, projections measure them.")]
Workers = Annotated[int, typer.Option("--workers", "-j", help="Data loading worker processes (ImageNet only; "
                                      "in-memory datasets need none).")]
StartEpoch = Annotated[int, typer.Option(help="Start counting epochs here (ignored when resuming).")]
InitFrom = Annotated[Optional[str], typer.Option(help="Initialization weights (any snapshot file, also the original "
                                                      "code's .tar/.pt, or an MLflow URI): train starts a new run "
                                                      "from them; projections add each layer's relative distance "
                                                      "from them (l2_dist, l_inf_dist; with --run, the run's "
                                                      "epoch_000 by default).")]
Evaluate = Annotated[bool, typer.Option("--evaluate", help="Only evaluate the model (--resume-from/--init-from "
                                        "snapshot, else the initialization) on the test set, and exit.")]
EvaluateTrain = Annotated[bool, typer.Option("--evaluate-train", help="Only evaluate on the training set, and exit.")]
LoadFrom = Annotated[Optional[str], typer.Option(help="Snapshot to analyse: a file (geomlab snapshot, or the "
                                                      "original code's .tar/.pt with --arch/--dataset) or an MLflow "
                                                      "URI such as runs:/<id>/snapshots/epoch_010.pt.")]
Cosine = Annotated[bool, typer.Option("--cosine", "--normalize", help="Cosine projections: the cosine between each "
                                      "filter and the all-ones vector (default: the raw sum of the filter's "
                                      "weights).")]
WithLinear = Annotated[bool, typer.Option("--with-linear", help="Also count linear layers (one hyperplane per row).")]
Walk = Annotated[str, typer.Option(help="Which modules are walked: modules (the whole model) or features (only "
                                        "model.features, the original's code; never sees linear layers).")]

#: The original train.py's defaults; --dataset is required.
DEFAULTS = {"batch_size": 128, "epochs": 20, "lr": 0.001, "lr_decay": 0.0, "weight_decay": 1e-4}


def _given(value: str | None) -> str | None:
    """Options left empty (MLproject passes "" for parameters not given) mean 'not given'."""
    return value if value not in ("", None) else None


def _dataset_required(dataset: str | None) -> str:
    from shared.data import DATASETS

    if not dataset:
        raise UsageError(f"no dataset given; pass --dataset with one of: {DATASETS.choices(task='classification')}")
    return dataset


def _done(what: str, info: dict) -> None:
    typer.echo(f"{what}: run {info['run_id']}" + (f", files in {info['out_dir']}" if info.get("out_dir") else ""))


@app.command("train")
@opt.options(opt.ARCH, opt.DATA, opt.TRAIN, opt.KILL_PLATEAUS, opt.RUN_OUTPUT, defaults=DEFAULTS)
def train(
    *,
    o: opt.Values,
    pretrained: Pretrained = False,
    evaluate: Evaluate = False,
    evaluate_train: EvaluateTrain = False,
    workers: Workers = 1,
    start_epoch: StartEpoch = 0,
    init_from: InitFrom = None,
    resize: Annotated[int, typer.Option(help="Resize images to this size before training (0: native), e.g. 224 "
                                             "for the original HEAD's --upscale.")] = 0,
) -> None:
    """Train (or fine-tune) a model with snapshots; the original train.py (Gamba et al. 2020) on the shared training loop."""
    from shared.data import DataConfig
    from shared.train import TrainConfig

    from . import runner

    from .models import canonical_arch

    dataset = _dataset_required(_given(o.dataset))
    arch = canonical_arch(_given(o.arch))
    noise = o.noise
    check(noise <= 1.0, f"--noise must be a ratio in [0, 1], or -1 for pixel shuffle; got {noise}")
    check(not (evaluate and evaluate_train), "--evaluate and --evaluate-train exclude each other; pass one")
    check(workers >= 0, f"--workers must be >= 0, got {workers}")
    over = {"std": runner.MNIST_STD_OF_THE_ORIGINAL} if dataset == "mnist" else {}
    data_cfg = opt.data_config(o, dataset=dataset, noise=max(noise, 0.0), pixel_shuffle=o.pixel_shuffle or noise < 0,
                               augmentation=bool(o.augmentation), num_workers=workers, resize=resize, **over)
    train_cfg = opt.train_config(o, weight_decay=0.0 if o.optimizer == "adam" else o.weight_decay, schedule="step")
    which = "test" if evaluate else ("train" if evaluate_train else None)
    info = runner.train(arch, data_cfg, train_cfg, pretrained=pretrained, kill_plateaus=o.kill_plateaus,
                        start_epoch=start_epoch, resume_from=o.resume_from, init_from=init_from,
                        evaluate_only=which, out_dir=o.out_dir, run_name=o.run_name, fresh=o.fresh,
                        resume_override=o.resume_override)
    if which:
        typer.echo(f"{which}: loss={info['loss']:.4f} top1={100 * info['acc']:.2f}% top5={100 * info['top5']:.2f}% "
                   f"(run {info['run_id']})")
        return
    final = info["final"]
    accs = ", ".join(f"{k}={v:.4f}" for k, v in final.items() if k.endswith(("_acc", "_loss")))
    stop = "" if info["converged"] else f" (stopped: {info['stop_reason']})"
    typer.echo(f"trained {info['epochs']} epochs{stop}: {accs}")
    _done("train", info)


@app.command("projections")
def projections(
    arch: opt.Arch = None,
    dataset: opt.Dataset = None,
    load_from: LoadFrom = None,
    init_from: InitFrom = None,
    run: opt.Run = None,
    pretrained: Pretrained = False,
    cosine: Cosine = False,
    with_linear: WithLinear = False,
    walk: Walk = "modules",
    seed: opt.Seed = None,
    subsample_classes: opt.SubsampleClasses = 0,
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """Projection statistics of a snapshot, of a run's snapshots (step = epoch), of pretrained or random weights."""
    from . import runner

    info = runner.projections(arch=_given(arch), dataset=_given(dataset), load_from=_given(load_from),
                              init_from=_given(init_from), run=_given(run),
                              pretrained=pretrained, normalize=cosine, with_linear=with_linear, walk=walk,
                              seed=seed, subsample_classes=subsample_classes, results=_given(out_dir),
                              run_name=run_name)
    last = info["documents"][-1]
    typer.echo(f"{len(info['documents'])} document(s); epoch {last['epoch']}: net mass {last['net']['mass']:.3f}, "
               f"net mean {last['net']['mean']:.4g}")
    _done("projections", info)


def _epochs(value: str | None) -> list[int] | None:
    from shared.parsing import parse_int_list

    return parse_int_list(value, "--checkpoint-epochs", "0,1,2,5")


@app.command("reinit")
def reinit(
    load_from: LoadFrom = None,
    inits_from: Annotated[Optional[str], typer.Option(help="Text file listing checkpoint snapshots, one per line "
                                                           "(the original's format).")] = None,
    run: opt.Run = None,
    checkpoint_epochs: Annotated[Optional[str], typer.Option("--checkpoint-epochs", "--epochs", help="With --run: "
                                                             "only the snapshots of these epochs are checkpoints, "
                                                             "e.g. 0,1,2,5.")] = None,
    arch: opt.Arch = None,
    dataset: opt.Dataset = None,
    data_path: opt.DataPath = None,
    subsample_classes: opt.SubsampleClasses = 0,
    rand: Annotated[bool, typer.Option("--rand", help="Also re-randomize: a fresh draw from the model's own "
                                       "initializer (column 'rand').")] = False,
    seed: opt.Seed = None,
    with_linear: WithLinear = False,
    walk: Walk = "features",
    bn: Annotated[str, typer.Option(help="BatchNorm statistics after a reset: keep (the original) or reestimate "
                                         "(recomputed on training inputs).")] = "keep",
    bn_samples: Annotated[int, typer.Option(help="Training inputs used by --bn reestimate.")] = 2000,
    eval_batch_size: Annotated[int, typer.Option("--eval-batch-size", "--batch-size",
                                                 help=opt.EVAL_BATCH_SIZE.help)] = 128,
    max_test: Annotated[int, typer.Option(help="Evaluate on the first N test inputs only (0: all).")] = 0,
    device: opt.Device = "auto",
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """Re-initialization robustness: reset one layer at a time to each checkpoint's weights, measure test accuracy.
    With --run, the run's snapshots are the checkpoints and its last one is the trained model (unless --load-from);
    --seed seeds the --rand draw and the BatchNorm re-estimation subset (default: the training seed + 1)."""
    from . import runner

    info = runner.reinit(load_from=_given(load_from), inits_from=_given(inits_from), run=_given(run),
                         epochs=_epochs(checkpoint_epochs), arch=_given(arch), dataset=_given(dataset),
                         data_path=_given(data_path), subsample_classes=subsample_classes, rand=rand,
                         rand_seed=seed, with_linear=with_linear, walk=walk, bn=bn, bn_samples=bn_samples,
                         batch_size=eval_batch_size, max_test=max_test, device=device,
                         results=_given(out_dir), run_name=run_name)
    doc = info["document"]
    typer.echo(f"top-1 {doc['top1_test']:.2f}%; {len(doc['layers'])} layers x {len(doc['init_from_epoch'])} "
               f"checkpoints ({', '.join(doc['init_from_epoch'])})")
    _done("reinit", info)


@app.command("correlate")
def correlate(
    reinit_results: Annotated[str, typer.Option("--reinit", help="Re-initialization results: a reinit run id, or "
                                                "its JSON (file or MLflow URI; the original's files work too).")],
    projections_results: Annotated[Optional[str], typer.Option("--projections", help="Projection statistics JSON "
                                                               "of the trained model (default: computed from the "
                                                               "snapshot the reinit run used).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="Which re-initialization column is the robustness "
                                                           "measure (default: 0, the initialization).")] = None,
    cosine: Cosine = False,
    arch: opt.Arch = None,
    dataset: opt.Dataset = None,
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """Projection bias (mass, mean, |mass - 0.5|) beside re-initialization robustness per layer, with Spearman's rho."""
    from . import runner

    info = runner.correlate(reinit_src=reinit_results, projections_src=_given(projections_results),
                            checkpoint=_given(checkpoint), normalize=cosine, arch=_given(arch),
                            dataset=_given(dataset), results=_given(out_dir), run_name=run_name)
    typer.echo(info["table"])
    _done("correlate", info)


#: Options a `geomlab sweep hyperplane_bias <command>` space must give although they default to None.
SWEEP_REQUIRED = {"train": ["arch"]}


# -- study (issue 13): the paper's experiment end to end, see study.py ------------------------------------------
def _register_study() -> None:
    from shared.study import register_study

    from . import study

    register_study(app, "hyperplane_bias", study.PRESETS, study.run, study.__doc__.split("\n\n")[0])


_register_study()

"""``geomlab hyperplane-bias``: projection statistics over training and layer re-initialization robustness (seed 001).

Commands: ``train``, ``projections``, ``reinit``, ``correlate``. Options keep the original scripts' names and
defaults; see projects/hyperplane_bias/README.md for every option and the differences from the original code.
"""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from shared import options as opt
from shared.errors import UsageError, check


from shared.app import make_app

app = make_app("Hyperplane arrangements of trained ConvNets (seed 001): train with snapshots, projection statistics "
               "of each conv layer on the all-ones direction, layer re-initialization robustness (Zhang et al.) and "
               "their rank correlation; everything logged to MLflow.")

# -- options of this project ---------------------------------------------------------------------------------------
Dataset = Annotated[Optional[str], typer.Option(help="Dataset: mnist, fashion_mnist, kmnist, cifar10, cifar100, "
                                                     "imagenet, digits (embedded). Run without it to see the list.")]
Arch = Annotated[Optional[str], typer.Option(help="Architecture: lenet, alexnet, vgg11, vgg13, vgg16, vgg19, "
                                                  "vgg11_bn ... vgg19_bn, vgg19_orig, mlp, mlp_bn.")]
Noise = Annotated[float, typer.Option(help="Ratio of corrupted training labels, in [0, 1] (a corrupted label always "
                                           "differs from the true one); -1 (any negative value) shuffles the pixels "
                                           "of each training image with its own fixed permutation instead.")]
Pretrained = Annotated[bool, typer.Option("--pretrained", help="Start from torchvision's ImageNet weights, read from "
                                          "the local torch cache (TORCH_HOME/hub/checkpoints); never downloaded.")]
Shuffle = Annotated[bool, typer.Option("--shuffle/--no-shuffle", help="Reshuffle the training set every epoch. The "
                                       "original's default (off) also froze the batch order; see the README.")]
Workers = Annotated[int, typer.Option("--workers", "-j", help="Data loading worker processes (ImageNet only; "
                                      "in-memory datasets need none).")]
Cuda = Annotated[bool, typer.Option("--cuda", help="Use the GPU (same as --device cuda).")]
StartEpoch = Annotated[int, typer.Option(help="Start counting epochs here (ignored when resuming).")]
LrDecay = Annotated[float, typer.Option(help="Decay factor of the step schedule (0: off; needs --lr-step > 0).")]
WeightDecay = Annotated[float, typer.Option(help="Weight decay of SGD (Adam gets none, as in the original).")]
OutDir = Annotated[Optional[str], typer.Option("--out-dir", "--models-path", help="Folder for snapshots (default "
                                               "./outputs/hyperplane_bias/<run id>).")]
InitFrom = Annotated[Optional[str], typer.Option(help="Start a new run from these weights (any snapshot file, also "
                                                      "the original code's .tar/.pt, or an MLflow URI).")]
KillPlateaus = Annotated[bool, typer.Option("--kill-plateaus", help="Stop when a snapshot evaluation's accuracy "
                                            "exactly equals the previous snapshot's (the original's rule).")]
Unnormalize = Annotated[bool, typer.Option("--unnormalize", help="Feed pixel values in [0, 1] (no mean/std "
                                           "normalization).")]
Evaluate = Annotated[bool, typer.Option("--evaluate", help="Only evaluate the model (--resume-from/--init-from "
                                        "snapshot, else the initialization) on the test set, and exit.")]
EvaluateTrain = Annotated[bool, typer.Option("--evaluate-train", help="Only evaluate on the training set, and exit.")]
LoadFrom = Annotated[Optional[str], typer.Option(help="Snapshot to analyse: a file (geomlab snapshot, or the "
                                                      "original code's .tar/.pt with --arch/--dataset) or an MLflow "
                                                      "URI such as runs:/<id>/snapshots/epoch_010.pt.")]
Run = Annotated[Optional[str], typer.Option(help="A training run (id or runs:/<id>): use every snapshot it logged.")]
Normalize = Annotated[bool, typer.Option("--normalize", help="Normalized projections: the cosine between each filter "
                                         "and the all-ones vector (default: the raw sum of the filter's weights).")]
WithLinear = Annotated[bool, typer.Option("--with-linear", help="Also count linear layers (one hyperplane per row).")]
Walk = Annotated[str, typer.Option(help="Which modules are walked: modules (the whole model) or features (only "
                                        "model.features, the seed's code; never sees linear layers).")]
Results = Annotated[Optional[str], typer.Option(help="Folder for the JSON results and figures (default "
                                                     "./outputs/hyperplane_bias/<run id>); always also logged to "
                                                     "MLflow.")]
SubsampleClasses = Annotated[int, typer.Option(help="Classes of the model when it was trained on a class subsample "
                                                    "(needed only for files of the original code).")]


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
def train(
    arch: Arch = None,
    dataset: Dataset = None,
    subsample_classes: opt.SubsampleClasses = 0,
    class_sample_seed: opt.ClassSampleSeed = 42,
    noise: Noise = 0.0,
    noise_seed: opt.NoiseSeed = 0,
    augmentation: opt.Augmentation = False,
    pretrained: Pretrained = False,
    split: opt.Split = 0.0,
    stratified: opt.Stratified = False,
    split_seed: opt.SplitSeed = 0,
    shuffle: Shuffle = True,
    evaluate: Evaluate = False,
    evaluate_train: EvaluateTrain = False,
    cuda: Cuda = False,
    device: opt.Device = "auto",
    workers: Workers = 1,
    data_path: opt.DataPath = "./data",
    epochs: opt.Epochs = 20,
    start_epoch: StartEpoch = 0,
    batch_size: opt.BatchSize = 128,
    optimizer: opt.Optimizer = "sgd",
    lr: opt.Lr = 0.001,
    lr_step: opt.LrStep = 0,
    lr_decay: LrDecay = 0.0,
    weight_decay: WeightDecay = 1e-4,
    momentum: opt.Momentum = 0.9,
    out_dir: OutDir = None,
    seed: opt.Seed = 0,
    snapshot_every: opt.SnapshotEvery = 0,
    snapshot_all_until: opt.SnapshotAllUntil = 0,
    resume_from: opt.ResumeFrom = None,
    init_from: InitFrom = None,
    kill_plateaus: KillPlateaus = False,
    train_acc: opt.TrainAcc = False,
    unnormalize: Unnormalize = False,
    resize: Annotated[int, typer.Option(help="Resize images to this size before training (0: native), e.g. 224 "
                                             "for the original HEAD's --upscale.")] = 0,
    verify_checksums: opt.VerifyChecksums = True,
    run_name: opt.RunName = None,
) -> None:
    """Train (or fine-tune) a model with snapshots; the seed's train.py on the shared training loop."""
    from shared.data import DataConfig
    from shared.train import TrainConfig

    from . import runner

    from .models import canonical_arch

    dataset = _dataset_required(_given(dataset))
    arch = canonical_arch(_given(arch))
    check(noise <= 1.0, f"--noise must be a ratio in [0, 1], or -1 for pixel shuffle; got {noise}")
    check(not (evaluate and evaluate_train), "--evaluate and --evaluate-train exclude each other; pass one")
    check(workers >= 0, f"--workers must be >= 0, got {workers}")
    over = {"std": runner.MNIST_STD_OF_THE_ORIGINAL} if dataset == "mnist" else {}
    data_cfg = DataConfig(dataset=dataset, data_path=data_path, batch_size=batch_size, noise=max(noise, 0.0),
                          noise_seed=noise_seed, pixel_shuffle=noise < 0, subsample_classes=subsample_classes,
                          class_sample_seed=class_sample_seed, split=split, stratified=stratified,
                          split_seed=split_seed, augmentation=augmentation,
                          normalize="none" if unnormalize else "channel", shuffle=shuffle, num_workers=workers,
                          verify_checksums=verify_checksums, resize=resize, **over)
    train_cfg = TrainConfig(epochs=epochs, optimizer=optimizer, lr=lr, momentum=momentum,
                            weight_decay=0.0 if optimizer == "adam" else weight_decay, schedule="step",
                            lr_step=lr_step, lr_decay=lr_decay, seed=seed, snapshot_every=snapshot_every,
                            snapshot_all_until=snapshot_all_until, train_acc=train_acc,
                            device="cuda" if cuda else device)
    which = "test" if evaluate else ("train" if evaluate_train else None)
    info = runner.train(arch, data_cfg, train_cfg, pretrained=pretrained, kill_plateaus=kill_plateaus,
                        start_epoch=start_epoch, resume_from=resume_from, init_from=init_from,
                        evaluate_only=which, out_dir=out_dir, run_name=run_name)
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
    arch: Arch = None,
    dataset: Dataset = None,
    load_from: LoadFrom = None,
    init_from: Annotated[Optional[str], typer.Option(help="Initialization snapshot: adds each layer's relative "
                                                          "distance from it (l2_dist, l_inf_dist). With --run, "
                                                          "the run's epoch_000 snapshot by default.")] = None,
    run: Run = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="Statistics of torchvision's ImageNet weights "
                                             "(from the local torch cache).")] = False,
    normalize: Normalize = False,
    with_linear: WithLinear = False,
    walk: Walk = "modules",
    seed: Annotated[Optional[int], typer.Option(help="Seed of the random initialization (no --load-from, "
                                                     "--run or --pretrained).")] = None,
    subsample_classes: SubsampleClasses = 0,
    results: Results = None,
    run_name: opt.RunName = None,
) -> None:
    """Projection statistics of a snapshot, of a run's snapshots (step = epoch), of pretrained or random weights."""
    from . import runner

    info = runner.projections(arch=_given(arch), dataset=_given(dataset), load_from=_given(load_from),
                              init_from=_given(init_from), run=_given(run),
                              pretrained=pretrained, normalize=normalize, with_linear=with_linear, walk=walk,
                              seed=seed, subsample_classes=subsample_classes, results=_given(results),
                              run_name=run_name)
    last = info["documents"][-1]
    typer.echo(f"{len(info['documents'])} document(s); epoch {last['epoch']}: net mass {last['net']['mass']:.3f}, "
               f"net mean {last['net']['mean']:.4g}")
    _done("projections", info)


def _epochs(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--epochs takes comma-separated integers such as 0,1,2,5; got {value!r}") from None


@app.command("reinit")
def reinit(
    load_from: LoadFrom = None,
    inits_from: Annotated[Optional[str], typer.Option(help="Text file listing checkpoint snapshots, one per line "
                                                           "(the original's format).")] = None,
    run: Annotated[Optional[str], typer.Option(help="A training run: its snapshots are the checkpoints and its last "
                                                    "one is the trained model (unless --load-from).")] = None,
    epochs: Annotated[Optional[str], typer.Option(help="With --run: only these snapshot epochs, e.g. 0,1,2,5.")] = None,
    arch: Arch = None,
    dataset: Dataset = None,
    data_path: Annotated[Optional[str], typer.Option(help="Dataset folder (default: the one the snapshot was "
                                                          "trained with).")] = None,
    subsample_classes: SubsampleClasses = 0,
    rand: Annotated[bool, typer.Option("--rand", help="Also re-randomize: a fresh draw from the model's own "
                                       "initializer (column 'rand').")] = False,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the --rand draw and of the BatchNorm re-estimation "
                                                     "subset (default: the training seed + 1, so that the draw is "
                                                     "independent of the run's own initialization).")] = None,
    with_linear: WithLinear = False,
    walk: Annotated[str, typer.Option(help="features (the original: model.features only) or modules.")] = "features",
    bn: Annotated[str, typer.Option(help="BatchNorm statistics after a reset: keep (the original) or reestimate "
                                         "(recomputed on training inputs).")] = "keep",
    bn_samples: Annotated[int, typer.Option(help="Training inputs used by --bn reestimate.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 128,
    max_test: Annotated[int, typer.Option(help="Evaluate on the first N test inputs only (0: all).")] = 0,
    cuda: Cuda = False,
    device: opt.Device = "auto",
    results: Results = None,
    run_name: opt.RunName = None,
) -> None:
    """Re-initialization robustness: reset one layer at a time to each checkpoint's weights, measure test accuracy."""
    from . import runner

    info = runner.reinit(load_from=_given(load_from), inits_from=_given(inits_from), run=_given(run),
                         epochs=_epochs(epochs), arch=_given(arch), dataset=_given(dataset),
                         data_path=_given(data_path), subsample_classes=subsample_classes, rand=rand,
                         rand_seed=seed, with_linear=with_linear, walk=walk, bn=bn, bn_samples=bn_samples,
                         batch_size=batch_size, max_test=max_test, device="cuda" if cuda else device,
                         results=_given(results), run_name=run_name)
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
    normalize: Normalize = False,
    arch: Arch = None,
    dataset: Dataset = None,
    results: Results = None,
    run_name: opt.RunName = None,
) -> None:
    """Projection bias (mass, mean, |mass - 0.5|) beside re-initialization robustness per layer, with Spearman's rho."""
    from . import runner

    info = runner.correlate(reinit_src=reinit_results, projections_src=_given(projections_results),
                            checkpoint=_given(checkpoint), normalize=normalize, arch=_given(arch),
                            dataset=_given(dataset), results=_given(results), run_name=run_name)
    typer.echo(info["table"])
    _done("correlate", info)


# -- study (issue 13): the paper's experiment end to end, see study.py ------------------------------------------
def _register_study() -> None:
    from shared.study import register_study

    from . import study

    register_study(app, "hyperplane_bias", study.PRESETS, study.run, study.__doc__.split("\n\n")[0])


_register_study()

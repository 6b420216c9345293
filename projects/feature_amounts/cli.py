"""``geomlab feature-amounts``: layer-wise feature budget variants of VGG (Mundt et al. 2018).

Commands: ``variants`` (list the architectures), ``train`` (one network), ``sweep`` (many, resumable), ``optimize``
(Optuna over the distribution or the widths), ``plot`` (figures of a sweep).
"""
from __future__ import annotations

import json
import re
from typing import Annotated, Optional

import typer

from shared import options as opt
from shared.app import make_app
from shared.errors import UsageError, check

app = make_app("Layer-wise feature amounts (seed 004): skew-normal redistributions of VGG's features, trained with "
               "SGDR and automatic micro-batch splitting; sweeps and Optuna studies logged to MLflow.")

# -- options of this project ---------------------------------------------------------------------------------------
Dataset = Annotated[str, typer.Option(help="Dataset: cifar10, cifar100, mnist, fashion_mnist, kmnist (user files), "
                                           "imagenet (ImageFolder), digits (embedded).")]
PatchSize = Annotated[int, typer.Option("--patch-size", "-p", help="Images are resized to this size; above 100 px "
                                        "the two hidden linear layers get 4096 features instead of 512.")]
Normalize = Annotated[str, typer.Option(help="Input normalization: none (the original's default), channel "
                                             "(per-channel mean/std, the original's --normalize-data) or gcn "
                                             "(global contrast normalization, which the original README promised).")]
Augmentation = Annotated[str, typer.Option(help="Random crop (padding ceil(0.1 x patch)) and horizontal flip: on, "
                                                "off, or auto (on for CIFAR and ImageNet, as the original).")]
Channels = Annotated[int, typer.Option(help="Input channels: 0 keeps the dataset's; 3 repeats gray images "
                                            "(the original did so for MNIST and Fashion-MNIST).")]
ValSplit = Annotated[float, typer.Option("--split", help="Fraction of the training set held out for validation; "
                                         "0 (the original): validate on the test set.")]
TrainFraction = Annotated[float, typer.Option(help="Train on this seeded fraction of the training set (quick runs).")]
Epochs = Annotated[int, typer.Option(help="Training epochs per network (150 = SGDR cycles 10+20+40+80).")]
Lr = Annotated[float, typer.Option("--learning-rate", "--lr", help="Maximum learning rate of SGDR.")]
Nesterov = Annotated[bool, typer.Option(help="Nesterov momentum.")]
VggDepth = Annotated[int, typer.Option(help="VGG depth D = 7 + 3k (16 = VGG-D, 19 = VGG-E); D - 1 widths.")]
WidthMultiplier = Annotated[float, typer.Option(help="Scale the feature budget (e.g. 0.05 for quick runs); variant "
                                                     "ids and validity are those of the full budget.")]
BatchNorm = Annotated[float, typer.Option("--batch-norm", "-bn", help="BatchNorm epsilon; 0 removes BatchNorm.")]
Dropout = Annotated[float, typer.Option(help="Dropout before the classifier layer.")]
WeightInit = Annotated[str, typer.Option(help="kaiming-normal, kaiming-uniform, xavier-normal or xavier-uniform.")]
LrWrEpochs = Annotated[int, typer.Option(help="Length of the first SGDR cycle in epochs.")]
LrWrMul = Annotated[int, typer.Option(help="Factor by which each SGDR cycle is longer than the previous.")]
LrWrMin = Annotated[float, typer.Option(help="Minimum learning rate of SGDR.")]
AbortRule = Annotated[bool, typer.Option(help="Stop a network whose train accuracy after the first SGDR cycle is "
                                              "below twice chance (the original's rule).")]
MemoryLimit = Annotated[Optional[str], typer.Option(help="Memory budget of one training step, e.g. 2GB: the batch is "
                                                         "split when a probe step needs more (CPU: measured heap "
                                                         "peak; GPU: peak allocation). Default: only real "
                                                         "out-of-memory errors split.")]
MicroBatches = Annotated[int, typer.Option(help="Force this many micro-batches per batch of 128 (0: automatic).")]
SplitCache = Annotated[str, typer.Option(help="JSON file remembering the working split per architecture, input "
                                              "shape and device; default: $GEOMLAB_CACHE (~/.cache/geomlab)/"
                                              "feature_amounts_splits.json; '' keeps it in memory only.")]
ProbeSteps = Annotated[int, typer.Option(help="Real training steps per split candidate when probing.")]
KeepSnapshots = Annotated[str, typer.Option(help="Snapshots kept per network: last (the final one), all, none. "
                                                 "While training the newest is always kept for resuming.")]
Fresh = Annotated[bool, typer.Option(help="Ignore earlier runs of the same sweep/variants and start new runs.")]


def _opts(ns: dict):
    from .runner import FAOptions

    o = FAOptions(vgg_depth=ns["vgg_depth"], patch_size=ns["patch_size"], width_multiplier=ns["width_multiplier"],
                  batch_norm=ns["batch_norm"], dropout=ns["dropout"], weight_init=ns["weight_init"],
                  lr_wr_epochs=ns["lr_wr_epochs"], lr_wr_mul=ns["lr_wr_mul"], lr_wr_min=ns["lr_wr_min"],
                  abort_rule=ns["abort_rule"], memory_limit=ns["memory_limit"], micro_batches=ns["micro_batches"],
                  split_cache=ns["split_cache"] or None, probe_steps=ns["probe_steps"],
                  keep_snapshots=ns["keep_snapshots"])
    o.validate()
    return o


def _configs(ns: dict):
    from .runner import make_data_config, make_train_config

    aug = opt.on_off_auto(ns["augmentation"])
    dcfg = make_data_config(ns["dataset"], data_path=ns["data_path"], patch_size=ns["patch_size"],
                            normalize=ns["normalize"], augmentation=aug, channels=ns["channels"],
                            batch_size=ns["batch_size"], split=ns["split"], train_fraction=ns["train_fraction"],
                            verify_checksums=ns["verify_checksums"], download=ns["download"])
    dcfg.validate()
    tcfg = make_train_config(epochs=ns["epochs"], lr=ns["learning_rate"], momentum=ns["momentum"],
                             weight_decay=ns["weight_decay"], nesterov=ns["nesterov"], seed=ns["seed"],
                             device=ns["device"])
    tcfg.validate()
    return dcfg, tcfg, _opts(ns)


def _floats(text: Optional[str], name: str):
    if not text:
        return None
    try:
        return [float(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError:
        raise UsageError(f"{name} must be comma-separated numbers, e.g. {name} 0,4,8; got {text!r}") from None


def _select(ns: dict, opts):
    from .runner import Target, reference_target, variant_list
    from .variants import select_variants

    ids = _floats(ns.get("ids"), "--ids")
    vs = select_variants(variant_list(opts), ns["start"], None if ns["stop"] < 0 else ns["stop"], _floats(ns["means"], "--means"),
                         _floats(ns["scales"], "--scales"), _floats(ns["skews"], "--skews"),
                         [int(i) for i in ids] if ids is not None else None)
    targets = [Target.of(v) for v in vs]
    if ns.get("include_reference"):
        targets.append(reference_target(opts))
    return targets


@app.command("variants")
def variants_cmd(
    vgg_depth: VggDepth = 16,
    patch_size: PatchSize = 32,
    width_multiplier: WidthMultiplier = 1.0,
    num_classes: Annotated[int, typer.Option(help="Classes (for the Parameters column).")] = 10,
    start: Annotated[int, typer.Option(help="First variant index.")] = 0,
    stop: Annotated[int, typer.Option(help="Stop before this index (-1: to the end).")] = -1,
    means: Annotated[Optional[str], typer.Option(help="Only these means, e.g. 0,1,2.")] = None,
    scales: Annotated[Optional[str], typer.Option(help="Only these scales, e.g. 4.0,5.5.")] = None,
    skews: Annotated[Optional[str], typer.Option(help="Only these skews, e.g. -12,8.")] = None,
    ids: Annotated[Optional[str], typer.Option(help="Only these indices, e.g. 0,96,192.")] = None,
    include_reference: Annotated[bool, typer.Option(help="Also list the unmodified VGG.")] = False,
    output_format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """List the valid skew-normal variants (index, id, mean, scale, skew, Parameters, widths)."""
    from .runner import FAOptions
    from .variants import capacity

    check(output_format in ("table", "csv", "json"), f"unknown --format {output_format!r}; use table, csv or json")
    opts = FAOptions(vgg_depth=vgg_depth, patch_size=patch_size, width_multiplier=width_multiplier)
    opts.validate()
    targets = _select(locals(), opts)
    rows = [{"index": t.index, "id": t.vid, "mean": t.mean, "scale": t.scale, "skew": t.skew,
             "parameters": capacity(t.widths, num_classes), "total_width": sum(t.widths), "widths": list(t.widths)}
            for t in targets]
    if output_format == "json":
        typer.echo(json.dumps(rows, indent=1))
        return
    if output_format == "csv":
        typer.echo("index,id,mean,scale,skew,parameters,total_width,widths")
        for r in rows:
            typer.echo(",".join("" if r[k] is None else str(r[k]) for k in list(r)[:-1]) + ',"'
                       + " ".join(map(str, r["widths"])) + '"')
        return
    typer.echo(f"{'index':>5} {'id':24} {'mean':>5} {'scale':>5} {'skew':>5} {'Parameters':>12} {'total':>6}  widths")
    for r in rows:
        typer.echo(f"{_fmt(r['index'], 'd'):>5} {r['id']:24} {_fmt(r['mean'], 'g'):>5} {_fmt(r['scale'], 'g'):>5} "
                   f"{_fmt(r['skew'], 'g'):>5} {r['parameters']:>12,} {r['total_width']:>6}  "
                   + " ".join(map(str, r["widths"])))
    typer.echo(f"{len(rows)} networks (vgg-depth {vgg_depth}, patch {patch_size}, budget x{width_multiplier})")


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


@app.command("train")
def train_cmd(
    variant: Annotated[int, typer.Option(help="Index of the variant to train (see `variants`).")] = 0,
    mean: Annotated[Optional[float], typer.Option(help="Train the skew-normal (mean, scale, skew) given here "
                                                       "instead of a listed variant (all three needed).")] = None,
    scale: Annotated[Optional[float], typer.Option(help="Skew-normal scale (the original's 'variance').")] = None,
    skew: Annotated[Optional[float], typer.Option(help="Skew-normal skew.")] = None,
    widths: Annotated[Optional[str], typer.Option(help="Train these widths (D - 1 comma-separated integers).")] = None,
    reference: Annotated[bool, typer.Option(help="Train the unmodified VGG-D (scaled by --width-multiplier).")] = False,
    allow_invalid: Annotated[bool, typer.Option(help="Train a (mean, scale, skew) that the original's rules "
                                                     "reject.")] = False,
    dataset: Dataset = "cifar10",
    data_path: opt.DataPath = "./data",
    patch_size: PatchSize = 32,
    normalize: Normalize = "none",
    augmentation: Augmentation = "auto",
    channels: Channels = 0,
    batch_size: opt.BatchSize = 128,
    split: ValSplit = 0.0,
    train_fraction: TrainFraction = 1.0,
    verify_checksums: opt.VerifyChecksums = True,
    download: opt.Download = False,
    epochs: Epochs = 150,
    learning_rate: Lr = 0.01,
    momentum: opt.Momentum = 0.9,
    weight_decay: opt.WeightDecay = 5e-4,
    nesterov: Nesterov = False,
    lr_wr_epochs: LrWrEpochs = 10,
    lr_wr_mul: LrWrMul = 2,
    lr_wr_min: LrWrMin = 1e-5,
    abort_rule: AbortRule = True,
    vgg_depth: VggDepth = 16,
    width_multiplier: WidthMultiplier = 1.0,
    batch_norm: BatchNorm = 1e-4,
    dropout: Dropout = 0.5,
    weight_init: WeightInit = "kaiming-normal",
    memory_limit: MemoryLimit = None,
    micro_batches: MicroBatches = 0,
    split_cache: SplitCache = "default",
    probe_steps: ProbeSteps = 1,
    keep_snapshots: KeepSnapshots = "last",
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    resume_from: opt.ResumeFrom = None,
    out_dir: opt.OutDir = None,
) -> None:
    """Train one network (a variant, a given skew-normal, given widths, or the reference VGG) in one MLflow run."""
    from shared.data import load_data

    from .runner import Target, parse_widths, reference_target, train_target, variant_list
    from .variants import invalid_reason, make_variant

    dcfg, tcfg, opts = _configs(locals())
    given = [mean is not None, scale is not None, skew is not None]
    check(sum([any(given), widths is not None, reference]) <= 1,
          "choose one of --mean/--scale/--skew, --widths and --reference (or none, for --variant)")
    if any(given):
        check(all(given), "--mean, --scale and --skew go together; give all three")
        v = make_variant(mean, scale, skew, opts.vgg_depth, opts.patch_size, opts.width_multiplier)
        why = invalid_reason(v)
        check(why is None or allow_invalid, f"the original's rules reject this variant: {why}; "
              "pass --allow-invalid to train it anyway")
        target = Target(f"m{mean:g}_s{scale:g}_a{skew:g}", v.widths, None, v.mean, v.scale, v.skew)
    elif widths is not None:
        target = parse_widths(widths, opts)
    elif reference:
        target = reference_target(opts)
    else:
        vs = variant_list(opts)
        check(0 <= variant < len(vs), f"--variant must be in 0..{len(vs) - 1} for vgg-depth {vgg_depth}, got {variant}")
        target = Target.of(vs[variant])
    data = load_data(dcfg, seed=tcfg.seed)
    res = train_target(target, data, dcfg, tcfg, opts, entry_point="train", out_dir=out_dir, resume_from=resume_from)
    r = res.record
    typer.echo(f"run {res.run_id}: {target.vid} BestVal={r['BestVal']:.2f}% (epoch {r['BestEpoch']}), "
               f"LastVal={r['LastValPrec']:.2f}%, Parameters={r['Parameters']:,}, micro-batch {r['MicroBatch']} "
               f"x {r['Chunks']}" + (f"; {r['StopReason']}" if r.get("StopReason") else ""))


@app.command("sweep")
def sweep_cmd(
    start: Annotated[int, typer.Option(help="First variant index.")] = 0,
    stop: Annotated[int, typer.Option(help="Stop before this variant index (-1: to the end).")] = -1,
    means: Annotated[Optional[str], typer.Option(help="Only variants with these means, e.g. 0,1,2.")] = None,
    scales: Annotated[Optional[str], typer.Option(help="Only these scales, e.g. 4.0,5.5.")] = None,
    skews: Annotated[Optional[str], typer.Option(help="Only these skews, e.g. -12,8.")] = None,
    ids: Annotated[Optional[str], typer.Option(help="Only these variant indices, e.g. 0,96,192.")] = None,
    include_reference: Annotated[bool, typer.Option(help="Also train the unmodified VGG-D.")] = False,
    fresh: Fresh = False,
    dataset: Dataset = "cifar10",
    data_path: opt.DataPath = "./data",
    patch_size: PatchSize = 32,
    normalize: Normalize = "none",
    augmentation: Augmentation = "auto",
    channels: Channels = 0,
    batch_size: opt.BatchSize = 128,
    split: ValSplit = 0.0,
    train_fraction: TrainFraction = 1.0,
    verify_checksums: opt.VerifyChecksums = True,
    download: opt.Download = False,
    epochs: Epochs = 150,
    learning_rate: Lr = 0.01,
    momentum: opt.Momentum = 0.9,
    weight_decay: opt.WeightDecay = 5e-4,
    nesterov: Nesterov = False,
    lr_wr_epochs: LrWrEpochs = 10,
    lr_wr_mul: LrWrMul = 2,
    lr_wr_min: LrWrMin = 1e-5,
    abort_rule: AbortRule = True,
    vgg_depth: VggDepth = 16,
    width_multiplier: WidthMultiplier = 1.0,
    batch_norm: BatchNorm = 1e-4,
    dropout: Dropout = 0.5,
    weight_init: WeightInit = "kaiming-normal",
    memory_limit: MemoryLimit = None,
    micro_batches: MicroBatches = 0,
    split_cache: SplitCache = "default",
    probe_steps: ProbeSteps = 1,
    keep_snapshots: KeepSnapshots = "last",
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """Train all variants (or a selection) as child runs of one parent run; re-run the same command to continue."""
    from .runner import sweep

    dcfg, tcfg, opts = _configs(locals())
    targets = _select(locals(), opts)
    out = sweep(targets, dcfg, tcfg, opts, out_dir=out_dir, run_name=run_name, fresh=fresh, echo=typer.echo)
    typer.echo(f"sweep run {out.parent_run_id}: {len(out.trained)} trained, {len(out.skipped)} already done, "
               f"{len(out.resumed)} resumed, {len(out.failed)} failed; CSV {out.csv_path}")


@app.command("optimize")
def optimize_cmd(
    space: Annotated[str, typer.Option(help="skewnormal: search (mean, scale, skew); widths: search per-layer shares "
                                            "of the budget directly.")] = "skewnormal",
    n_trials: Annotated[int, typer.Option(help="Trials (complete + pruned) the study should hold.")] = 50,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL (default "
                                                         "sqlite:///optuna-feature-amounts.db).")] = None,
    study_name: Annotated[str, typer.Option(help="Study name in the storage.")] = "feature-amounts",
    sampler_seed: Annotated[int, typer.Option(help="Seed of the TPE sampler.")] = 0,
    pruner: Annotated[str, typer.Option(help="median, hyperband or none (fed by per-epoch validation "
                                             "accuracy).")] = "median",
    pruner_warmup: Annotated[int, typer.Option(help="Epochs before the median pruner may stop a trial.")] = 1,
    grid: Annotated[bool, typer.Option(help="Restrict (mean, scale, skew) to the original's grid steps.")] = False,
    reset_running: Annotated[bool, typer.Option(help="Mark trials left running by a stopped process as failed and "
                                                     "queue them again (off when workers share a study).")] = True,
    dataset: Dataset = "cifar10",
    data_path: opt.DataPath = "./data",
    patch_size: PatchSize = 32,
    normalize: Normalize = "none",
    augmentation: Augmentation = "auto",
    channels: Channels = 0,
    batch_size: opt.BatchSize = 128,
    split: ValSplit = 0.0,
    train_fraction: TrainFraction = 1.0,
    verify_checksums: opt.VerifyChecksums = True,
    download: opt.Download = False,
    epochs: Epochs = 150,
    learning_rate: Lr = 0.01,
    momentum: opt.Momentum = 0.9,
    weight_decay: opt.WeightDecay = 5e-4,
    nesterov: Nesterov = False,
    lr_wr_epochs: LrWrEpochs = 10,
    lr_wr_mul: LrWrMul = 2,
    lr_wr_min: LrWrMin = 1e-5,
    abort_rule: AbortRule = True,
    vgg_depth: VggDepth = 16,
    width_multiplier: WidthMultiplier = 1.0,
    batch_norm: BatchNorm = 1e-4,
    dropout: Dropout = 0.5,
    weight_init: WeightInit = "kaiming-normal",
    memory_limit: MemoryLimit = None,
    micro_batches: MicroBatches = 0,
    split_cache: SplitCache = "default",
    probe_steps: ProbeSteps = 1,
    keep_snapshots: KeepSnapshots = "last",
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    run_name: opt.RunName = None,
) -> None:
    """Optuna study (TPE) maximizing the best validation accuracy; each trial is a child run; resumable."""
    from .runner import optimize

    dcfg, tcfg, opts = _configs(locals())
    out = optimize(space, n_trials, dcfg, tcfg, opts, storage=storage, study_name=study_name,
                   sampler_seed=sampler_seed, pruner=pruner, pruner_warmup=pruner_warmup, grid=grid,
                   reset_running=reset_running, run_name=run_name, echo=typer.echo)
    best = f"best BestVal {out.best_value:.2f}% at {out.best_params}" if out.best_value is not None else \
        "no trial completed"
    typer.echo(f"study {out.study_name} ({out.storage}), run {out.parent_run_id}: {out.n_complete} complete, "
               f"{out.n_pruned} pruned; {best}")


@app.command("plot")
def plot_cmd(
    source: Annotated[str, typer.Argument(help="A sweep's parent run id (or runs:/<id>), or its CSV (local path or "
                                               "MLflow URI).")],
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """Accuracy against mean and skew (best over scales) and against parameter count, from a sweep."""
    from .runner import plot

    run_id, paths = plot(source, out_dir=out_dir, run_name=run_name)
    typer.echo(f"plot run {run_id}: " + ", ".join(str(p) for p in paths))


#: Per-epoch metrics our commands add to the shared Trainer's (for `geomlab sweep feature_amounts <command>`).
SWEEP_METRICS = {"train": ["lr_last_step", "sgdr_cycle"]}


# -- study (issue 13): the paper's experiment end to end, see study.py ------------------------------------------
def _register_study() -> None:
    from shared.study import register_study

    from . import study

    register_study(app, "feature_amounts", study.PRESETS, study.run, study.__doc__.split("\n\n")[0])


_register_study()

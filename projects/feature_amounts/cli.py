"""``geomlab feature-amounts``: layer-wise feature budget variants of VGG (Mundt et al. 2018).

Commands: ``variants`` (list the architectures), ``train`` (one network), ``sweep`` (many, resumable), ``plot``
(figures of a sweep). Optuna over (mean, scale, skew) is ``geomlab sweep feature_amounts train --space
projects/feature_amounts/spaces/optimize.yaml``: a point the original's rules reject is recorded as invalid.
"""
from __future__ import annotations

import json
import re
from typing import Annotated, Optional

import typer

from shared import options as opt
from shared.app import make_app
from shared.errors import InvalidPoint, UsageError, check

app = make_app("Layer-wise feature amounts (Mundt et al. 2018, arXiv:1812.05836): skew-normal redistributions of "
               "VGG's features, trained with SGDR and automatic micro-batch splitting; sweeps and Optuna studies logged "
               "to MLflow.")

# -- options of this project (the shared ones come from shared.options) --------------------------------------------
_O = opt.Opt
PATCH_SIZE = _O("patch_size", int, "Images are resized to this size; above 100 px the two hidden linear layers get "
                "4096 features instead of 512.", 32, ("--patch-size", "-p"))
VGG_DEPTH = _O("vgg_depth", int, "VGG depth D = 7 + 3k (16 = VGG-D, 19 = VGG-E); D - 1 widths.", 16)
WIDTH_MULTIPLIER = _O("width_multiplier", float, "Scale the feature budget (e.g. 0.05 for quick runs); variant ids "
                      "and validity are those of the full budget.", 1.0)
MODEL = (
    PATCH_SIZE,
    _O("channels", int, "Input channels: 0 keeps the dataset's; 3 repeats gray images (the original did so for "
       "MNIST and Fashion-MNIST).", 0),
    opt.TRAIN_FRACTION,
    _O("nesterov", bool, "Nesterov momentum.", False),
    _O("lr_wr_epochs", int, "Length of the first SGDR cycle in epochs.", 10),
    _O("lr_wr_mul", int, "Factor by which each SGDR cycle is longer than the previous.", 2),
    _O("lr_wr_min", float, "Minimum learning rate of SGDR.", 1e-5),
    _O("abort_rule", bool, "Stop a network whose train accuracy after the first SGDR cycle is below twice chance "
       "(the original's rule).", True),
    VGG_DEPTH, WIDTH_MULTIPLIER,
    _O("batch_norm", float, "BatchNorm epsilon; 0 removes BatchNorm.", 1e-4, ("--batch-norm", "-bn")),
    _O("dropout", float, "Dropout before the classifier layer.", 0.5),
    opt.INIT,
    _O("memory_limit", Optional[str], "Memory budget of one training step, e.g. 2GB: the batch is split when a probe "
       "step needs more (CPU: measured heap peak; GPU: peak allocation). Default: only real out-of-memory errors "
       "split."),
    _O("micro_batches", int, "Force this many micro-batches per batch of 128 (0: automatic).", 0),
    _O("split_cache", str, "JSON file remembering the working split per architecture, input shape and device; "
       "default: $GEOMLAB_CACHE (~/.cache/geomlab)/feature_amounts_splits.json; '' keeps it in memory only.",
       "default"),
    _O("probe_steps", int, "Real training steps per split candidate when probing.", 1),
    _O("keep_snapshots", str, "Snapshots kept per network: last (the final one), all, none. While training the "
       "newest is always kept for resuming.", "last"),
)
SELECT = (
    _O("start", int, "First variant index.", 0),
    _O("stop", int, "Stop before this variant index (-1: to the end).", -1),
    _O("means", Optional[str], "Only variants with these means, e.g. 0,1,2."),
    _O("scales", Optional[str], "Only variants with these scales, e.g. 4.0,5.5."),
    _O("skews", Optional[str], "Only variants with these skews, e.g. -12,8."),
    _O("ids", Optional[str], "Only these variant indices, e.g. 0,96,192."),
    _O("include_reference", bool, "Also the unmodified VGG-D (scaled by --width-multiplier).", False),
)
#: The original's defaults (Mundt et al. 2018): SGD lr 0.01 with SGDR over 150 epochs, no normalization.
DEFAULTS = {"dataset": "cifar10", "normalize": "none", "augmentation": "auto", "epochs": 150, "lr": 0.01,
            "init": "kaiming-normal"}
#: SGD with SGDR only (no other optimizer or step schedule); a snapshot every epoch (resumable).
NOT_HERE = ("optimizer", "lr_step", "lr_decay", "snapshot_every", "snapshot_all_until", "train_acc")


def _opts(o: dict):
    from .config import FAOptions

    f = FAOptions(vgg_depth=o["vgg_depth"], patch_size=o["patch_size"], width_multiplier=o["width_multiplier"],
                  batch_norm=o["batch_norm"], dropout=o["dropout"], weight_init=o["init"],
                  lr_wr_epochs=o["lr_wr_epochs"], lr_wr_mul=o["lr_wr_mul"], lr_wr_min=o["lr_wr_min"],
                  abort_rule=o["abort_rule"], memory_limit=o["memory_limit"], micro_batches=o["micro_batches"],
                  split_cache=o["split_cache"] or None, probe_steps=o["probe_steps"],
                  keep_snapshots=o["keep_snapshots"])
    f.validate()
    return f


def _configs(o: dict):
    from .config import make_data_config, make_train_config

    dcfg = make_data_config(o["dataset"], data_path=o["data_path"], patch_size=o["patch_size"],
                            normalize=o["normalize"], augmentation=o["augmentation"], channels=o["channels"],
                            batch_size=o["batch_size"], split=o["split"], split_seed=o["split_seed"],
                            train_fraction=o["train_fraction"], subsample_classes=o["subsample_classes"],
                            verify_checksums=o["verify_checksums"], download=o["download"])
    dcfg = opt.data_config(o, base=dcfg, only=("noise", "noise_seed", "random_labels", "pixel_shuffle",
                                               "class_sample_seed", "stratified", "shuffle"))
    dcfg.validate()
    tcfg = opt.with_compute(make_train_config(epochs=o["epochs"], lr=o["lr"], momentum=o["momentum"],
                                              weight_decay=o["weight_decay"], nesterov=o["nesterov"],
                                              seed=o["seed"], device=o["device"]), o)
    tcfg.validate()
    return dcfg, tcfg, _opts(o)


def _floats(text: Optional[str], name: str):
    if not text:
        return None
    try:
        return [float(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError:
        raise UsageError(f"{name} must be comma-separated numbers, e.g. {name} 0,4,8; got {text!r}") from None


def _select(ns: dict, opts):
    from .config import Target, reference_target, variant_list
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
@opt.options(VGG_DEPTH, PATCH_SIZE, WIDTH_MULTIPLIER, SELECT)
def variants_cmd(
    *,
    num_classes: Annotated[int, typer.Option(help="Classes (for the Parameters column).")] = 10,
    o: opt.Values,
    output_format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """List the valid skew-normal variants (index, id, mean, scale, skew, Parameters, widths)."""
    from .config import FAOptions
    from .variants import capacity

    check(output_format in ("table", "csv", "json"), f"unknown --format {output_format!r}; use table, csv or json")
    opts = FAOptions(vgg_depth=o.vgg_depth, patch_size=o.patch_size, width_multiplier=o.width_multiplier)
    opts.validate()
    targets = _select(o, opts)
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
    typer.echo(f"{len(rows)} networks (vgg-depth {o.vgg_depth}, patch {o.patch_size}, budget x{o.width_multiplier})")


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


@app.command("train")
@opt.options(opt.DATA, opt.TRAIN, MODEL, opt.RUN_OUTPUT, defaults=DEFAULTS, exclude=NOT_HERE)
def train_cmd(
    *,
    variant: Annotated[int, typer.Option(help="Index of the variant to train (see `variants`).")] = 0,
    mean: Annotated[Optional[float], typer.Option(help="Train the skew-normal (mean, scale, skew) given here "
                                                       "instead of a listed variant (all three needed).")] = None,
    scale: Annotated[Optional[float], typer.Option("--sn-scale", help="Skew-normal scale (the original's "
                                                                      "'variance'); `scale` in a sweep space.")] = None,
    skew: Annotated[Optional[float], typer.Option(help="Skew-normal skew.")] = None,
    widths: Annotated[Optional[str], typer.Option(help="Train these widths (D - 1 comma-separated integers).")] = None,
    reference: Annotated[bool, typer.Option(help="Train the unmodified VGG-D (scaled by --width-multiplier).")] = False,
    allow_invalid: Annotated[bool, typer.Option(help="Train a (mean, scale, skew) that the original's rules "
                                                     "reject.")] = False,
    o: opt.Values,
) -> None:
    """Train one network (a variant, a given skew-normal, given widths, or the reference VGG) in one MLflow run."""
    from shared.data import load_data

    from .config import Target, parse_widths, reference_target, variant_list
    from .training import train_target
    from .variants import invalid_amount, invalid_reason, make_variant

    dcfg, tcfg, opts = _configs(o)
    given = [mean is not None, scale is not None, skew is not None]
    check(sum([any(given), widths is not None, reference]) <= 1,
          "choose one of --mean/--sn-scale/--skew, --widths and --reference (or none, for --variant)")
    if any(given):
        check(all(given), "--mean, --sn-scale and --skew go together; give all three")
        v = make_variant(mean, scale, skew, opts.vgg_depth, opts.patch_size, opts.width_multiplier)
        why = invalid_reason(v)
        if why is not None and not allow_invalid:  # a sweep records it as invalid and samples another point
            raise InvalidPoint(f"the original's rules reject this variant: {why}; pass --allow-invalid to train it "
                               "anyway", violation=invalid_amount(v))
        target = Target(f"m{mean:g}_s{scale:g}_a{skew:g}", v.widths, None, v.mean, v.scale, v.skew)
    elif widths is not None:
        target = parse_widths(widths, opts)
    elif reference:
        target = reference_target(opts)
    else:
        vs = variant_list(opts)
        check(0 <= variant < len(vs), f"--variant must be in 0..{len(vs) - 1} for vgg-depth {o.vgg_depth}, got "
              f"{variant}")
        target = Target.of(vs[variant])
    data = load_data(dcfg, seed=tcfg.seed)
    res = train_target(target, data, dcfg, tcfg, opts, entry_point="train", out_dir=o.out_dir,
                       resume_from=o.resume_from, run_name=o.run_name, fresh=o.fresh,
                       resume_override=o.resume_override)
    r = res.record
    typer.echo(f"run {res.run_id}: {target.vid} BestVal={r['BestVal']:.2f}% (epoch {r['BestEpoch']}), "
               f"LastVal={r['LastValPrec']:.2f}%, Parameters={r['Parameters']:,}, micro-batch {r['MicroBatch']} "
               f"x {r['Chunks']}" + (f"; {r['StopReason']}" if r.get("StopReason") else ""))


@app.command("sweep")
@opt.options(SELECT, opt.DATA, opt.TRAIN, MODEL, opt.RUN_OUTPUT, defaults=DEFAULTS,
             exclude=NOT_HERE + ("resume_from", "resume_override"))
def sweep_cmd(*, o: opt.Values) -> None:
    """Train all variants (or a selection) as child runs of one parent run; re-run the same command to continue."""
    from .sweep_runs import sweep

    dcfg, tcfg, opts = _configs(o)
    targets = _select(o, opts)
    out = sweep(targets, dcfg, tcfg, opts, out_dir=o.out_dir, run_name=o.run_name, fresh=o.fresh)
    typer.echo(f"sweep run {out.parent_run_id}: {len(out.trained)} trained, {len(out.skipped)} already done, "
               f"{len(out.resumed)} resumed, {len(out.failed)} failed; CSV {out.csv_path}")


@app.command("plot")
def plot_cmd(
    source: Annotated[str, typer.Argument(help="A sweep's parent run id (or runs:/<id>), or its CSV (local path or "
                                               "MLflow URI).")],
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """Accuracy against mean and skew (best over scales) and against parameter count, from a sweep."""
    from .sweep_runs import plot

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

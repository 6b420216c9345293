"""Every CLI option that more than one command takes, declared once, and the groups commands take them in.

An option is an :class:`Opt` (name, type, help, default). A command takes a single option through its
``Annotated`` type (``out_dir: opt.OutDir = None``), or whole groups through :func:`options`, which adds the
group's options to the command (project defaults by ``defaults=``, never a re-declaration) and hands them to the
command packed in one :class:`Values` argument ``o``:

    @app.command("train")
    @opt.options(opt.DATA, opt.TRAIN, opt.RUN, defaults={"dataset": "cifar10", "lr": 0.1})
    def train(arch: opt.Arch = None, *, o: opt.Values) -> None:
        data_cfg, train_cfg = opt.data_config(o), opt.train_config(o)

The options stay ordinary Click parameters (``--help`` lists them, ``geomlab sweep`` introspects them). Old names
are declared as further long names of an option and are hidden by :class:`shared.app.GeomlabCommand`. This module
imports neither torch nor the data/training code (``geomlab --help`` stays fast).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Optional

import typer

from shared.errors import check


@dataclass(frozen=True)
class Opt:
    """One option: its Python name, type, help text, default, and names (first long name shown, later ones hidden
    aliases)."""

    name: str
    type: Any
    help: str
    default: Any = None
    decls: tuple = ()
    kwargs: dict = field(default_factory=dict, hash=False)

    @property
    def annotated(self):
        return Annotated[self.type, typer.Option(*self.decls, help=self.help, **self.kwargs)]


def on_off_auto(value, option: str = "--augmentation") -> bool | None:
    """Parse an ``auto|on|off`` option (true/false accepted too): None for auto, else the boolean."""
    table = {"auto": None, "on": True, "off": False, "true": True, "false": False}
    key = "auto" if value is None else str(value).lower()
    check(key in table, f"{option} must be auto, on or off, got {value!r}")
    return table[key]


def _augmentation(value):  # a Typer callback receives the value alone
    return value if value is None or isinstance(value, bool) else on_off_auto(value)


#: Flags that set another option to a value (hidden; old spellings): {option: {flag: value}}.
VALUE_ALIASES = {"device": {"--cuda": "cuda"}, "normalize": {"--unnormalize": "none"}}

_O = Opt
# -- data ------------------------------------------------------------------------------------------------------------
DATASET = _O("dataset", Optional[str], "Dataset name (`geomlab datasets` lists them; a project refuses those its "
             "models cannot take). Analyses of a snapshot default to the dataset it was trained on.")
DATA_PATH = _O("data_path", Optional[str], "Root folder of the dataset files (torchvision layouts). Analyses of a "
               "snapshot default to the folder it was trained with.", "./data", ("--data-path", "--dataset-path"))
BATCH_SIZE = _O("batch_size", int, "Training batch size (depth-limit fit: 0 = the whole training split, "
                "full-batch gradient descent as the thesis' code).", 128)
EVAL_BATCH_SIZE = _O("eval_batch_size", int, "Batch size of evaluation passes.", 1000)
NOISE = _O("noise", float, "Fraction of training labels corrupted, in [0, 1]; a corrupted label always differs "
           "from the true one (hyperplane-bias also reads a negative value as --pixel-shuffle, the original's "
           "convention).", 0.0, ("--noise", "--noisy"))
NOISE_SEED = _O("noise_seed", int, "Seed of the label noise, the random labels and the pixel shuffle.", 0)
RANDOM_LABELS = _O("random_labels", bool, "Replace every training label by one drawn uniformly from all classes, "
                   "independent of the image (a control without learnable signal).", False)
PIXEL_SHUFFLE = _O("pixel_shuffle", bool, "Shuffle the pixels of each training image with its own fixed "
                   "permutation.", False)
SUBSAMPLE_CLASSES = _O("subsample_classes", int, "Keep only this many classes (0: all), the same in every split "
                       "(analyses: the classes the snapshot was trained with, for files of the original code).", 0)
CLASS_SAMPLE_SEED = _O("class_sample_seed", int, "Seed choosing the subsampled classes.", 42)
SPLIT = _O("split", float, "Fraction of the training set held out for validation, in (0, 1); 0: none (evaluation "
           "uses the test set).", 0.0)
STRATIFIED = _O("stratified", bool, "Stratify the validation split by class.", False)
SPLIT_SEED = _O("split_seed", int, "Seed of the validation split (and of --train-fraction).", 0)
TRAIN_FRACTION = _O("train_fraction", Optional[float], "Train on this seeded fraction of the training set (quick "
                    "runs; depth-limit fit: 0.2 of mnist and cifar10 by default, as the thesis' code).", 1.0,
                    ("--train-fraction", "--training-data-percentage"))
AUGMENTATION = _O("augmentation", str, "Random crop and horizontal flip of training images: on, off, or auto (the "
                  "original's rule: cone-geometry on for cifar10, feature-amounts on for CIFAR and ImageNet, "
                  "off elsewhere).", "off", kwargs={"callback": _augmentation})
NORMALIZE = _O("normalize", str, "Input normalization: channel (per-channel mean/std), gcn (global contrast "
               "normalization per image) or none.", "channel")
SHUFFLE = _O("shuffle", bool, "Reshuffle the training set every epoch.", True)
VERIFY_CHECKSUMS = _O("verify_checksums", bool, "Check CIFAR files against torchvision's md5 sums.", True)
DOWNLOAD = _O("download", bool, "Let torchvision download missing files (needs network).", False)

# -- training --------------------------------------------------------------------------------------------------------
EPOCHS = _O("epochs", int, "Number of training epochs.", 10)
OPTIMIZER = _O("optimizer", str, "Optimizer: sgd, adam or adamw (cone-geometry and hyperplane-bias: sgd or adam; "
               "their adam has no weight decay, as the originals).", "sgd")
LR = _O("lr", float, "Learning rate (feature-amounts: the maximum of each SGDR cycle).", 0.05,
        ("--lr", "--learning-rate"))
MOMENTUM = _O("momentum", float, "SGD momentum.", 0.9)
WEIGHT_DECAY = _O("weight_decay", float, "Weight decay (L2).", 5e-4)
LR_STEP = _O("lr_step", int, "Decay the learning rate every this many epochs (0: constant).", 0)
LR_DECAY = _O("lr_decay", float, "Multiplicative learning-rate decay at each step.", 0.1)
SEED = _O("seed", Optional[int], "Random seed: of training (weights, batch order, augmentation, dropout), or of an "
          "analysis' random draws (random weights, re-initializations, landscape directions), or of a sweep's sampler "
          "(each trial number gets its own stream, so parallel workers do not repeat points).", 0)
SNAPSHOT_EVERY = _O("snapshot_every", int, "Save a snapshot every this many epochs (0: only the last one; the "
                    "initialization is kept as epoch_000).", 0)
KEEP_RESUME_EVERY = _O("keep_resume_every", int, "Snapshots keep the optimizer and RNG state (what an exact "
                       "resume needs) only in the newest one; also keep it in every snapshot at a multiple of this "
                       "epoch (0: the newest only). The weights of every snapshot are kept.", 0)
SNAPSHOT_ALL_UNTIL = _O("snapshot_all_until", int, "Also save a snapshot after each of the first N epochs.", 0)
TRAIN_ACC = _O("train_acc", bool, "Also evaluate accuracy on the training split at each evaluation.", False)
DEVICE = _O("device", str, "auto, cpu or cuda.", "auto")
RESUME_FROM = _O("resume_from", Optional[str], "Continue from a snapshot (path or runs:/<id>/snapshots/"
                 "epoch_NNN.pt): weights, optimizer, schedule, RNG, epoch.")
RESUME_OVERRIDE = _O("resume_override", Optional[str], "With --resume-from: options allowed to differ from the "
                     "snapshot's (comma list, e.g. lr,optimizer); they take effect from the resumed epoch and are "
                     "logged in the run's tag resume_overrides.")
PRECISION = _O("precision", str, "fp32; bf16-mixed: fp32 weights with bfloat16 autocast compute (training and "
               "evaluation; statistics stay fp32); or auto: bf16-mixed where the hardware computes in bfloat16 "
               "(AVX-512-BF16, AMX, a GPU), fp32 elsewhere.", "fp32")
CHANNELS_LAST = _O("channels_last", bool, "Use the channels_last (NHWC) memory format for convolutions (faster with "
                   "bf16-mixed; snapshots unchanged).", False)
KILL_PLATEAUS = _O("kill_plateaus", bool, "Stop a run that stopped learning, by the original's rule "
                   "(cone-geometry: the smoothed loss at batch 100 of epoch 20 is not half that of the first epoch; "
                   "hyperplane-bias: a snapshot's accuracy equals the previous one's).", False)
INIT = _O("init", str, "Weight initialization scheme; the choices depend on the project's models (an unknown name "
          "lists them; see the project README).", decls=("--init", "--weight-init"))

# -- run / output ----------------------------------------------------------------------------------------------------
OUT_DIR = _O("out_dir", Optional[str], "Local folder for snapshots, results and figures (default "
             "outputs/<project>/<run id>, with outputs/ beside a SQLite tracking store, else in the working folder, "
             "or $GEOMLAB_OUTPUT_DIR); everything is also logged to MLflow.", None,
             ("--out-dir", "--out", "--results", "--models-path"))
RUN_NAME = _O("run_name", Optional[str], "MLflow run name.")
SYSTEM_METRICS = _O("system_metrics", bool, "Log MLflow's system metrics (CPU, memory, disk, network; GPU when "
                    "present) into the run every 10 s (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL sets the interval).",
                    False)
ARCH = _O("arch", Optional[str], "Architecture (`geomlab archs --project <name>` lists a project's; run without it "
          "to see them). Analyses of a geomlab snapshot read it from the snapshot.")
RUN = _O("run", Optional[str], "An MLflow run (id or runs:/<id>) whose logged snapshots or metrics the command "
         "reads.")
FRESH = _O("fresh", bool, "Start over: ignore the finished work of an earlier run of the same command.", False)

DATA = (DATASET, DATA_PATH, BATCH_SIZE, NOISE, NOISE_SEED, RANDOM_LABELS, PIXEL_SHUFFLE, SUBSAMPLE_CLASSES, CLASS_SAMPLE_SEED, SPLIT,
        STRATIFIED, SPLIT_SEED, TRAIN_FRACTION, AUGMENTATION, NORMALIZE, SHUFFLE, VERIFY_CHECKSUMS, DOWNLOAD)
TRAIN = (EPOCHS, OPTIMIZER, LR, MOMENTUM, WEIGHT_DECAY, LR_STEP, LR_DECAY, SEED, SNAPSHOT_EVERY, SNAPSHOT_ALL_UNTIL,
         KEEP_RESUME_EVERY, TRAIN_ACC, DEVICE, PRECISION, CHANNELS_LAST, RESUME_FROM, RESUME_OVERRIDE, FRESH,
         SYSTEM_METRICS)
RUN_OUTPUT = (OUT_DIR, RUN_NAME)

# every option also as an Annotated type for a single use: ``out_dir: opt.OutDir = None`` (OUT_DIR -> OutDir)
for _spec in [v for v in list(globals().values()) if isinstance(v, Opt)]:
    globals()["".join(w.capitalize() for w in _spec.name.split("_"))] = _spec.annotated


class Values(dict):
    """The values of a command's grouped options, by name (``o.lr`` or ``o["lr"]``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def options(*groups, defaults: dict | None = None, exclude: tuple = ()):
    """Add the options of ``groups`` (tuples of :class:`Opt`, or single ones) to a command, at the place of its
    ``o`` parameter, and pass their values packed in ``o``. ``defaults`` overrides an option's default for this
    command; ``exclude`` drops options (by name) the command does not support."""
    specs: list[Opt] = []
    for g in groups:
        for spec in (g if isinstance(g, tuple) else (g,)):
            if spec.name not in exclude and spec.name not in {s.name for s in specs}:
                specs.append(spec)
    defaults = dict(defaults or {})
    unknown = set(defaults) - {s.name for s in specs}
    assert not unknown, f"defaults for options not in the groups: {sorted(unknown)}"

    def decorate(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()]
        at = [p.name for p in own].index("o")
        added = [inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, annotation=s.annotated,
                                   default=defaults.get(s.name, s.default)) for s in specs]
        clash = {p.name for p in own} & {s.name for s in specs}
        assert not clash, f"{fn.__name__} declares grouped options itself: {sorted(clash)}"
        params = own[:at] + added + own[at + 1:]
        names = [s.name for s in specs]

        @functools.wraps(fn)
        def command(**kwargs):
            o = Values((n, kwargs.pop(n)) for n in names)
            if not o.get("system_metrics"):
                return fn(**kwargs, o=o)
            from shared.tracking import Tracker  # every run this command opens samples MLflow's system metrics

            before, Tracker.system_metrics = Tracker.system_metrics, True
            try:
                return fn(**kwargs, o=o)
            finally:
                Tracker.system_metrics = before

        command.__signature__ = sig.replace(parameters=params, return_annotation=None)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # Typer must see the new signature, not the function's own
        return command

    return decorate


def _pick(cls, values: dict, only=None) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names and v is not None and (only is None or k in only)}


def data_config(values: dict, base=None, only=None, **overrides):
    """A DataConfig from a command's options (fields not given keep DataConfig's defaults). With ``base`` (a
    project's own config), only the fields in ``only`` are taken from ``values``."""
    from dataclasses import replace

    from shared.data import DataConfig

    picked = {**_pick(DataConfig, values, only), **overrides}
    return replace(base, **picked) if base is not None else DataConfig(**picked)


def train_config(values: dict, **overrides):
    """A TrainConfig from a command's options."""
    from shared.train import TrainConfig

    return TrainConfig(**{**_pick(TrainConfig, values), **overrides})


def with_compute(cfg, values: dict):
    """``cfg`` (a TrainConfig a project built itself) with the options of a command that change how it runs and
    what it keeps, not what it computes: ``--precision``, ``--channels-last`` and ``--keep-resume-every``."""
    from dataclasses import replace

    return replace(cfg, precision=values.get("precision", cfg.precision),
                   channels_last=values.get("channels_last", cfg.channels_last),
                   keep_resume_every=values.get("keep_resume_every", cfg.keep_resume_every))


#: The data options a project's own data-config builder does not take; commands apply them on top of it.
EXTRA_DATA = ("random_labels", "pixel_shuffle", "subsample_classes", "class_sample_seed", "split", "stratified", "split_seed",
              "train_fraction", "shuffle")

"""The edges of the hyperplane-bias project: data, snapshots, MLflow runs, files and figures around the pure code.

Each public function here is one CLI command (``cli.py`` only parses options) and is also what the demo calls:

* :func:`train`        -- the seed's train.py on the shared Trainer;
* :func:`projections`  -- projection statistics of one snapshot, a random init, a pretrained model, or every
                          snapshot of a training run (metrics with step = epoch);
* :func:`reinit`       -- the re-initialization sweep and its heatmap;
* :func:`correlate`    -- projection bias beside re-initialization robustness.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from shared import interrupts
from shared.data import DATASETS, Data, DataConfig, load_data
from shared.errors import UsageError, check
from shared.experiment import default_out_dir, load_model_from, read_snapshot, run_ref, run_training
from shared.experiment import run_snapshots as shared_run_snapshots
from shared.files import ensure_writable_dir, load_weights, write_json, write_text
from shared.models import rebuild
from shared.plotting import save_figure
from shared.progress import say
from shared.tracking import Tracker, list_run_artifacts, load_json_input, parse_run_ref
from shared.train import Callback, KillPlateaus, TrainConfig, evaluate, resolve_device, seed_everything

from . import correlate as corr
from . import plots
from .models import PROJECT, build_model, canonical_arch
from .projections import WALKS, epoch_from_name, projection_metrics, projection_statistics, projections_document
from .reinit import (BN_MODES, fresh_layer_tensors, layer_tensors, reinit_document, reinit_layers_for,
                     reinit_metrics, reinit_sweep)

# (channels, size) of each dataset's images, to build a model without reading the data (random init, pretrained,
# snapshots of the original code)
IMAGE_SHAPES = {"mnist": (1, 28), "fashion_mnist": (1, 28), "kmnist": (1, 28), "digits": (1, 28),
                "cifar10": (3, 32), "cifar100": (3, 32), "imagenet": (3, 224)}
MNIST_STD_OF_THE_ORIGINAL = (0.3015,)  # the original normalized MNIST with std 0.3015 (not 0.3081)


def dataset_label(dataset: str, subsample_classes: int = 0) -> str:
    """The original's dataset field: ``<dataset>`` or ``<dataset>_<n>`` when n classes were subsampled."""
    return f"{dataset}_{subsample_classes}" if subsample_classes else dataset


def model_shape(dataset: str | None, subsample_classes: int = 0, num_classes: int = 0) -> tuple[int, int, int]:
    """(num_classes, in_channels, input_size) of a dataset without loading it."""
    if not dataset:
        raise UsageError(f"no dataset given; pass --dataset with one of: {', '.join(IMAGE_SHAPES)} (it sets the "
                         "class count and input shape of the model)")
    if dataset not in IMAGE_SHAPES:
        raise UsageError(f"unknown or non-image dataset {dataset!r} for this project; pass --dataset with one of: "
                         f"{', '.join(IMAGE_SHAPES)}")
    k = num_classes or (subsample_classes or DATASETS.get(dataset).num_classes)
    c, s = IMAGE_SHAPES[dataset]
    return k, c, s


# ------------------------------------------------------------------------------------------------------------------
# snapshots

@dataclass
class Loaded:
    """A model loaded from a snapshot (or built), with what the documents need to know about it."""

    model: nn.Module
    snap: dict
    source: str  # what the user passed (path or URI), or a description
    name: str  # file stem (the original's result name)
    epoch: int
    arch: str
    source_run_id: str | None = None

    @property
    def data_config(self) -> dict | None:
        return self.snap.get("data_config")


def _is_geomlab(snap: dict) -> bool:
    return bool(snap.get("model_spec"))


def load_trained(source: str, arch: str | None = None, dataset: str | None = None,
                 subsample_classes: int = 0) -> Loaded:
    """Load a snapshot: geomlab snapshots rebuild themselves; the original's files need --arch and --dataset."""
    def original(snap: dict, arch_name: str, data) -> nn.Module:
        return load_weights(build_model(arch_name, *model_shape(dataset, subsample_classes)), snap)

    arch_name = canonical_arch(arch) if arch else None
    model, snap, run_id = load_model_from(source, arch_name, project=PROJECT, original=original)
    stem = Path(snap["path"]).stem
    epoch = int(snap.get("epoch", 0)) if _is_geomlab(snap) else epoch_from_name(stem)
    model.eval()
    return Loaded(model, snap, str(source), stem, epoch, (snap.get("model_spec") or {}).get("arch") or arch_name, run_id)


def run_snapshots(run: str) -> list[tuple[int, str]]:
    """(epoch, URI) of every snapshot of a training run, by epoch."""
    run_id = parse_run_ref(run)
    out = [(e, uri) for e, uri in shared_run_snapshots(run_id) if e is not None]
    if not out:
        raise UsageError(f"run {run_id} has no snapshots (snapshots/epoch_NNN.pt); pass the id of a training run "
                         "(geomlab hyperplane-bias train ...)")
    return out


def _data_for(loaded: Loaded, dataset: str | None, data_path: str | None, subsample_classes: int) -> Data:
    """The data a snapshot was trained on (its recorded options), or --dataset for the original's files."""
    cfg = loaded.data_config
    if cfg:
        names = {f.name for f in fields(DataConfig)}
        kw = {k: v for k, v in cfg.items() if k in names}
        if dataset and dataset != kw.get("dataset"):
            raise UsageError(f"snapshot {loaded.source} was trained on {kw.get('dataset')}, not {dataset}; drop "
                             "--dataset")
        if data_path:
            kw["data_path"] = data_path
        return load_data(DataConfig(**kw))
    check(dataset is not None, f"snapshot {loaded.source} does not record its dataset; pass --dataset")
    over = {"std": MNIST_STD_OF_THE_ORIGINAL} if dataset == "mnist" else {}
    return load_data(DataConfig(dataset=dataset, data_path=data_path or "./data",
                                subsample_classes=subsample_classes, **over))


def _tensors(loader, limit: int = 0, max_bytes: float = 4e9) -> tuple[torch.Tensor, torch.Tensor]:
    """All (or the first ``limit``) inputs and labels of a loader, as two tensors."""
    xs, ys, n = [], [], 0
    total = getattr(loader, "num_samples", None)
    for x, y in loader:
        if not xs and total:
            need = x[0].numel() * x.element_size() * (min(limit, total) if limit else total)
            if need > max_bytes:
                raise UsageError(f"the evaluation set ({total} inputs, {need / 1e9:.1f} GB as tensors) is too large "
                                 "to hold in memory; pass --max-test N to use the first N test inputs")
        xs.append(x)
        ys.append(y)
        n += len(y)
        if 0 < limit <= n:
            break
    check(n > 0, "the evaluation set is empty")
    X, Y = torch.cat(xs), torch.cat(ys)
    return (X[:limit], Y[:limit]) if limit else (X, Y)


# ------------------------------------------------------------------------------------------------------------------
# training

class StartEpoch(Callback):
    """--start-epoch: begin counting epochs at N (only when not resuming), as the original."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_start(self, trainer):
        if trainer.epoch == 0 and self.epoch > 0:
            trainer.epoch = self.epoch


def train(arch: str | None, data_cfg: DataConfig, train_cfg: TrainConfig, *, pretrained: bool = False,
          kill_plateaus: bool = False, start_epoch: int = 0, resume_from: str | None = None,
          init_from: str | None = None, evaluate_only: str | None = None, out_dir: str | None = None,
          run_name: str | None = None, progress: bool = True, fresh: bool = False,
          resume_override: str | None = None) -> dict[str, Any]:
    """Train (or only evaluate, ``evaluate_only`` = "test" | "train") one model; returns a summary dict."""
    arch = canonical_arch(arch)
    check(start_epoch >= 0, f"--start-epoch must be >= 0, got {start_epoch}")
    check(not (resume_from and init_from), "--resume-from and --init-from exclude each other: resume continues a "
          "run, init-from starts a new one from given weights")
    data_cfg.validate()
    train_cfg.validate()
    data = load_data(data_cfg, seed=train_cfg.seed)
    check(data.task == "classification" and len(data.input_shape) == 3,
          f"{data_cfg.dataset} is not an image classification set; use one of: {', '.join(IMAGE_SHAPES)}")
    c, h, w = data.input_shape
    seed_everything(train_cfg.seed)
    model = build_model(arch, data.num_classes, c, h if h == w else (h, w), pretrained=pretrained)
    source_run = None
    if init_from:
        snap, source_run = read_snapshot(init_from, "--init-from snapshot")
        load_weights(model, snap)
    if evaluate_only:
        return _evaluate_only(model, data, arch, data_cfg, train_cfg, evaluate_only, resume_from or init_from,
                              run_name)
    callbacks: list[Callback] = []
    if kill_plateaus:
        callbacks.append(KillPlateaus("acc-equal", only_at_snapshots=True))  # the original's rule
    if start_epoch and not resume_from:
        callbacks.append(StartEpoch(start_epoch))
    tags = {"source_run_id": source_run} if source_run else {}
    out = run_training(project=PROJECT, entry_point="train", arch=arch, data_cfg=data_cfg, train_cfg=train_cfg,
                       model=model, data=data, callbacks=callbacks, out_dir=out_dir, resume_from=resume_from,
                       fresh=fresh, resume_override=resume_override, run_name=run_name, progress=progress, tags=tags,
                       params={"pretrained": pretrained, "kill_plateaus": kill_plateaus, "start_epoch": start_epoch,
                               "init_from": init_from or ""},
                       snapshot_meta={"dataset_label": dataset_label(data_cfg.dataset, data_cfg.subsample_classes)})
    res = out.result
    return {"run_id": out.run_id, "epochs": res.epochs_done, "converged": res.converged,
            "stop_reason": res.stop_reason, "final": res.final, "out_dir": str(out.out_dir)}


def _evaluate_only(model, data, arch, data_cfg, train_cfg, which, source, run_name) -> dict[str, Any]:
    if source:
        load_weights(model, read_snapshot(source)[0])
    dev = resolve_device(train_cfg.device)
    loader = data.test if which == "test" else data.train_eval
    model = model.to(dev, memory_format=torch.channels_last) if train_cfg.channels_last else model.to(dev)
    res = evaluate(model, loader, dev, data.task, precision=train_cfg.precision,
                   channels_last=train_cfg.channels_last)
    t = Tracker()
    with t.start(PROJECT, "evaluate", run_name=run_name, tags={"arch": arch, "dataset": data_cfg.dataset},
                 params={"arch": arch, "split": which, "snapshot": source or ""}) as tr:
        tr.log_data(data)
        tr.log_metrics({f"{which}_{k}": v for k, v in res.items()})
    return {"run_id": t.run_id, "split": which, **res}


# ------------------------------------------------------------------------------------------------------------------
# projections

def _init_state(init_from: str | None) -> tuple[dict | None, str | None]:
    if not init_from:
        return None, None
    snap, run_id = read_snapshot(init_from, "--init-from snapshot")
    return snap["model_state_dict"], run_id


def _results_dir(results: str | None, tracker: Tracker, sub: str) -> Path:
    base = Path(results) if results else default_out_dir(PROJECT, tracker.run_id)
    return ensure_writable_dir(base / sub, "results directory")


def projections(*, arch: str | None = None, dataset: str | None = None, load_from: str | None = None,
                init_from: str | None = None, run: str | None = None, pretrained: bool = False,
                normalize: bool = False, with_linear: bool = False, walk: str = "modules",
                seed: int | None = None, subsample_classes: int = 0, results: str | None = None,
                run_name: str | None = None) -> dict[str, Any]:
    """Projection statistics, logged as JSON artifacts and metrics of one MLflow run. Modes:
    ``run`` (every snapshot of a training run, step = epoch), ``load_from`` (one snapshot), ``pretrained``,
    or a random initialization of ``arch`` (seeded by ``seed``)."""
    check(walk in WALKS, f"unknown --walk {walk!r}; use one of: {', '.join(WALKS)}")
    modes = [m for m, on in (("--run", run), ("--load-from", load_from), ("--pretrained", pretrained)) if on]
    check(len(modes) <= 1, f"{' and '.join(modes)} exclude each other; pass one source of weights")
    opts = {"normalize": normalize, "with_linear": with_linear, "walk": walk}
    if run:
        return _projections_over_run(run, init_from, opts, results, run_name)
    if load_from:
        loaded = load_trained(load_from, arch, dataset, subsample_classes)
        ds = (loaded.data_config or {}).get("dataset") or dataset or "?"
        sub = (loaded.data_config or {}).get("subsample_classes", subsample_classes)
        items = [(loaded.name, loaded.epoch, loaded.model, loaded.arch)]
        source_run = loaded.source_run_id
    else:
        name_arch = canonical_arch(arch)
        if pretrained and not dataset:
            dataset = "imagenet"  # the original's only case: 1000 ImageNet classes
        k, c, s = model_shape(dataset, subsample_classes)
        model = build_model(name_arch, k, c, s, pretrained=pretrained, seed=seed)
        what = "pretrained" if pretrained else "init"
        items = [(f"{what}_{name_arch}", -1 if pretrained else 0, model, name_arch)]
        ds, sub, source_run = dataset, subsample_classes, None
    init_state, init_run = _init_state(init_from)
    t = Tracker()
    tags = {"source_run_id": source_run or init_run} if (source_run or init_run) else {}
    with t.start(PROJECT, "projections", run_name=run_name, tags={**tags, "arch": items[0][3]},
                 params={**opts, "load_from": load_from or "", "init_from": init_from or "",
                         "pretrained": pretrained, "seed": "" if seed is None else seed,
                         "dataset": ds}) as tr:
        out_dir = _results_dir(results, tr, "projections")
        docs = []
        for name, epoch, model, arch_name in items:
            interrupts.check()  # a safe point: between snapshots
            stats = projection_statistics(model, normalize=normalize, walk=walk, with_linear=with_linear,
                                          init_state=init_state)
            doc = projections_document(stats, arch_name, dataset_label(ds, sub), epoch, seed)
            write_json(out_dir / f"{name}.json", doc)
            tr.log_dict(doc, f"projections/{name}.json")
            tr.log_metrics(projection_metrics(doc), step=max(epoch, 0))
            docs.append(doc)
    return {"run_id": t.run_id, "documents": docs, "out_dir": str(out_dir)}


def _projections_over_run(run: str, init_from: str | None, opts: dict, results: str | None,
                          run_name: str | None) -> dict[str, Any]:
    snaps = run_snapshots(run)
    run_id = parse_run_ref(run)
    if init_from is None and snaps[0][0] == 0:
        init_from = snaps[0][1]  # distances from the run's own initialization
    init_state, _ = _init_state(init_from)
    t = Tracker()
    with t.start(PROJECT, "projections", run_name=run_name, tags={"source_run_id": run_id},
                 params={**opts, "run": run_id, "init_from": init_from or "", "snapshots": len(snaps)}) as tr:
        out_dir = _results_dir(results, tr, "projections")
        docs = []
        for epoch, uri in snaps:
            interrupts.check()  # a safe point: between snapshots
            loaded = load_trained(uri)
            cfg = loaded.data_config or {}
            stats = projection_statistics(loaded.model, init_state=init_state, **opts)
            doc = projections_document(stats, loaded.arch, dataset_label(cfg.get("dataset", "?"),
                                                                         cfg.get("subsample_classes", 0)), epoch)
            name = f"epoch_{epoch:03d}"
            write_json(out_dir / f"{name}.json", doc)
            tr.log_dict(doc, f"projections/{name}.json")
            tr.log_metrics(projection_metrics(doc), step=epoch)
            docs.append(doc)
        tr.set_tags({"arch": docs[-1]["arch"], "dataset": docs[-1]["dataset"]})
        for stat in ("mass", "mean"):
            fig = plots.projections_over_training(docs, stat)
            save_figure(fig, out_dir / f"projections_{stat}.png", tr)
    return {"run_id": t.run_id, "documents": docs, "out_dir": str(out_dir)}


# ------------------------------------------------------------------------------------------------------------------
# re-initialization

def read_inits_list(path: str) -> list[str]:
    """The original's --inits-from: one snapshot path per line; blank lines and missing files are skipped (warned)."""
    p = Path(path).expanduser()
    check(p.is_file(), f"--inits-from {p} does not exist; pass a text file with one snapshot path per line")
    out = []
    for line in p.read_text().splitlines():
        s = line.strip()
        if not s:
            continue
        q = Path(s).expanduser()
        if not q.is_absolute() and not q.exists() and (p.parent / q).exists():
            q = p.parent / q  # relative to the list file
        if q.exists() or s.startswith("runs:/"):
            out.append(str(q) if q.exists() else s)
        else:
            say(f"warning: {s} (listed in {p}) does not exist; skipped")
    check(bool(out), f"--inits-from {p} lists no existing snapshot")
    return out


def reinit(*, load_from: str | None = None, inits_from: str | None = None, run: str | None = None,
           epochs: Sequence[int] | None = None, arch: str | None = None, dataset: str | None = None,
           data_path: str | None = None, subsample_classes: int = 0, rand: bool = True,
           rand_seed: int | None = None,
           with_linear: bool = False, walk: str = "features", bn: str = "keep", bn_samples: int = 2000,
           batch_size: int = 128, max_test: int = 0, device: str = "auto", results: str | None = None,
           run_name: str | None = None) -> dict[str, Any]:
    """Re-initialization robustness of a trained snapshot; one MLflow run with the JSON, metrics and heatmap."""
    check(walk in WALKS, f"unknown --walk {walk!r}; use one of: {', '.join(WALKS)}")
    check(bn in BN_MODES, f"unknown --bn {bn!r}; use one of: {', '.join(BN_MODES)}")
    check(batch_size >= 1, f"--batch-size must be >= 1, got {batch_size}")
    check(max_test >= 0 and bn_samples >= 1, "--max-test must be >= 0 and --bn-samples >= 1")
    snaps = run_snapshots(run) if run else []
    if not load_from:
        check(bool(snaps), "pass --load-from <trained snapshot> or --run <training run id>")
        load_from = snaps[-1][1]
    trained = load_trained(load_from, arch, dataset, subsample_classes)
    sources: list[str] = []
    if run:
        missing = sorted(set(epochs or ()) - {e for e, _ in snaps})
        check(not missing, f"run {parse_run_ref(run)} has no snapshot of epoch(s) {', '.join(map(str, missing))}; "
              f"its snapshots are of epochs {', '.join(str(e) for e, _ in snaps)}")
        chosen = [(e, u) for e, u in snaps if u != load_from and (not epochs or e in set(epochs))]
        sources += [u for _, u in chosen]
    if inits_from:
        sources += read_inits_list(inits_from)
    check(bool(sources) or rand, "no checkpoint to re-initialize from: pass --inits-from, --run or --rand")
    dev = resolve_device(device)
    model = trained.model.to(dev).eval()
    layers = reinit_layers_for(model, walk, with_linear)
    checkpoints: dict[str, Any] = {}
    origin: dict[str, str] = {}
    scratch = copy.deepcopy(model)  # receives each checkpoint's weights (checked against the architecture)
    for src in sources:
        snap, _ = read_snapshot(src, "checkpoint")
        if _same_weights(snap, trained.snap):  # e.g. --load-from is a local copy of the run's last snapshot
            say(f"note: {src} holds the trained model itself (--load-from {trained.source}); skipped, it is not a "
                "checkpoint to re-initialize from")
            continue
        key = str(int(snap["epoch"]) if _is_geomlab(snap) and "epoch" in snap else epoch_from_name(Path(src).stem))
        if key in checkpoints:
            say(f"warning: two checkpoints for epoch {key}; keeping {origin[key]}, skipping {src}")
            continue
        load_weights(scratch, snap)
        checkpoints[key] = layer_tensors(scratch.state_dict(), model, layers, source=src)
        origin[key] = src
    del scratch
    check(bool(checkpoints) or rand, "no checkpoint to re-initialize from other than the trained model itself: pass "
          "--inits-from, --run with earlier snapshots, or --rand")
    if rand:
        if rand_seed is None:  # independent of the training run's own initialization (seeded by its seed)
            rand_seed = int((trained.snap.get("train_config") or {}).get("seed", 0)) + 1
        checkpoints["rand"] = fresh_layer_tensors(_factory(trained), layers, rand_seed, like=model)
        same = [k for k, ck in checkpoints.items() if k != "rand" and
                all(torch.equal(ck[n][0], checkpoints["rand"][n][0]) for n in ck)]
        if same:
            say(f"warning: the --rand draw (seed {rand_seed}) equals checkpoint {same[0]}: it is the training run's "
                 "own initialization; pass another --seed for an independent draw")
    data = _data_for(trained, dataset, data_path, subsample_classes)
    X, y = _tensors(data.test, max_test)
    X, y = X.to(dev), y.to(dev)
    X_bn = None
    if bn == "reestimate":
        X_tr, _ = _tensors(data.train_eval, 0)
        g = torch.Generator().manual_seed(rand_seed or 0)
        X_bn = X_tr[torch.randperm(len(X_tr), generator=g)[:bn_samples]].to(dev)
    res = reinit_sweep(model, layers, checkpoints, X, y, batch_size=batch_size, bn=bn, X_bn=X_bn)
    cfg = trained.data_config or {}
    ds = dataset_label(cfg.get("dataset", dataset or "?"), cfg.get("subsample_classes", subsample_classes))
    doc = reinit_document(res, trained.arch, ds, trained.epoch)
    doc["load_from"] = trained.source
    doc["checkpoints"] = {**origin, **({"rand": f"fresh initialization, seed {rand_seed}"} if rand else {})}
    doc["walk"], doc["with_linear"] = walk, with_linear
    source_run = trained.source_run_id or (parse_run_ref(run) if run else None)
    t = Tracker()
    with t.start(PROJECT, "reinit", run_name=run_name,
                 tags={"arch": trained.arch, "dataset": ds, **({"source_run_id": source_run} if source_run else {})},
                 params={"load_from": trained.source, "inits_from": inits_from or "", "run": run or "",
                         "rand": rand, "rand_seed": "" if rand_seed is None else rand_seed,
                         "with_linear": with_linear, "walk": walk, "bn": bn,
                         "bn_samples": bn_samples if bn == "reestimate" else "", "batch_size": batch_size,
                         "max_test": max_test, "checkpoints": ",".join(checkpoints)}) as tr:
        tr.log_data(data)
        out_dir = _results_dir(results, tr, "reinit")
        name = f"reinit_{trained.name}"
        write_json(out_dir / f"{name}.json", doc)
        tr.log_dict(doc, f"reinit/{name}.json")
        tr.log_metrics(reinit_metrics(doc))
        save_figure(plots.reinit_heatmap(doc), out_dir / f"{name}.png", tr)
    return {"run_id": t.run_id, "document": doc, "out_dir": str(out_dir)}


def _same_weights(a: dict, b: dict) -> bool:
    """Do two snapshots hold the same weights (every tensor of their model state equal)?"""
    sa, sb = a.get("model_state_dict", a), b.get("model_state_dict", b)
    return sa.keys() == sb.keys() and all(
        isinstance(sa[k], torch.Tensor) and isinstance(sb[k], torch.Tensor) and sa[k].shape == sb[k].shape
        and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def _factory(trained: Loaded) -> Callable[[], nn.Module]:
    spec = getattr(trained.model, "geomlab_spec", None) or trained.snap.get("model_spec")
    return lambda: rebuild(spec)


# ------------------------------------------------------------------------------------------------------------------
# correlate

def _reinit_doc(src: str) -> tuple[dict, str | None]:
    """A reinit JSON from a path or artifact URI, or from a reinit run (id or runs:/<id>: its reinit/*.json)."""
    run_id = run_ref(src)
    if run_id is None:
        return load_json_input(src, "re-initialization results")
    arts = [a for a in list_run_artifacts(run_id, "reinit") if a.endswith(".json")]
    check(len(arts) == 1, f"run {run_id} has {len(arts)} re-initialization results (reinit/*.json); pass the run id "
          "of a `hyperplane-bias reinit` run or the JSON file itself")
    doc, _ = load_json_input(f"runs:/{run_id}/{arts[0]}", "re-initialization results")
    return doc, run_id


def correlate(*, reinit_src: str, projections_src: str | None = None, checkpoint: str | None = None,
              normalize: bool = False, arch: str | None = None, dataset: str | None = None,
              results: str | None = None, run_name: str | None = None) -> dict[str, Any]:
    """Projection bias of the trained model beside its re-initialization robustness, with Spearman's rho."""
    rdoc, reinit_run = _reinit_doc(reinit_src)
    check("init_from_epoch" in rdoc and "top1_test" in rdoc,
          f"{reinit_src} is not a re-initialization result (no init_from_epoch / top1_test)")
    if projections_src:
        pdoc, _ = load_json_input(projections_src, "projection statistics")
    else:
        check("load_from" in rdoc, f"{reinit_src} does not say which model it re-initialized (an original file?); "
              "pass --projections <projections JSON of that model>")
        trained = load_trained(rdoc["load_from"], arch or rdoc.get("arch"), dataset or rdoc.get("dataset"))
        with_linear = any(l.get("kind") == "linear" for l in rdoc.get("layers", []))
        stats = projection_statistics(trained.model, normalize=normalize, with_linear=with_linear,
                                      walk="modules")
        pdoc = projections_document(stats, trained.arch, rdoc.get("dataset", "?"), trained.epoch)
    result = corr.correlate(pdoc, rdoc, checkpoint)
    table = corr.format_table(result)
    t = Tracker()
    with t.start(PROJECT, "correlate", run_name=run_name,
                 tags={"arch": rdoc.get("arch", ""), "dataset": rdoc.get("dataset", ""),
                       **({"source_run_id": reinit_run} if reinit_run else {})},
                 params={"reinit": reinit_src, "projections": projections_src or "", "normalize": normalize,
                         "checkpoint": result["checkpoint"]}) as tr:
        out_dir = _results_dir(results, tr, "correlate")
        write_json(out_dir / "correlate.json", result)
        write_text(out_dir / "table.txt", table + "\n")
        tr.log_dict(result, "correlate/correlate.json")
        tr.log_text(table + "\n", "correlate/table.txt")
        tr.log_metrics(corr.correlation_metrics(result))
        save_figure(plots.correlation_figure(result), out_dir / "correlation.png", tr)
    return {"run_id": t.run_id, "result": result, "table": table, "out_dir": str(out_dir)}

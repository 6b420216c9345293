"""The root commands (datasets, archs, train, evaluate) and :func:`root_app`, the whole command tree with every
discovered project mounted (shared.cli adds ``sweep`` on top; the sweep driver resolves its targets here)."""
from __future__ import annotations

import importlib
from typing import Annotated, Optional

import typer

from shared import options as opt
from shared.app import make_app

HELP = ("geomlab: reproduce, compare and extend research on what training does to network weights. Every command "
        "logs to MLflow (see `mlflow ui`).")


def register(app: typer.Typer) -> None:
    """Add the root commands to ``app``."""

    @app.command("datasets")
    def list_datasets() -> None:
        """List the datasets and where each is read from."""
        from shared.data import DATASETS

        for name in DATASETS:
            spec = DATASETS.get(name)
            typer.echo(f"{name:15s} {spec.task:15s} classes/outputs={spec.num_classes}")

    @app.command("archs")
    def list_archs(project: Annotated[str, typer.Option(help="only this project's architectures (e.g. "
                                                             "cone_geometry)")] = "") -> None:
        """List the registered architectures."""
        from shared.models import MODELS, load_project_models

        load_project_models()
        for name in MODELS.names(**({"project": project} if project else {})):
            typer.echo(f"{name:24s} {MODELS.meta(name).get('project')}")

    @app.command("train")
    @opt.options(opt.DATA, opt.TRAIN, opt.RUN_OUTPUT, defaults={"dataset": "digits"})
    def train(
        arch: opt.Arch = None,
        *,
        o: opt.Values,
        width: Annotated[Optional[int], typer.Option(help="Width option of the generic baselines (lenet_small, "
                                                          "mlp).")] = None,
    ) -> None:
        """Train a generic baseline (lenet_small, mlp) with the shared loop; a project's architectures train with
        that project's own `train` (e.g. `geomlab cone-geometry train --arch VGG9`)."""
        from shared.experiment import run_training

        model_options = {"width": width} if width is not None and arch == "lenet_small" else \
            ({"hidden": width} if width is not None and arch == "mlp" else {})
        out = run_training(project="shared", entry_point="train", arch=arch, data_cfg=opt.data_config(o),
                           train_cfg=opt.train_config(o), model_options=model_options, out_dir=o.out_dir,
                           resume_from=o.resume_from, run_name=o.run_name, fresh=o.fresh,
                           resume_override=o.resume_override)
        final = out.result.final
        typer.echo(f"run {out.run_id}: " + ", ".join(f"{k}={v:.4f}" for k, v in final.items()
                                                     if k.endswith(("acc", "loss"))))

    @app.command("evaluate")
    def evaluate_cmd(
        snapshot: Annotated[str, typer.Argument(help="Snapshot path or MLflow URI (runs:/<id>/snapshots/"
                                                     "epoch_NNN.pt).")],
        dataset: opt.Dataset = "digits",
        data_path: opt.DataPath = "./data",
        subset: Annotated[str, typer.Option("--subset", "--split", help="Which part of the dataset: test or "
                                            "train.")] = "test",
        arch: opt.Arch = None,
        device: opt.Device = "auto",
        precision: opt.Precision = "fp32",
        channels_last: opt.ChannelsLast = False,
    ) -> None:
        """Evaluate a snapshot: loss, top-1 and top-5 accuracy."""
        from shared.data import DataConfig, load_data
        from shared.errors import check
        from shared.experiment import load_model_from
        import torch

        from shared.train import PRECISIONS, evaluate, resolve_device

        check(subset in ("test", "train"), f"--subset must be test or train, got {subset!r}")
        data = load_data(DataConfig(dataset=dataset, data_path=data_path))
        model, _, _ = load_model_from(snapshot, arch=arch, data=data)
        loader = data.test if subset == "test" else data.train_eval
        dev = resolve_device(device)
        check(precision in PRECISIONS, f"unknown --precision {precision!r}; use {' or '.join(PRECISIONS)}")
        model = model.to(dev, memory_format=torch.channels_last) if channels_last else model.to(dev)
        res = evaluate(model, loader, dev, data.task, precision=precision, channels_last=channels_last)
        typer.echo(" ".join(f"{k}={v:.4f}" for k, v in res.items()))


def project_apps() -> dict[str, str]:
    """``{sub-command: module}`` of every project with a ``cli.py`` (an ``app`` in it)."""
    from shared.projects import cli_name, project_modules

    return {cli_name(name): module for name, module in project_modules("cli").items()}


def root_app(help: str = HELP) -> typer.Typer:
    """The ``geomlab`` tree: the root commands and one sub-app per discovered project."""
    app = make_app(help)
    register(app)
    for name, module in project_apps().items():
        app.add_typer(importlib.import_module(module).app, name=name)
    return app


#: Options `geomlab sweep shared <command>` needs in the space although they default to None (see shared.sweep.command).
SWEEP_REQUIRED = {"train": ["arch"]}

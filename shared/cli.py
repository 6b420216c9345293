"""The ``geomlab`` command: one Typer app with a sub-app per project.

Every app is made with :func:`make_app`, whose command group turns :class:`~shared.errors.UsageError` into
``error: <message>`` on stderr and exit code 2 (no traceback), and Ctrl-C into exit code 130. MLproject entry points
call ``python -m shared.cli <project> <command> ...``, the same code as the console script.
"""
from __future__ import annotations

import importlib
import os
import sys

import typer

from shared.app import make_app  # noqa: F401  (re-exported: projects may import it from here)
from shared.errors import UsageError

PROJECT_APPS = {
    "cone-geometry": "projects.cone_geometry.cli",
    "hyperplane-bias": "projects.hyperplane_bias.cli",
    "depth-limit": "projects.depth_limit.cli",
    "feature-amounts": "projects.feature_amounts.cli",
}


app = make_app("geomlab: reproduce, compare and extend research on what training does to network weights. "
               "Every command logs to MLflow (see `mlflow ui`).")


@app.command("datasets")
def list_datasets() -> None:
    """List the datasets and where each is read from."""
    from shared.data import DATASETS

    for name in DATASETS:
        spec = DATASETS.get(name)
        typer.echo(f"{name:15s} {spec.task:15s} classes/outputs={spec.num_classes}")


@app.command("archs")
def list_archs(project: str = typer.Option("", help="only this project's architectures (e.g. cone_geometry)")) -> None:
    """List the registered architectures."""
    from shared.models import MODELS, load_project_models

    load_project_models()
    for name in MODELS.names(**({"project": project} if project else {})):
        typer.echo(f"{name:24s} {MODELS.meta(name).get('project')}")


def _mount() -> None:
    from shared import commands

    commands.register(app)
    for name, module in PROJECT_APPS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue  # project CLI not present in this checkout
            raise
        app.add_typer(mod.app, name=name)
    try:
        sweep = importlib.import_module("shared.sweep")
    except ModuleNotFoundError as e:
        if e.name != "shared.sweep":
            raise
    else:
        sweep.register(app)



def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        app(args=argv, prog_name="geomlab")
    except UsageError as e:  # raised outside a command (e.g. while mounting)
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    # `python -m shared.cli` (MLproject entry points): run the imported module's app, so that project CLIs importing
    # shared.cli mount onto the same app (and it is not built twice).
    import shared.cli as _cli

    _cli.main()
else:
    _mount()

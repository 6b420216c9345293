"""The ``geomlab`` command: one Typer app with a sub-app per project (discovered: every ``projects/<name>/cli.py``
with an ``app``) and ``sweep``.

Every app is made with :func:`shared.app.make_app`, whose command group turns :class:`~shared.errors.UsageError`
into ``error: <message>`` on stderr and exit code 2 (no traceback), and Ctrl-C into exit code 130. MLproject entry
points call ``python -m shared.cli <project> <command> ...``, the same code as the console script. Building the
app imports no torch, MLflow or Optuna: commands import them when they run.
"""
from __future__ import annotations

import os
import sys

import typer

from shared import sweep
from shared.commands import root_app
from shared.errors import UsageError

app = root_app()
sweep.register(app)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        app(args=argv, prog_name="geomlab")
    except UsageError as e:  # raised outside a command
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

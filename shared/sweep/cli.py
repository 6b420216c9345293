"""``geomlab sweep``: the command (registered on the app that holds the commands it sweeps)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from shared import options as opt

from .space import key
from .storage import STORAGE_ENV



def register(app: typer.Typer) -> None:
    """Add ``sweep`` to ``app``; its trials run the commands of ``app`` (taken when the sweep starts)."""
    @app.command("sweep")
    def sweep_cmd(
        project: Annotated[str, typer.Argument(help="Project folder name (cone_geometry, hyperplane_bias, depth_limit, "
                                                    "feature_amounts) or `shared` for the root commands (train).")],
        entry: Annotated[str, typer.Argument(help="The project's command each trial runs (e.g. train).")],
        space: Annotated[str, typer.Option(help="Search space YAML: params (float/int/categorical, log, step), "
                                                "fixed values, optional extra metrics.")],
        n_trials: Annotated[int, typer.Option(help="Total COMPLETE+PRUNED trials of the study; a re-run (or another "
                                                   "worker) runs only the missing ones.")] = 20,
        study: Annotated[Optional[str], typer.Option(help="Study name; the same name continues the study "
                                                          "[default: <project>-<command>-<space file name>].")] = None,
        storage: Annotated[str, typer.Option(envvar=STORAGE_ENV, show_envvar=True, show_default=False,
                                             help="Optuna storage URL shared by all workers: "
                                                  "postgresql://user@host/db for several machines, the password in "
                                                  "~/.pgpass or PGPASSFILE, never in the URL (default: "
                                                  "sqlite:///<cwd>/optuna.db).")] = "",
        sampler: Annotated[str, typer.Option(help="tpe (default), grid (every combination; floats need a step) or "
                                                  "random.")] = "tpe",
        pruner: Annotated[str, typer.Option(help="Stop unpromising trials early on the per-epoch metric: median, "
                                                 "hyperband or none.")] = "median",
        metric: Annotated[str, typer.Option(help="Per-epoch metric to optimize (val_acc needs a validation split; "
                                                 "test_acc, train_loss, ...).")] = "val_acc",
        direction: Annotated[str, typer.Option(help="maximize, minimize or auto (minimize loss/error/time "
                                                    "metrics, maximize the others).")] = "auto",
        seed: opt.Seed = None,
        objective: Annotated[str, typer.Option(help="A trial's value: the metric's last epoch (last) or its best "
                                                    "epoch (best).")] = "last",
        heartbeat: Annotated[int, typer.Option(help="Seconds between heartbeats of a running trial; a trial silent for "
                                                    "2x this is failed and retried.")] = 30,
        max_failures: Annotated[int, typer.Option(help="Stop after this many failed trials in a row.")] = 3,
    ) -> None:
        """Sweep a command's options with Optuna; every trial is an MLflow child run of the study's parent run."""
        import optuna
        import typer.main

        from shared import interrupts

        from .driver import Settings, Sweep

        name = study or f"{key(project)}-{entry}-{Path(space).stem}"
        settings = Settings(project, entry, space, n_trials, name, storage, sampler, pruner, metric, direction, seed,
                            objective, heartbeat, max_failures)
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sw = Sweep(settings, typer.main.get_command(app))
        interrupts.install()  # Ctrl-C / SIGTERM: the trial stops at its next safe point, is KILLED and queued again
        try:
            sw.prepare()
            sw.run()
        finally:
            sw.close()
            optuna.logging.set_verbosity(level)

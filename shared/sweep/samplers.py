"""Samplers and pruners: registries (a project may add its own), built from the space and the seed."""
from __future__ import annotations

from typing import TYPE_CHECKING

from shared.registry import Registry

from .space import grid_values

if TYPE_CHECKING:
    from .space import Space

SAMPLERS: Registry = Registry("sampler", "--sampler")
PRUNERS: Registry = Registry("pruner", "--pruner")


def _tpe(space: "Space", seed: int | None):
    import optuna

    return optuna.samplers.TPESampler(seed=seed)


def _random(space: "Space", seed: int | None):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _grid(space: "Space", seed: int | None):
    import optuna

    class Grid(optuna.samplers.GridSampler):
        """Workers agree on the grid's order only through the seed (the same in every worker: --seed or 0); the
        sweep loop stops by counting, so the sampler's own `study.stop()` (meant for Study.optimize) is left out."""

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return Grid({k: grid_values(k, d) for k, d in space.distributions.items()}, seed=seed)


SAMPLERS.register("tpe", _tpe)
SAMPLERS.register("grid", _grid)
SAMPLERS.register("random", _random)
PRUNERS.register("median", lambda epochs: __import__("optuna").pruners.MedianPruner())
PRUNERS.register("hyperband", lambda epochs: __import__("optuna").pruners.HyperbandPruner(
    min_resource=1, max_resource=epochs if epochs else "auto"))
PRUNERS.register("none", lambda epochs: __import__("optuna").pruners.NopPruner())



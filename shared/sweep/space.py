"""The space file: what Optuna samples (``params:``), what every trial gets (``fixed:``), extra metrics."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import UsageError, check

PARAM_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
              "categorical": {"type", "choices"}}


def grid_values(name: str, dist) -> list:
    import numpy as np
    import optuna.distributions as od

    if isinstance(dist, od.CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, od.IntDistribution):
        check(not dist.log, f"the grid sampler cannot enumerate the log-scale int parameter {name}; drop `log` or "
                            "use categorical choices")
        return list(range(dist.low, dist.high + 1, dist.step))
    check(dist.step is not None, f"the grid sampler needs a `step` for the float parameter {name} (or categorical "
                                 "choices); or use --sampler tpe/random")
    n = int(round((dist.high - dist.low) / dist.step))
    return [float(v) for v in np.round(dist.low + dist.step * np.arange(n + 1), 12)]


@dataclass
class Space:
    path: Path
    text: str
    params: dict[str, dict]  # name (underscores) -> spec as written
    fixed: dict[str, Any]
    metrics: list[str]
    distributions: dict = field(default_factory=dict)  # name -> optuna distribution

    def grid_size(self) -> int:
        return math.prod(len(grid_values(k, d)) for k, d in self.distributions.items())


def key(name: Any) -> str:
    return str(name).replace("-", "_")


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_space(path: str | os.PathLike) -> Space:
    """Parse and check a space file (without the command: names and values are checked by :func:`check_space`)."""
    import yaml
    import optuna.distributions as od

    p = Path(path).expanduser()
    check(p.is_file(), f"space file {p} does not exist; pass --space with a YAML file (see "
                       "projects/<name>/spaces/ for examples)")
    text = p.read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UsageError(f"space file {p} is not valid YAML{where} ({getattr(e, 'problem', None) or e}); fix "
                         "the file") from None
    check(isinstance(doc, dict), f"space file {p} must be a mapping with `params:` (and optional `fixed:`, "
                                 f"`metrics:`), got {type(doc).__name__}")
    unknown = set(doc) - {"params", "fixed", "metrics"}
    check(not unknown, f"space file {p}: unknown top-level key(s) {', '.join(map(str, sorted(unknown)))}; use "
                       "params, fixed, metrics")
    params, fixed, metrics = doc.get("params") or {}, doc.get("fixed") or {}, doc.get("metrics") or []
    check(isinstance(params, dict) and params, f"space file {p}: `params:` must map at least one parameter name "
                                               "to {type: float|int|categorical, ...}")
    check(isinstance(fixed, dict), f"space file {p}: `fixed:` must map option names to values")
    check(isinstance(metrics, list) and all(isinstance(m, str) for m in metrics),
          f"space file {p}: `metrics:` must be a list of metric names")
    space = Space(p, text, {}, {}, list(metrics))
    for raw, spec in params.items():
        name = key(raw)
        where = f"space file {p}: params.{raw}"
        check(isinstance(spec, dict) and "type" in spec,
              f"{where} must be a mapping with `type: float|int|categorical`")
        kind = spec["type"]
        check(kind in PARAM_KEYS, f"{where}: unknown type {kind!r}; use float, int or categorical")
        extra = set(spec) - PARAM_KEYS[kind]
        check(not extra, f"{where}: unknown key(s) {', '.join(map(str, sorted(extra)))} for type {kind}; use "
                         f"{', '.join(sorted(PARAM_KEYS[kind] - {'type'}))}")
        try:
            if kind == "categorical":
                choices = spec.get("choices")
                check(isinstance(choices, list) and choices and all(
                    c is None or isinstance(c, (bool, int, float, str)) for c in choices),
                    f"{where}: `choices` must be a non-empty list of plain values")
                check(len(set(map(repr, choices))) == len(choices), f"{where}: `choices` has duplicates")
                dist = od.CategoricalDistribution(choices)
            else:
                check("low" in spec and "high" in spec, f"{where} needs `low` and `high`")
                lo, hi, step = spec["low"], spec["high"], spec.get("step")
                check(is_number(lo) and is_number(hi) and (step is None or is_number(step)),
                      f"{where}: low, high and step must be numbers (YAML reads 1e-3 as a string: write 1.0e-3)")
                log = spec.get("log", False)
                check(isinstance(log, bool), f"{where}: `log` must be true or false")
                if kind == "int":
                    check(all(float(v).is_integer() for v in (lo, hi, step or 1)),
                          f"{where}: low, high and step of an int parameter must be integers")
                    dist = od.IntDistribution(int(lo), int(hi), log=log, step=int(step or 1))
                else:
                    dist = od.FloatDistribution(float(lo), float(hi), log=log,
                                                step=None if step is None else float(step))
        except ValueError as e:
            raise UsageError(f"{where}: {e}") from None
        check(name not in space.distributions, f"{where}: parameter given twice (- and _ are the same)")
        space.params[name], space.distributions[name] = spec, dist
    for raw, value in fixed.items():
        name = key(raw)
        check(name not in space.params, f"space file {p}: {raw} is both in params and in fixed; keep one")
        check(name not in space.fixed, f"space file {p}: fixed.{raw} is given twice (- and _ are the same)")
        check(value is None or isinstance(value, (bool, int, float, str, list)),
              f"space file {p}: fixed.{raw} must be a plain value or a list")
        space.fixed[name] = value
    return space



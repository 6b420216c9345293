"""The command a trial runs: found in the geomlab app, its options as command-line arguments, and the space and
metric checked against it before any trial starts."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from shared.errors import UsageError, check

from .space import Space, key

# Metrics that shared.train.Trainer reports after an epoch (val_* only with a validation split, train_eval_* only
# with --train-acc). A project declares further per-epoch metrics of its commands with a module-level
# ``SWEEP_METRICS = {"<command>": ["name", ...]}`` in projects/<name>/cli.py, a user with ``metrics:`` in the space.
# Options a command needs although they default to None (``geomlab train`` without --arch lists the architectures
# and stops) are declared the same way: ``SWEEP_REQUIRED = {"<command>": ["arch"]}``.
TRAINER_METRICS = ({"train_loss", "train_acc", "lr", "epoch_time_s"}
                   | {f"{s}_{m}" for s in ("val", "test", "train_eval") for m in ("loss", "acc", "top5")})
# metric prefix -> (option that enables it, hint)
_METRIC_NEEDS = {"val_": ("split", "add e.g. `split: 0.1` under fixed: in the space file, or use a test_* metric"),
                 "train_eval_": ("train_acc", "add `train_acc: true` under fixed: in the space file")}


def first_line(e: BaseException) -> str:
    msg = e.format_message() if hasattr(e, "format_message") else str(e)
    return (msg.strip().splitlines() or [type(e).__name__])[0][:300]


@dataclass
class Target:
    project: str  # "shared" or the project's folder name
    entry: str
    command: Any  # the click command
    prog: str  # "geomlab train", "geomlab cone-geometry train"
    declared_metrics: set[str]
    required: set[str] = field(default_factory=set)


def _commands(group, ctx) -> dict:
    """The group's commands (not its sub-groups), by name; lazy groups resolve them on demand."""
    cmds = {n: group.get_command(ctx, n) for n in group.list_commands(ctx)}
    return {n: c for n, c in cmds.items() if c is not None and not hasattr(c, "list_commands")}


def resolve_command(root, project: str, entry: str) -> Target:
    """``entry`` of ``project`` in ``root`` (the click group of the geomlab app; ``shared``: its own commands)."""
    ctx = root.make_context("geomlab", [], resilient_parsing=True)
    names = root.list_commands(ctx)
    groups = {n: g for n in names if hasattr(g := root.get_command(ctx, n), "list_commands")}
    folder = key(project)
    if folder == "shared":
        cmds, prog = {k: v for k, v in _commands(root, ctx).items() if k != "sweep"}, "geomlab"
    else:
        dashed = folder.replace("_", "-")
        check(dashed in groups, f"unknown project {project!r}; use one of: "
                                f"{', '.join([n.replace('-', '_') for n in groups] + ['shared'])}")
        cmds, prog = _commands(groups[dashed], ctx), f"geomlab {dashed}"
    cmd = cmds.get(entry) or cmds.get(entry.replace("_", "-"))
    check(cmd is not None,
          f"unknown command {entry!r} of {prog}; use one of: {', '.join(sorted(cmds)) or '(none)'}")
    module = importlib.import_module(cmd.callback.__module__)
    declared = getattr(module, "SWEEP_METRICS", {}) or {}
    required = getattr(module, "SWEEP_REQUIRED", {}) or {}
    return Target(folder, cmd.name, cmd, f"{prog} {cmd.name}", set(declared.get(cmd.name, ())),
                  set(required.get(cmd.name, ())))


def params_by_name(cmd) -> dict:
    """The command's parameters by Python name, also reachable by their long option names (--learning-rate)."""
    params = [p for p in cmd.params if p.name and p.expose_value]
    out = {p.name: p for p in params}
    for p in params:
        for o in getattr(p, "opts", []):
            if o.startswith("--"):
                out.setdefault(key(o[2:]), p)
    return out


def fmt(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def command_args(cmd, values: dict[str, Any]) -> list[str]:
    """``--name value`` (flags: ``--name`` / ``--no-name``; arguments positionally) for ``values``."""
    params = params_by_name(cmd)
    opts: list[str] = []
    positional: list[tuple[int, list[str]]] = []
    order = {p.name: i for i, p in enumerate(cmd.params)}
    for name, value in values.items():
        p = params[key(name)]
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        if not hasattr(p, "opts") or not p.opts or not p.opts[0].startswith("-"):  # an argument
            positional.append((order[name], [fmt(v) for v in items]))
            continue
        if getattr(p, "is_bool_flag", False):
            if value:
                opts.append(p.opts[0])
            elif p.secondary_opts:
                opts.append(p.secondary_opts[0])
            continue
        for v in items:
            opts += [p.opts[0], fmt(v)]
    for _, vals in sorted(positional):
        opts += vals
    return opts


def check_space(space: Space, target: Target) -> None:
    """Every name must be an option of the command, every value must pass the command's own parser."""
    from typer._click.exceptions import ClickException

    params = params_by_name(target.command)
    seen: dict[str, str] = {}
    for name in [*space.params, *space.fixed]:
        if name not in params:
            import difflib

            close = difflib.get_close_matches(name, list(params), n=1)
            primary = sorted({p.name for p in params.values()})
            raise UsageError(f"space file {space.path}: unknown parameter {name!r} for `{target.prog}`"
                             f"{f' (did you mean {close[0]}?)' if close else ''}; its options are: "
                             f"{', '.join(primary)}")
        p = params[name]
        check(p.name not in seen, f"space file {space.path}: {seen.get(p.name)} and {name} are the same option "
                                  f"of `{target.prog}`; keep one")
        seen[p.name] = name
        value = space.fixed.get(name)
        if getattr(p, "is_bool_flag", False):
            values = space.params[name].get("choices", [None]) if name in space.params else [value]
            check(all(isinstance(v, bool) or v is None for v in values),
                  f"space file {space.path}: {name} is an on/off flag of `{target.prog}`; give true or false")
        if isinstance(value, list):
            check(getattr(p, "multiple", False) or getattr(p, "nargs", 1) == -1,
                  f"space file {space.path}: fixed.{name} is a list but --{name.replace('_', '-')} takes one value")

    def probe(values: dict) -> None:
        args = command_args(target.command, {**space.fixed, **values})
        try:
            target.command.make_context(target.prog, args, resilient_parsing=False)
        except ClickException as e:
            shown = ", ".join(f"{k}={fmt(v)}" for k, v in values.items())
            raise UsageError(f"space file {space.path}: `{target.prog}` rejects {shown or 'the fixed values'} "
                             f"({first_line(e)}); fix the space") from None

    points = [{}, {}, {}]  # low ends, high ends, an inner point (a float must not land on an int option)
    for name, d in space.distributions.items():
        if hasattr(d, "choices"):
            for c in d.choices:
                probe({name: c})
            points[0][name] = points[1][name] = points[2][name] = d.choices[0]
        else:
            inner = d.low + 0.37 * (d.high - d.low)
            points[0][name], points[1][name] = d.low, d.high
            points[2][name] = int(round(inner)) if isinstance(d.low, int) else inner
    for point in points:
        probe(point)
    for name in sorted(target.required):
        known, value = effective(space, target, name)
        check(not known or value not in (None, ""),
              f"space file {space.path}: `{target.prog}` needs --{name.replace('_', '-')}; add `{name}: ...` under "
              f"fixed: (or sweep it under params:)")


def effective(space: Space, target: Target, name: str) -> tuple[bool, Any]:
    """(known, value) of an option for the trials: fixed value or the command's default; unknown when swept."""
    params = params_by_name(target.command)
    p = params.get(name)
    if p is None or any(params.get(k) is p for k in space.params):
        return False, None
    for k, v in space.fixed.items():
        if params.get(k) is p:
            return True, v
    return True, p.default


def check_metric(metric: str, space: Space, target: Target) -> None:
    known = TRAINER_METRICS | target.declared_metrics | set(space.metrics)
    check(metric in known, f"unknown metric {metric!r} for `{target.prog}`; the training loop reports "
                           f"{', '.join(sorted(TRAINER_METRICS | target.declared_metrics))}; declare other per-epoch "
                           "metrics of the command under `metrics:` in the space file")
    if metric in TRAINER_METRICS:
        for prefix, (option, hint) in _METRIC_NEEDS.items():
            if metric.startswith(prefix):
                known_value, value = effective(space, target, option)
                check(not known_value or bool(value), f"metric {metric} is never reported by `{target.prog}` with "
                                                      f"{option}={value!r}; {hint}")



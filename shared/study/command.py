"""The ``study`` command of a project: ``--scale``, ``--run-name`` and one option per setting, each declared like the
project command's option it is passed to (same name, help text and type), and the presets tabled in its help."""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import fields
from typing import Annotated as Annotated_, Any, Callable, Optional

import typer

from .driver import Study
from .settings import SCALE_HELP, _show, presets_table, resolve_settings


def _declared(app: typer.Typer, like: Any, name: str):
    """The ``Annotated`` type of option ``name`` as ``like`` (a command of ``app``, or an Opt) declares it."""
    from shared.options import Opt

    if isinstance(like, Opt):
        return like.annotated
    *groups, last = [like] if isinstance(like, str) else list(like)
    node = app
    for g in groups:
        node = next(i.typer_instance for i in node.registered_groups if i.name == g)
    info = next(c for c in node.registered_commands if (c.name or c.callback.__name__.replace("_", "-")) == last)
    param = inspect.signature(info.callback, eval_str=True).parameters.get(name)
    assert param is not None, f"study setting {name}: `{' '.join([*groups, last])}` has no option --{name}"
    return param.annotation


def _study_param(app: typer.Typer, f: dataclasses.Field, presets: dict[str, Any]) -> inspect.Parameter:
    """The `study` option of setting ``f``: default None (the preset's value) unless every preset agrees on a
    single value (then that value, shown by --help)."""
    import copy
    import typing

    values = [getattr(p, f.name) for p in presets.values()]
    agreed = values[0] if all(v == values[0] for v in values) and not isinstance(values[0], (tuple, list)) else None
    like = f.metadata.get("like")
    if like is None:
        annotation = Annotated_[Optional[str], typer.Option(help=f.metadata.get("help", ""))]
        default = None if agreed is None else _show(agreed)
    else:
        declared = _declared(app, like, f.name)
        kind, *meta = typing.get_args(declared)
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        info = copy.copy(next(m for m in meta if isinstance(m, typer.models.OptionInfo)))
        annotation = Annotated_[base if agreed is not None else Optional[base], info]
        default = agreed
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def register_study(app: typer.Typer, project: str, presets: dict[str, Any], run: Callable[["Study"], None],
                   doc: str) -> None:
    """Add ``study`` to a project's app: ``--scale``, ``--run-name`` (of the parent run) and one option per setting
    (left out: the preset's value; the presets are tabled in the command's help)."""
    from shared import options as opt

    first = next(iter(presets.values()))
    params = [inspect.Parameter("scale", inspect.Parameter.KEYWORD_ONLY, default="smoke",
                                annotation=Annotated_[str, typer.Option(help=SCALE_HELP)])]
    params += [_study_param(app, f, presets) for f in fields(first)]
    params.append(inspect.Parameter("run_name", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=opt.RunName))

    def study_cmd(**kwargs) -> None:
        scale, run_name = kwargs.pop("scale"), kwargs.pop("run_name")
        settings = resolve_settings(presets, scale, kwargs)
        Study(project, scale, settings, run_name=run_name).execute(run)

    study_cmd.__signature__ = inspect.Signature(params)
    study_cmd.__annotations__ = {p.name: p.annotation for p in params}
    study_cmd.__doc__ = doc
    epilog = ("\b\nAn option left out takes the value of the --scale preset:\n" + presets_table(presets))
    app.command("study", epilog=epilog)(study_cmd)

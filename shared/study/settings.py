"""A study's settings: a dataclass per study, one preset per scale (``--scale smoke|cpu|paper``), every field an
option of the ``study`` command; overrides given on the command line are parsed and checked before the parent run
opens."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import field, fields
from typing import Any

from shared.errors import UsageError, check

SCALES = ("smoke", "cpu", "paper")
#: settings that name a dataset of the registry (`geomlab datasets`)
DATASET_SETTINGS = ("dataset", "regression", "classification")


def setting(default: Any = None, help: str = "", like: Any = None) -> Any:
    """A study setting (a dataclass field). A setting that *is* an option of a project command (the study passes it
    on unchanged) names that command in ``like`` (``"train"``, ``["paths", "norm"]``, or a
    :class:`shared.options.Opt`): the study then takes that option's declaration -- the same name, help text, type
    and hidden old names (one name, one meaning). Any other setting is the study's own and has its ``help``."""
    return field(default=default, metadata={"help": help, "like": like})


#: the help of every study's --seeds (one name, one meaning)
SEEDS_HELP = ("Seeds of the study's independent repetitions (comma-separated): each seed makes one full set of the "
              "study's runs (the command's description says which).")
SCALE_HELP = ("Preset: smoke (embedded digits, under a minute), cpu (Fashion-MNIST, at most 25 min on 2 cores) or "
              "paper (the paper's own settings, for a GPU); the table below gives every preset's values.")


def _parse_value(kind: type, text: Any, name: str) -> Any:
    if not isinstance(text, str):
        return text
    try:
        if kind is bool:
            check(text.lower() in ("true", "false", "on", "off", "1", "0"), f"--{name} takes true or false")
            return text.lower() in ("true", "on", "1")
        if kind in (int, float, str):
            return kind(text)
        if kind in (tuple, list):  # comma-separated numbers or names
            items = [v.strip() for v in text.split(",") if v.strip()]
            return tuple(int(v) if re.fullmatch(r"-?\d+", v) else (float(v) if _is_float(v) else v) for v in items)
    except ValueError:
        raise UsageError(f"--{name} got {text!r}, which is not a valid {kind.__name__}") from None
    return text


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _kind(f: dataclasses.Field, default: Any) -> type:
    return type(default) if default is not None else str


def resolve_settings(presets: dict[str, Any], scale: str, overrides: dict[str, Any]) -> Any:
    """The preset of ``scale`` with every given (not None) override applied."""
    check(scale in presets, f"--scale must be one of: {', '.join(presets)}; got {scale!r}")
    base = presets[scale]
    values = {}
    for f in fields(base):
        given = overrides.get(f.name)
        if given is not None:
            values[f.name] = _parse_value(_kind(f, getattr(base, f.name)), given, f.name.replace("_", "-"))
    out = dataclasses.replace(base, **values)
    from shared.data import DATASETS

    for name in DATASET_SETTINGS:  # checked here, before the parent run opens
        value = getattr(out, name, "")
        check(not value or value in DATASETS, f"--{name} {value!r} is not a registered dataset; use one of: "
                                              f"{DATASETS.choices()}")
    if hasattr(out, "validate"):
        out.validate()
    return out


def _show(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)


def presets_table(presets: dict[str, Any]) -> str:
    """The presets' values, one line per setting (the `study` command's --help shows it)."""
    first = next(iter(presets.values()))
    names = ["--" + f.name.replace("_", "-") for f in fields(first)]
    cols = [[_show(getattr(p, f.name)) for f in fields(first)] for p in presets.values()]
    rows = [["option", *presets]] + [[n, *(c[i] for c in cols)] for i, n in enumerate(names)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows)

"""Every MLproject entry point maps its -P parameters onto CLI options of the same name and default (issue 10)."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import typer.main
import yaml
from typer.core import TyperArgument

from shared.cli import app

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "MLproject", *sorted(ROOT.glob("projects/*/MLproject"))]
TREE = typer.main.get_command(app)
MARK = "@@{}@@"


def _entries():
    for f in FILES:
        for name, ep in yaml.safe_load(f.read_text())["entry_points"].items():
            if ep["command"].split()[:3] == ["python", "-m", "shared.cli"]:
                yield pytest.param(f, name, ep, id=f"{f.parent.name}:{name}")


def _resolve(tokens):
    cmd, path = TREE, []
    while hasattr(cmd, "commands") and tokens and tokens[0] in cmd.commands:
        path.append(tokens[0])
        cmd = cmd.commands[tokens.pop(0)]
    assert not hasattr(cmd, "commands"), f"`{' '.join(path)}` is not a command"
    return cmd


def _visible(cmd):
    out = {}
    for p in cmd.params:
        for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]:
            if o.startswith("-"):
                out[o] = p
    return out


def _matches(declared, p, flag):
    default = p.default
    if "default" not in declared:
        return default is None or p.required
    d = declared["default"]
    if flag:
        return str(d).lower() == str(bool(default)).lower()
    if default is None:
        return d == ""
    if isinstance(default, bool) or isinstance(default, str):
        return str(d) == str(default)
    return float(d) == float(default)


def test_one_sweep_entry_point_in_the_root_mlproject():
    sweeps = [(f.parent.name, name) for f in FILES
              for name, ep in yaml.safe_load(f.read_text())["entry_points"].items()
              if ep["command"].split()[:4] == ["python", "-m", "shared.cli", "sweep"]]
    assert sweeps == [(ROOT.name, "sweep")]
    assert "optuna_sweep" not in yaml.safe_load((ROOT / "projects/feature_amounts/MLproject").read_text())[
        "entry_points"]


@pytest.mark.parametrize("path,name,ep", list(_entries()))
def test_every_parameter_is_an_option_with_the_same_default(path, name, ep):
    params = ep.get("parameters", {})
    text = ep["command"]
    for p in params:
        text = text.replace("{" + p + "}", MARK.format(p))
    tokens = shlex.split(text)[3:]
    cmd = _resolve(tokens)
    visible = _visible(cmd)
    arguments = [p for p in cmd.params if isinstance(p, TyperArgument)]
    used = {}
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.startswith("-"):
            opt_name, eq, value = t.partition("=")
            assert opt_name in visible, f"{path.name}:{name}: {opt_name} is not a (visible) option of the command"
            p = visible[opt_name]
            if p.is_flag:
                if eq:
                    assert value.startswith("@@"), f"{name}: {t}"
                    used[value.strip("@")] = (p, True)
                i += 1
                continue
            assert not eq, f"{name}: pass `{opt_name} value`"
            value = tokens[i + 1]
            if value.startswith("@@"):
                used[value.strip("@")] = (p, False)
            i += 2
            continue
        assert t.startswith("@@"), f"{name}: a literal argument {t!r}"
        p = arguments.pop(0)
        used[t.strip("@")] = (p, False)
        i += 1
    assert set(used) == set(params), f"{name}: parameters not in the command: {set(params) - set(used)}"
    for pname, (p, flag) in used.items():
        assert p.name == pname, f"{path.name}:{name}: -P {pname} feeds --{p.name.replace('_', '-')}; use its name"
        assert _matches(params[pname], p, flag), \
            f"{path.name}:{name}: -P {pname} default {params[pname].get('default')!r} != the CLI's {p.default!r}"


@pytest.mark.parametrize("path,name,ep", list(_entries()))
def test_the_command_with_its_defaults_parses(path, name, ep):
    dummy = {"int": 1, "float": 0.5}
    values = {k: v.get("default", dummy.get(v.get("type"), "x")) for k, v in ep.get("parameters", {}).items()}
    # mlflow run shell-quotes every parameter value (an empty string becomes '')
    argv = shlex.split(ep["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()}))[3:]
    cmd = _resolve(argv)
    cmd.make_context(name, argv)  # raises on an unknown option or a value of the wrong type

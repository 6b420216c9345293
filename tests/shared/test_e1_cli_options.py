"""One name per option across every geomlab command (issue 10 items 3-4), hidden old names, --flag=true|false."""
from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import pytest
import typer.main
from typer.core import TyperOption

from shared.cli import app


def _commands(group, prefix=("geomlab",)):
    for name, cmd in sorted(group.commands.items()):
        path = (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, path)
        else:
            yield " ".join(path), cmd


ROOT = typer.main.get_command(app)
COMMANDS = dict(_commands(ROOT))
#: Replaced by a `geomlab sweep` space (issue 10 item 1, helper "sweep"); its study options are its own.
NOT_COMPARED: set[str] = set()


def _visible(cmd):
    return [p for p in cmd.params if isinstance(p, TyperOption) and not p.hidden and p.name != "help"]


def _inventory():
    seen = defaultdict(dict)  # option name -> {command: (help, is_flag)}
    for path, cmd in COMMANDS.items():
        if path in NOT_COMPARED:
            continue
        for p in _visible(cmd):
            longs = [o for o in p.opts if o.startswith("--")]
            assert len(longs) == 1, f"{path}: {p.name} shows several long names {longs}"
            seen[longs[0]][path] = (p.help, bool(p.is_flag))
    return seen


def test_the_tree_holds_every_project_and_its_commands():
    assert {"geomlab train", "geomlab evaluate", "geomlab sweep", "geomlab cone-geometry distill-all",
            "geomlab hyperplane-bias reinit", "geomlab depth-limit landscape render",
            "geomlab feature-amounts sweep"} <= set(COMMANDS)


def test_one_name_means_one_thing_everywhere():
    bad = []
    for name, uses in _inventory().items():
        variants = defaultdict(list)
        for path, meaning in uses.items():
            variants[meaning].append(path)
        if len(variants) > 1:
            bad.append(f"{name}: " + " | ".join(f"{paths[:2]}: {m[0]!r} flag={m[1]}" for m, paths in variants.items()))
    assert not bad, "options with one name but different help/kind:\n" + "\n".join(bad)


def test_one_thing_has_one_name():
    by_help = defaultdict(set)
    for name, uses in _inventory().items():
        for help_text, _ in uses.values():
            by_help[help_text].add(name)
    twins = {h: names for h, names in by_help.items() if len(names) > 1}
    assert not twins, f"the same help text under several names: {twins}"


OLD_NAMES = ["--noisy", "--out", "--results", "--models-path", "--learning-rate", "--cuda", "--unnormalize",
             "--weight-init", "--dataset-path", "--training-data-percentage", "--pvar"]


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_old_names_are_not_shown(path):
    shown = {o for p in _visible(COMMANDS[path]) for o in [*p.opts, *p.secondary_opts]}
    assert not shown & set(OLD_NAMES), f"{path} shows old names {shown & set(OLD_NAMES)}"


def test_project_specific_old_names_are_gone_from_help():
    fit = {o for p in _visible(COMMANDS["geomlab depth-limit fit"]) for o in p.opts}
    assert "--update-rule" in fit and "--augmentation" not in fit
    for c in ("projections", "correlate"):
        shown = {o for p in _visible(COMMANDS[f"geomlab hyperplane-bias {c}"]) for o in p.opts}
        assert "--cosine" in shown and "--normalize" not in shown
    reinit = {o for p in _visible(COMMANDS["geomlab hyperplane-bias reinit"]) for o in p.opts}
    assert "--checkpoint-epochs" in reinit and "--epochs" not in reinit


@pytest.mark.parametrize("path,args,name,value", [
    ("geomlab cone-geometry train", ["--noisy", "0.3"], "noise", 0.3),
    ("geomlab cone-geometry train", ["--dataset-path", "/d"], "data_path", "/d"),
    ("geomlab cone-geometry distill", ["--resume-from", "t.pt"], "teacher", "t.pt"),
    ("geomlab cone-geometry distill", ["--teacher", "t.pt", "--alpha", "0.5"], "kl_weight", 0.5),
    ("geomlab feature-amounts train", ["--learning-rate", "0.2"], "lr", 0.2),
    ("geomlab feature-amounts train", ["--weight-init", "xavier-normal"], "init", "xavier-normal"),
    ("geomlab hyperplane-bias train", ["--cuda"], "device", "cuda"),
    ("geomlab hyperplane-bias train", ["--unnormalize"], "normalize", "none"),
    ("geomlab hyperplane-bias train", ["--models-path", "m"], "out_dir", "m"),
    ("geomlab hyperplane-bias projections", ["--normalize"], "cosine", True),
    ("geomlab hyperplane-bias projections", ["--results", "r"], "out_dir", "r"),
    ("geomlab hyperplane-bias reinit", ["--epochs", "0,1"], "checkpoint_epochs", "0,1"),
    ("geomlab hyperplane-bias reinit", ["--batch-size", "64"], "eval_batch_size", 64),
    ("geomlab depth-limit fit", ["--augmentation", "inc_skip"], "update_rule", "inc_skip"),
    ("geomlab depth-limit fit", ["--training-data-percentage", "0.5"], "train_fraction", 0.5),
    ("geomlab depth-limit curve-fit", ["--out", "o"], "out_dir", "o"),
    ("geomlab depth-limit landscape plot", ["s.npy", "--out", "f"], "prefix", "f"),
    ("geomlab depth-limit paths norm", ["x", "--pvar", "2"], "p_var", 2.0),
    ("geomlab evaluate", ["s.pt", "--split", "train"], "subset", "train"),
])
def test_old_names_still_work(path, args, name, value):
    ctx = COMMANDS[path].make_context(path, list(args))
    assert ctx.params[name] == value


@pytest.mark.parametrize("arg,value", [("--store-grad=true", True), ("--store-grad=false", False),
                                       ("--store-grad=False", False), ("--no-store-grad=false", True),
                                       ("--store-grad", True)])
def test_on_off_options_take_true_or_false(arg, value):
    ctx = COMMANDS["geomlab depth-limit fit"].make_context("fit", [arg])
    assert ctx.params["store_grad"] is value


def test_a_flag_without_a_no_form_takes_false_too():
    cmd = COMMANDS["geomlab hyperplane-bias reinit"]
    assert cmd.make_context("reinit", ["--rand=false"]).params["rand"] is False
    assert cmd.make_context("reinit", ["--rand=true"]).params["rand"] is True


def test_a_bad_on_off_value_is_a_usage_error(cli):
    r = cli("depth-limit", "fit", "--store-grad=maybe")
    assert r.exit_code == 2 and "is an on/off option" in r.output


def test_project_defaults_come_through_overrides():
    def default(path, name):
        return next(p.default for p in COMMANDS[path].params if p.name == name)

    assert default("geomlab cone-geometry train", "batch_size") == 100
    assert default("geomlab feature-amounts train", "lr") == 0.01
    assert default("geomlab hyperplane-bias train", "lr") == 0.001
    assert default("geomlab train", "lr") == 0.05
    assert default("geomlab depth-limit fit", "seed") == 1234


@pytest.mark.parametrize("path", [p for p in sorted(COMMANDS) if p.split()[-1] in
                                  ("train", "distill", "distill-all", "fit", "resnet-cifar10", "sweep")
                                  and p != "geomlab sweep" and "optimize" not in p])
def test_every_training_command_takes_every_data_option_and_a_run_name(path):
    names = {p.name for p in COMMANDS[path].params}
    assert {"split", "stratified", "pixel_shuffle", "noise", "subsample_classes", "run_name"} <= names, path


def test_building_the_cli_imports_no_heavy_library():
    code = ("import sys, typer.main, shared.cli; typer.main.get_command(shared.cli.app); "
            "heavy = [m for m in ('torch', 'mlflow', 'optuna', 'matplotlib', 'numpy', 'sklearn') if m in sys.modules];"
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_help_and_argument_errors_import_no_heavy_library():
    code = ("import sys\nfrom shared.cli import main\n"
            "for argv in (['--help'], ['cone-geometry', 'train', '--bogus'], ['depth-limit', 'fit', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'mlflow', 'optuna', 'matplotlib') if m in sys.modules]\n"
            "print(heavy, file=sys.stderr); sys.exit(3 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


#: Commands that open no MLflow run of their own (listings, a print-out, figures from a file); `geomlab sweep` names
#: its parent run after the study (--study).
NO_RUN = {"geomlab datasets", "geomlab archs", "geomlab evaluate", "geomlab feature-amounts variants",
          "geomlab depth-limit landscape plot", "geomlab sweep"}


@pytest.mark.parametrize("path", sorted(set(COMMANDS) - NO_RUN))
def test_every_command_that_opens_a_run_takes_a_run_name(path):
    assert "run_name" in {p.name for p in COMMANDS[path].params}


@pytest.mark.parametrize("path", [p for p, c in COMMANDS.items()
                                  if {"precision", "lr"} <= {q.name for q in c.params}])
def test_every_training_command_offers_system_metrics(path):
    """Issue 12 item 6: --system-metrics on every command that trains (the long runs), not only the root train."""
    assert "system_metrics" in {p.name for p in COMMANDS[path].params}

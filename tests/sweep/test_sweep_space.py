"""Space files, the mapping of sampled values to a command's options, metric checks and the trial reporter.

No training here: these run in well under a second each."""
from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from shared.errors import UsageError
from shared.sweep import command as _command
from shared.sweep.command import check_metric, check_space, command_args
from shared.sweep.space import load_space
from shared.sweep.storage import normalize_storage
from shared.sweep.trial import TrialReporter


def resolve_command(project, entry):
    import typer.main

    from shared.cli import app

    return _command.resolve_command(typer.main.get_command(app), project, entry)

REPO = Path(__file__).resolve().parents[2]


def _space(tmp_path: Path, text: str, name: str = "space.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_space_parses_all_kinds(tmp_path):
    sp = load_space(_space(tmp_path, """
        params:
          lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
          width: {type: int, low: 4, high: 16, step: 4}
          optimizer: {type: categorical, choices: [sgd, adam]}
        fixed: {epochs: 2, dataset: digits, arch: lenet_small}
        metrics: [extra_metric]
        """))
    d = sp.distributions
    assert d["lr"] == optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)
    assert d["width"] == optuna.distributions.IntDistribution(4, 16, step=4)
    assert d["optimizer"].choices == ("sgd", "adam")
    assert sp.fixed == {"epochs": 2, "dataset": "digits", "arch": "lenet_small"}
    assert sp.metrics == ["extra_metric"]


def test_grid_enumeration(tmp_path):
    from shared.sweep.samplers import _grid

    sp = load_space(_space(tmp_path, """
        params:
          lr: {type: float, low: 0.1, high: 0.3, step: 0.1}
          width: {type: int, low: 4, high: 16, step: 4}
          optimizer: {type: categorical, choices: [sgd, adam]}
        """))
    assert sp.grid_size() == 3 * 4 * 2
    assert _grid(sp, 0)._search_space["lr"] == [0.1, 0.2, 0.3]
    no_step = load_space(_space(tmp_path, "params: {lr: {type: float, low: 0.1, high: 0.3}}\n", "n.yaml"))
    with pytest.raises(UsageError, match="needs a `step` for the float parameter lr"):
        _grid(no_step, 0)


@pytest.mark.parametrize("text, needle", [
    ("params:\n  lr: {type: float, low: 1\n", "not valid YAML at line"),
    ("- just\n- a list\n", "must be a mapping"),
    ("params: {}\n", "at least one parameter"),
    ("params:\n  lr: {type: float, low: 0.1}\n", "needs `low` and `high`"),
    ("params:\n  lr: {type: float, low: 1e-3, high: 0.1}\n", "must be numbers"),  # YAML reads 1e-3 as a string
    ("params:\n  lr: {type: float, low: 0.1, high: 0.01}\n", "params.lr"),
    ("params:\n  lr: {type: float, low: 0.0, high: 0.1, log: true}\n", "params.lr"),
    ("params:\n  w: {type: int, low: 1, high: 4.5}\n", "must be integers"),
    ("params:\n  w: {type: integer, low: 1, high: 4}\n", "unknown type 'integer'"),
    ("params:\n  w: {type: int, low: 1, hihg: 4}\n", "unknown key(s) hihg"),
    ("params:\n  o: {type: categorical, choices: []}\n", "non-empty list"),
    ("params:\n  lr: {type: float, low: 0.1, high: 0.2}\nfixed: {lr: 0.1}\n", "both in params and in fixed"),
    ("params:\n  lr: {type: float, low: 0.1, high: 0.2}\nfixd: {}\n", "unknown top-level key(s) fixd"),
])
def test_bad_space_files_are_one_line_usage_errors(tmp_path, text, needle):
    with pytest.raises(UsageError) as e:
        load_space(_space(tmp_path, text))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_space_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")


def test_command_args_flags_lists_and_aliases():
    t = resolve_command("shared", "train")
    args = command_args(t.command, {"lr": 0.05, "width": 8, "pixel_shuffle": False, "augmentation": True,
                                    "arch": "lenet_small", "out_dir": None})
    # --augmentation takes on|off|auto (the same option in every project); true/false are accepted
    assert args == ["--lr", "0.05", "--width", "8", "--no-pixel-shuffle", "--augmentation", "True", "--arch",
                    "lenet_small"]
    ctx = t.command.make_context("geomlab train", args)
    assert ctx.params["lr"] == 0.05 and ctx.params["width"] == 8 and ctx.params["pixel_shuffle"] is False
    assert ctx.params["augmentation"] is True
    # `--batch-size` may be written batch-size or batch_size
    assert command_args(t.command, {"batch-size": 16}) == ["--batch-size", "16"]


def test_check_space_against_the_command(tmp_path):
    t = resolve_command("shared", "train")
    ok = load_space(_space(tmp_path, """
        params: {lr: {type: float, low: 0.01, high: 0.3, log: true}, width: {type: int, low: 2, high: 6}}
        fixed: {arch: lenet_small, epochs: 1}
        """))
    check_space(ok, t)
    cases = {
        "params: {lrr: {type: float, low: 0.01, high: 0.3}}": "unknown parameter 'lrr' for `geomlab train` "
                                                              "(did you mean lr?)",
        "params: {width: {type: float, low: 2, high: 6}}": "rejects width=3.48",  # a float on an int option
        "params: {epochs: {type: categorical, choices: [1, two]}}": "rejects epochs=two",
        "params: {lr: {type: float, low: 0.01, high: 0.3}}\nfixed: {pixel_shuffle: maybe}": "on/off flag",
        "params: {lr: {type: float, low: 0.01, high: 0.3}}\nfixed: {batch_size: 8, batch-size: 16}": "given twice",
    }
    for i, (text, needle) in enumerate(cases.items()):
        with pytest.raises(UsageError) as e:
            check_space(load_space(_space(tmp_path, text + "\n", f"s{i}.yaml")), t)
        assert needle in str(e.value), str(e.value)


def test_metric_checks(tmp_path):
    t = resolve_command("shared", "train")
    sp = load_space(_space(tmp_path, "params: {lr: {type: float, low: 0.01, high: 0.3}}\n"))
    check_metric("test_acc", sp, t)
    check_metric("train_loss", sp, t)
    with pytest.raises(UsageError, match="unknown metric 'tset_acc'"):
        check_metric("tset_acc", sp, t)
    with pytest.raises(UsageError, match="needs|never reported .* split=0.0"):
        check_metric("val_acc", sp, t)  # no validation split by default
    with pytest.raises(UsageError, match="train_acc"):
        check_metric("train_eval_acc", sp, t)
    split = load_space(_space(tmp_path, "params: {lr: {type: float, low: 0.01, high: 0.3}}\nfixed: {split: 0.2}\n",
                              "split.yaml"))
    check_metric("val_acc", split, t)
    declared = load_space(_space(tmp_path, "params: {lr: {type: float, low: 0.01, high: 0.3}}\nmetrics: [mine]\n",
                                 "declared.yaml"))
    check_metric("mine", declared, t)


def test_unknown_project_and_command():
    with pytest.raises(UsageError, match="unknown project 'nope'"):
        resolve_command("nope", "train")
    with pytest.raises(UsageError, match="unknown command 'fit' of geomlab; use one of: .*train"):
        resolve_command("shared", "fit")


def test_storage_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize_storage("") == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    assert normalize_storage("sqlite:///rel.db") == f"sqlite:///{tmp_path.resolve() / 'rel.db'}"
    for bad, needle in [("not a url", "not a database URL"), ("sqlite://", "needs a file"),
                        ("sqlite:///missing/dir/x.db", "does not exist"), ("oracle://h/x", "unsupported database")]:
        with pytest.raises(UsageError, match=needle):
            normalize_storage(bad)


class _Trial:
    """Stands in for an optuna Trial: records reports, prunes from a given step on."""

    number = 7

    def __init__(self, prune_from: int | None = None):
        self.reports: list[tuple[float, int]] = []
        self.prune_from = prune_from

    def report(self, value, step):
        self.reports.append((value, step))

    def should_prune(self):
        return self.prune_from is not None and self.reports[-1][1] >= self.prune_from


class _Trainer:
    def __init__(self):
        self.epoch = 0
        self.stop = None
        self.tracker = type("T", (), {"run_id": "r1"})()

    def request_stop(self, reason):
        self.stop = reason


def test_reporter_steps_are_cumulative_over_trainers():
    trial = _Trial()
    rep = TrialReporter(trial, "test_acc")
    for values in ([0.1, 0.2], [0.3]):  # a teacher (2 epochs) then a student (1 epoch)
        tr = _Trainer()
        rep.on_train_start(tr)
        for v in values:
            tr.epoch += 1
            rep.on_epoch_end(tr, {"train_loss": 1.0, "test_acc": v})
        rep.on_train_end(tr)
    assert trial.reports == [(0.1, 1), (0.2, 2), (0.3, 3)]
    assert rep.values == [0.1, 0.2, 0.3] and rep.pruned_at is None
    assert rep.seen == {"train_loss", "test_acc"}


def test_reporter_prunes_by_stopping_the_trainer():
    trial = _Trial(prune_from=2)
    rep = TrialReporter(trial, "test_acc")
    tr = _Trainer()
    rep.on_train_start(tr)
    tr.epoch = 1
    rep.on_epoch_end(tr, {"test_acc": 0.5})
    assert tr.stop is None
    tr.epoch = 2
    rep.on_epoch_end(tr, {"test_acc": 0.4})
    assert rep.pruned_at == 2 and "pruned by Optuna" in tr.stop
    rep.on_train_end(tr)
    later = _Trainer()  # a later trainer of the same (pruned) trial stops before its first epoch
    rep.on_train_start(later)
    assert later.stop and "pruned" in later.stop


def _documented_command(path: Path) -> tuple[str, str]:
    """Each example space starts with the command line that uses it: `# geomlab sweep <project> <command> ...`."""
    import re

    m = re.match(r"# geomlab sweep (\S+) (\S+) --space (\S+)", path.read_text())
    assert m, f"{path} must start with '# geomlab sweep <project> <command> --space <this file> ...'"
    assert (REPO / m.group(3)).resolve() == path.resolve()
    assert m.group(1) == path.parent.parent.name
    return m.group(1), m.group(2)


def test_example_spaces_parse():
    spaces = sorted(REPO.glob("projects/*/spaces/*.yaml"))
    assert {p.parent.parent.name for p in spaces} == {"cone_geometry", "hyperplane_bias", "depth_limit",
                                                      "feature_amounts"}
    for p in spaces:
        _documented_command(p)
        load_space(p)


def test_example_spaces_match_existing_project_commands():
    """Where a project's CLI exists, its example spaces name real options with values its parser accepts."""
    import importlib

    from shared.commands import project_apps

    checked = 0
    for p in sorted(REPO.glob("projects/*/spaces/*.yaml")):
        project, command = _documented_command(p)
        try:
            importlib.import_module(project_apps()[project.replace("_", "-")])
        except ModuleNotFoundError:
            continue  # that project's CLI is not in this checkout yet
        sp = load_space(p)
        t = resolve_command(project, command)
        check_space(sp, t)
        checked += 1
    if not checked:
        pytest.skip("no project CLI in this checkout yet")

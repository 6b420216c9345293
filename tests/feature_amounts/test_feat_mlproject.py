"""Every MLproject entry point's command line, with its defaults, is accepted by the CLI."""
import shlex
from pathlib import Path

import pytest
import yaml

MLPROJECT = Path(__file__).resolve().parents[2] / "projects" / "feature_amounts" / "MLproject"


def commands():
    eps = yaml.safe_load(MLPROJECT.read_text())["entry_points"]
    return {name: ep for name, ep in eps.items()}


def test_entry_points_exist():
    assert set(commands()) == {"train", "sweep", "plot", "study"}


def test_the_root_sweep_entry_point_runs_the_shared_sweep_of_this_project(cli, mlflow_store):
    ep = yaml.safe_load((MLPROJECT.parents[2] / "MLproject").read_text())["entry_points"]["sweep"]
    values = {k: v.get("default", "") for k, v in ep["parameters"].items()}
    values.update(project="feature_amounts", entry="train", space=str(MLPROJECT.parent / "spaces" / "train.yaml"))
    values["storage"] = "postgresql://127.0.0.1:1/unreachable"  # parses everything, then stops before any trial
    argv = shlex.split(ep["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()}))
    assert argv[:6] == ["python", "-m", "shared.cli", "sweep", "feature_amounts", "train"]
    r = cli(*argv[3:])
    assert r.exit_code == 2, r.output
    assert "No such option" not in r.output and "storage" in r.stderr


@pytest.mark.parametrize("name", ["train", "sweep", "plot"])
def test_entry_point_parses(name, cli, mlflow_store):
    ep = commands()[name]
    values = {k: v.get("default", "") for k, v in ep["parameters"].items()}
    if name == "plot":
        values["source"] = "no-such-sweep"
    else:
        values["vgg_depth"] = 17  # an invalid value: the command parses, then stops with a usage error
    # mlflow run shell-quotes every parameter value (an empty string becomes '')
    argv = shlex.split(ep["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()}))
    assert argv[:4] == ["python", "-m", "shared.cli", "feature-amounts"]
    r = cli(*argv[3:])
    assert r.exit_code == 2, r.output
    assert "No such option" not in r.output and "Invalid value" not in r.output
    assert ("vgg-depth" in r.stderr) if name != "plot" else ("neither a CSV" in r.stderr)

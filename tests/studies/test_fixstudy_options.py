"""The `study` commands' options: the project commands' own declarations, the presets' values for what is left out,
the presets tabled in --help, and --run-name naming the parent run (issue 10 items 3-4 meet issue 13)."""
from __future__ import annotations

import pytest


@pytest.fixture
def captured(monkeypatch):
    """The studies the command would run (their settings and run name), without running them."""
    import shared.study

    seen = []
    monkeypatch.setattr(shared.study.Study, "execute", lambda self, body: seen.append(self))
    return seen


def test_left_out_options_take_the_preset_and_given_ones_parse_as_the_commands_do(cli, captured):
    from projects.hyperplane_bias.study import PRESETS

    r = cli("hyperplane-bias", "study", "--scale", "cpu", "--epochs", "2", "--dataset-path", "/d",
            "--control-noise", "0.25", "--run-name", "mine")
    assert r.exit_code == 0, r.output
    (study,) = captured
    s = study.settings
    assert (s.epochs, s.data_path, s.control_noise) == (2, "/d", 0.25)  # --dataset-path: train's hidden old name
    assert (s.seeds, s.max_test, s.dataset, s.lr) == (PRESETS["cpu"].seeds, 2000, "fashion_mnist", 0.01)
    assert study.run_name == "mine"
    r = cli("hyperplane-bias", "study", "--epochs", "two")
    assert r.exit_code == 2 and "--epochs" in r.output  # a typed option (train's --epochs) refuses a bad value
    assert len(captured) == 1


def test_a_flag_left_out_keeps_the_preset_and_comma_lists_parse(cli, captured):
    assert cli("cone-geometry", "study", "--scale", "cpu", "--teacher-epochs", "0,6").exit_code == 0
    assert cli("cone-geometry", "study", "--quick").exit_code == 0
    cpu, quick = captured
    assert cpu.settings.teacher_epochs == (0, 6) and cpu.settings.quick is False and cpu.settings.batch_size == 128
    assert quick.settings.quick is True and quick.run_name is None


@pytest.mark.parametrize("project", ["cone-geometry", "depth-limit", "feature-amounts", "hyperplane-bias"])
def test_help_tables_every_presets_values(cli, project):
    import importlib

    from shared.study import _show

    presets = importlib.import_module(f"projects.{project.replace('-', '_')}.study").PRESETS
    out = cli(project, "study", "--help").output
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.strip().startswith("--") and "  " in ln}
    for name in presets["smoke"].__dataclass_fields__:
        row = lines[f"--{name.replace('_', '-')}"]
        assert row[1:4] == [_show(getattr(presets[s], name)) for s in ("smoke", "cpu", "paper")], row


def test_the_run_name_names_the_parent_and_is_not_part_of_the_study(mlflow_store):
    from mlflow.tracking import MlflowClient

    from projects.hyperplane_bias.study import PRESETS
    from shared.study import Study

    client = MlflowClient()
    first = Study("hyperplane_bias", "smoke", PRESETS["smoke"], run_name="first")
    first.execute(lambda study: None)
    assert client.get_run(first.parent_id).info.run_name == "first"
    again = Study("hyperplane_bias", "smoke", PRESETS["smoke"])  # continued without a name: the name stays
    again.execute(lambda study: None)
    assert again.parent_id == first.parent_id and client.get_run(first.parent_id).info.run_name == "first"
    renamed = Study("hyperplane_bias", "smoke", PRESETS["smoke"], run_name="second")
    renamed.execute(lambda study: None)
    assert renamed.parent_id == first.parent_id and client.get_run(first.parent_id).info.run_name == "second"
    fresh = Study("hyperplane_bias", "cpu", PRESETS["cpu"])  # another study: the default name
    fresh.execute(lambda study: None)
    assert client.get_run(fresh.parent_id).info.run_name == "study-hyperplane_bias-cpu"

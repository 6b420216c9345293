"""shared/ does not list the projects: a fifth project is a folder, and its models and demo step are found."""
import sys

import projects
from shared.demo import demo_steps
from shared.models import MODELS, build_model
from shared.projects import project_modules, project_names


def test_the_four_projects_are_discovered():
    assert project_names() == ["cone_geometry", "depth_limit", "feature_amounts", "hyperplane_bias"]
    assert list(demo_steps()) == ["shared", "cone_geometry", "depth_limit", "feature_amounts", "hyperplane_bias"]


def test_adding_a_folder_adds_a_project(tmp_path, monkeypatch):
    pkg = tmp_path / "zeta_lab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(
        "from torch import nn\nfrom shared.models import register_model\n\n"
        "@register_model('zeta_net', project='zeta_lab')\n"
        "def zeta_net(num_classes, in_channels, input_size):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, num_classes))\n")
    (pkg / "demo.py").write_text("def run_demo(out_dir):\n    pass\n")
    roots = [*projects.__path__, str(tmp_path)]
    monkeypatch.setattr(projects, "__path__", roots)
    monkeypatch.setattr(projects.__spec__, "submodule_search_locations", roots)
    try:
        assert "zeta_lab" in project_names()
        assert project_modules("demo")["zeta_lab"] == "projects.zeta_lab.demo"
        assert "zeta_lab" in demo_steps()
        model = build_model("zeta_net", 3, 1, 4)
        assert model(__import__("torch").zeros(2, 1, 4, 4)).shape == (2, 3)
    finally:
        MODELS._items.pop("zeta_net", None)
        MODELS._meta.pop("zeta_net", None)
        for m in [m for m in sys.modules if m.startswith("projects.zeta_lab")]:
            del sys.modules[m]

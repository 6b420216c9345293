"""Analysis runs write into their own run's folder by default: two `paths` runs never overwrite each other."""
from pathlib import Path

import torch


def test_paths_runs_each_get_their_own_folder(mlflow_store, cli, tmp_path):
    g = torch.Generator().manual_seed(0)
    src = tmp_path / "resnet_4.pth"
    torch.save([torch.randn(3, 3, generator=g) for _ in range(4)], src)
    figures = []
    for _ in range(2):
        r = cli("depth-limit", "paths", "norm", str(src))
        assert r.exit_code == 0, r.output
        fig = next(l.split("figure: ", 1)[1] for l in r.stdout.splitlines() if l.startswith("figure: "))
        run_id = r.stdout.strip().rsplit("run ", 1)[1]
        figures.append(Path(fig))
        assert fig.startswith(str(tmp_path / "outputs" / "depth_limit" / run_id)), fig
    assert figures[0] != figures[1] and all(f.is_file() for f in figures)

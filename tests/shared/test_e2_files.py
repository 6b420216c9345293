"""Atomic writes give files the umask's mode (not mkstemp's private 0600)."""
import os
import stat

import pytest
import torch

from shared.files import current_umask, save_snapshot, write_json, write_text
from shared.plotting import new_figure, save_figure


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask):
        os.umask(mask)

    yield set_mask
    os.umask(old)


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what any other file gets
    assert _mode(plain) == expected
    fig, ax = new_figure()
    ax.plot([0, 1])
    written = [write_json(tmp_path / "a.json", {"a": 1}), write_text(tmp_path / "t.txt", "hi"),
               save_snapshot(tmp_path / "s.pt", {"model_state_dict": {"w": torch.zeros(2)}}),
               save_figure(fig, tmp_path / "f.png")]
    for p in written:
        assert _mode(p) == expected, p


def test_overwriting_keeps_content_atomic(tmp_path, umask):
    umask(0o022)
    p = write_json(tmp_path / "a.json", {"a": 1})
    write_json(p, {"a": 2})
    assert p.read_text().strip().endswith("}") and '"a": 2' in p.read_text()
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_save_figure_closes_the_figure(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = new_figure()
    ax.plot([0, 1])
    save_figure(fig, tmp_path / "f.png")
    assert not plt.fignum_exists(fig.number)

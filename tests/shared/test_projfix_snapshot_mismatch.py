"""A snapshot that does not fit the model names the real mismatch: another architecture, or the parameter with
both shapes and the build settings that differ (classes, input size, width), not "pass the --arch"."""
import pytest
import torch.nn as nn

from shared.errors import UsageError
from shared.files import load_weights
from shared.models import build_model


def _snap(model, path="s.pt"):
    return {"model_state_dict": model.state_dict(), "model_spec": dict(model.geomlab_spec), "path": path}


def _error(model, snap) -> str:
    with pytest.raises(UsageError) as e:
        load_weights(model, snap)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_same_architecture_other_class_count_names_parameter_shapes_and_cause():
    snap = _snap(build_model("lenet_small", 10, 1, 28))
    msg = _error(build_model("lenet_small", 3, 1, 28), snap)
    assert "has shape (10, 256) in the snapshot but (3, 256) here" in msg
    assert "same architecture (lenet_small)" in msg and "num_classes 10 vs 3" in msg
    assert "pass the --arch" not in msg


def test_same_architecture_other_input_size_or_width():
    snap = _snap(build_model("lenet_small", 10, 1, 28))
    assert "input_size 28 vs 32" in _error(build_model("lenet_small", 10, 1, 32), snap)
    snap = _snap(build_model("mlp", 10, 1, 28, hidden=32))
    msg = _error(build_model("mlp", 10, 1, 28, hidden=16), snap)
    assert "hidden 32 vs 16" in msg and "in the snapshot but" in msg


def test_other_architecture_says_which():
    msg = _error(build_model("mlp", 10, 1, 28), _snap(build_model("lenet_small", 10, 1, 28)))
    assert "was written for architecture 'lenet_small', not 'mlp'" in msg and "--arch lenet_small" in msg


def test_unknown_architecture_lists_both_possible_causes():
    msg = _error(nn.Linear(3, 2), {"model_state_dict": nn.Linear(4, 2).state_dict()})
    assert "parameter weight has shape (2, 4) in the snapshot but (2, 3) here" in msg
    assert "another architecture, or the same one built for another number of classes" in msg

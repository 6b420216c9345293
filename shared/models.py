"""One model registry for all projects.

Projects register their constructors with :func:`register_model`; every constructor takes
``(num_classes, in_channels, input_size, **options)`` and returns an ``nn.Module``. ``build_model`` looks a name up
(an unknown or missing name lists what exists) and records how the model was built on the module, so snapshots can
rebuild it without the user repeating ``--arch``.

A few generic baselines live here (``mlp``, ``lenet_small``); the architectures of each paper live in its project.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch
from torch import nn

from shared.errors import UsageError
from shared.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture", "--arch")



def register_model(name: str, project: str = "shared", **meta):
    """Decorator: register a model constructor under ``name``."""
    return MODELS.register(name, project=project, **meta)


def load_project_models() -> None:
    """Import every project's ``models.py`` (discovered, see :mod:`shared.projects`) so that its models register;
    done lazily, on the first lookup of a name that is not registered yet."""
    from shared.projects import project_modules

    for mod in project_modules("models").values():
        importlib.import_module(mod)


def build_model(arch: str | None, num_classes: int, in_channels: int, input_size: int | tuple, *,
                project: str | None = None, **options) -> nn.Module:
    """Build a registered architecture; ``project`` restricts the names offered in the error message."""
    if arch not in MODELS:
        load_project_models()
    if arch not in MODELS or not arch:
        names = MODELS.choices(**({"project": project} if project else {}))
        what = f"unknown architecture {arch!r}" if arch else "no architecture given"
        raise UsageError(f"{what}; pass --arch with one of: {names}")
    if project and MODELS.meta(arch).get("project") not in (project, "shared"):
        raise UsageError(f"architecture {arch!r} belongs to project {MODELS.meta(arch)['project']}; "
                         f"for {project} pass --arch with one of: {MODELS.choices(project=project)}")
    try:
        model = MODELS.get(arch)(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **options)
    except TypeError as e:
        raise UsageError(f"architecture {arch!r} does not take these options ({e}); check the option names") from None
    model.geomlab_spec = {"arch": arch, "num_classes": num_classes, "in_channels": in_channels,  # type: ignore
                          "input_size": input_size, "options": dict(options)}
    return model


def model_spec(model: nn.Module) -> dict:
    """How ``model`` was built (see :func:`build_model`), or {} for a model built by hand."""
    return dict(getattr(model, "geomlab_spec", {}))


def rebuild(spec: dict) -> nn.Module:
    """Build the model a snapshot's ``model_spec`` describes."""
    return build_model(spec["arch"], spec["num_classes"], spec["in_channels"], spec["input_size"], **spec.get("options", {}))


def _size(input_size) -> tuple[int, int]:
    return tuple(input_size) if isinstance(input_size, (tuple, list)) else (input_size, input_size)  # type: ignore


@register_model("mlp")
def mlp(num_classes: int, in_channels: int, input_size, hidden: int = 256, depth: int = 2) -> nn.Module:
    """A plain ReLU MLP on flattened inputs (a generic baseline)."""
    h, w = _size(input_size)
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_channels * h * w
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


@register_model("lenet_small")
def lenet_small(num_classes: int, in_channels: int, input_size, width: int = 32) -> nn.Module:
    """Two 5x5 conv + max-pool stages and two linear layers: the classic small baseline (about 0.91 on Fashion-MNIST)."""
    h, w = _size(input_size)
    feat = nn.Sequential(
        nn.Conv2d(in_channels, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
    )
    n = 2 * width * (h // 4) * (w // 4)
    return nn.Sequential(feat, nn.Flatten(), nn.Linear(n, 256), nn.ReLU(), nn.Dropout(0.25), nn.Linear(256, num_classes))

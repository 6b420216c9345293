"""Teachers and "special" student networks of Gamba et al. 2019 (On the Geometry of Rectifier CNNs).

Teachers are plain VGG / LeNet stacks of 3x3 convolutions (padding 1, stride 1, ReLU, no BatchNorm) and 2x2
max-pools, followed by the original classifiers.  Each ``Student_<teacher>`` replaces every convolution by a
:class:`StudentConv`: one grouped convolution (``groups = n_in``, ``v * n_in`` output maps, map index
``k = c * v + o``, one bias per (input channel c, filter o)) followed by a ReLU and a sum over the input channels::

    O(o, i, j) = sum_c relu( b[c, o] + sum_{m, n} X(c, i + m, j + n) * W[c, o](m, n) )

which is what the original code computes (the README puts a single bias outside the ReLU instead).

Every constructor takes ``(num_classes, in_channels, input_size, init=...)``; ``input_size`` is an int or an
``(H, W)`` pair.  Max-pools floor odd sizes as torch does (28 -> 14 -> 7 -> 3 for MNIST and three pools).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from projects.cone_geometry import student_kernel
from shared.errors import UsageError

# --------------------------------------------------------------------------------------------------------------
# Configurations (ints: 3x3 conv with that many filters; "M": 2x2 max-pool, stride 2)

CFGS: dict[str, list] = {
    "VGG7": [64, 64, "M", 128, 128, "M"],
    "VGG9": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
    "VGG11exp": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M"],
    "VGG11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "VGG13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "VGG16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "VGG19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
    "LeNet5": [6, "M", 16, "M"],
    "LeNet8": [6, 6, "M", 16, 16, "M"],
    "LeNet9": [6, 6, "M", 16, 16, "M", 64, 64, "M"],
}

TEACHERS: tuple[str, ...] = tuple(CFGS)
STUDENTS: tuple[str, ...] = tuple(f"Student_{t}" for t in TEACHERS)
ARCHS: tuple[str, ...] = TEACHERS + STUDENTS

INITS: tuple[str, ...] = ("x_gaussian", "x_uniform", "h_uniform", "h_gaussian", "fallback")

# hidden widths of the classifiers (the last layer maps to num_classes)
VGG_HIDDEN = (512, 512)
LENET_HIDDEN = (120, 84)
LENET_STUDENT_HIDDEN = (120,)  # Student_LeNet5 / Student_LeNet8 drop the 84 layer (as the original)


def _size2(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return int(input_size), int(input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) != 2:
        raise UsageError(f"input_size must be an int or (H, W), got {size}; pass the spatial size only")
    return size  # type: ignore[return-value]


def feature_size(cfg: Sequence, input_size: int | Sequence[int]) -> tuple[int, int]:
    """Spatial size after the feature extractor (each 'M' floors H and W by 2)."""
    h, w = _size2(input_size)
    for v in cfg:
        if v == "M":
            h, w = h // 2, w // 2
    return h, w


def teacher_name(arch: str) -> str:
    """``Student_VGG9`` -> ``VGG9``; ``VGG9`` -> ``VGG9``; anything else raises UsageError."""
    base = arch[len("Student_"):] if arch.startswith("Student_") else arch
    if base not in CFGS:
        raise UsageError(f"unknown architecture {arch!r}; use one of: {', '.join(ARCHS)}")
    return base


def is_student(arch: str) -> bool:
    teacher_name(arch)
    return arch.startswith("Student_")


# --------------------------------------------------------------------------------------------------------------
# The student convolution


class StudentConv(nn.Conv2d):
    """ReLU per (input channel, filter), then sum over input channels, as one module.

    The parameters are those of the original grouped ``nn.Conv2d(n_in, v * n_in, k, padding=k // 2,
    groups=n_in, bias=True)``: ``weight`` has shape ``(v * n_in, 1, k, k)`` and ``bias`` shape ``(v * n_in,)``,
    both indexed by ``c * v + o``.  Forward: ``relu(grouped_conv(x)).view(B, n_in, v, H, W).sum(1)``, computed on
    CPU by the fused kernel of :mod:`projects.cone_geometry.student_kernel` (same parameters, no intermediate) and
    by :meth:`reference_forward` elsewhere.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(in_channels, out_channels * in_channels, kernel_size, padding=kernel_size // 2,
                         groups=in_channels, bias=True)
        self.n_in = in_channels
        self.n_out = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if student_kernel.use_fused(self, x):
            return student_kernel.student_conv(self, x)
        return self.reference_forward(x)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The grouped convolution (materializes ``n_in x n_out x H x W`` per image): the kernel's reference."""
        z = F.relu(self._conv_forward(x, self.weight, self.bias))
        b, _, h, w = z.shape
        return z.view(b, self.n_in, self.n_out, h, w).sum(1)

    def channel_filters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights as ``(n_in, v, k, k)`` and biases as ``(n_in, v)``: entry [c, o] is channel c of filter o."""
        k = self.kernel_size
        return (self.weight.detach().reshape(self.n_in, self.n_out, k[0], k[1]),
                self.bias.detach().reshape(self.n_in, self.n_out))

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_out={self.n_out}, kernel_size={self.kernel_size}"


# --------------------------------------------------------------------------------------------------------------
# Initialization


def init_module(m: nn.Module, init: str) -> None:
    """Initialize one Conv2d / Linear as the original ``_initialize_weights`` (biases zeroed).

    ``x_gaussian`` / ``x_uniform``: Xavier normal / uniform with gain sqrt(2); ``h_uniform`` / ``h_gaussian``:
    Kaiming (fan_in, relu); ``fallback``: conv ~ N(0, 2 / (k_h k_w out_channels)), linear ~ N(0, 0.01^2).
    Fans come from the weight shape, so a grouped student conv has fan_in = 9 and fan_out = 9 v n_in.
    """
    gain = nn.init.calculate_gain("relu")
    if not isinstance(m, (nn.Conv2d, nn.Linear)):
        return
    with torch.no_grad():
        if init == "x_gaussian":
            nn.init.xavier_normal_(m.weight, gain=gain)
        elif init == "x_uniform":
            nn.init.xavier_uniform_(m.weight, gain=gain)
        elif init == "h_uniform":
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
        elif init == "h_gaussian":
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif init == "fallback":
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.normal_(0.0, math.sqrt(2.0 / n))
            else:
                m.weight.normal_(0.0, 0.01)
        else:
            raise UsageError(f"unknown --init {init!r}; use one of: {', '.join(INITS)}")
        if m.bias is not None:
            m.bias.zero_()


def check_init(init: str) -> str:
    if init not in INITS:
        raise UsageError(f"unknown --init {init!r}; use one of: {', '.join(INITS)}")
    return init


# --------------------------------------------------------------------------------------------------------------
# Networks


def make_features(cfg: Sequence, in_channels: int, student: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif student:
            layers.append(StudentConv(c, int(v), 3))
            c = int(v)
        else:
            layers += [nn.Conv2d(c, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = int(v)
    return nn.Sequential(*layers)


def make_classifier(in_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(0.5)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class ConeNet(nn.Module):
    """``features`` (convs and pools) -> flatten -> ``classifier``; the common shape of all 20 models."""

    def __init__(self, arch: str, num_classes: int = 10, in_channels: int = 3,
                 input_size: int | Sequence[int] = 32, init: str = "x_gaussian"):
        super().__init__()
        base = teacher_name(arch)
        student = arch.startswith("Student_")
        check_init(init)
        if num_classes < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        if in_channels < 1:
            raise UsageError(f"in_channels must be >= 1, got {in_channels}")
        cfg = CFGS[base]
        h, w = feature_size(cfg, input_size)
        if h < 1 or w < 1:
            raise UsageError(f"{arch} has {cfg.count('M')} 2x2 max-pools and needs inputs of at least "
                             f"{2 ** cfg.count('M')}x{2 ** cfg.count('M')} pixels, got {_size2(input_size)}; "
                             "use a smaller architecture or resize the data")
        self.arch = arch
        self.cfg = list(cfg)
        self.input_size = _size2(input_size)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.init = init
        last = [v for v in cfg if v != "M"][-1]
        if base.startswith("LeNet"):
            hidden = LENET_STUDENT_HIDDEN if (student and base in ("LeNet5", "LeNet8")) else LENET_HIDDEN
            if student and base == "LeNet9":
                hidden = VGG_HIDDEN  # the original builds Student_LeNet9 with the VGG classifier
        else:
            hidden = VGG_HIDDEN
        self.features = make_features(cfg, in_channels, student)
        self.classifier = make_classifier(h * w * int(last), hidden, num_classes)
        # All Conv2d / Linear layers are initialized, for teachers and students alike.  (The original's LeNet
        # teachers left their Linear layers at PyTorch's default by an indentation bug; fixed here.)
        for m in self.modules():
            init_module(m, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))

    @property
    def is_student(self) -> bool:
        return self.arch.startswith("Student_")


def build(arch: str, num_classes: int = 10, in_channels: int = 3, input_size: int | Sequence[int] = 32,
          init: str = "x_gaussian") -> ConeNet:
    """Build any of the 20 architectures by name."""
    return ConeNet(arch, num_classes=num_classes, in_channels=in_channels, input_size=input_size, init=init)


def _constructor(arch: str) -> Callable[..., ConeNet]:
    def make(num_classes: int = 10, in_channels: int = 3, input_size: int | Sequence[int] = 32,
             init: str = "x_gaussian") -> ConeNet:
        return ConeNet(arch, num_classes=num_classes, in_channels=in_channels, input_size=input_size, init=init)

    make.__name__ = arch
    make.__doc__ = f"{arch}: cfg {CFGS[teacher_name(arch)]} (see module docstring)."
    return make


CONSTRUCTORS: dict[str, Callable[..., ConeNet]] = {a: _constructor(a) for a in ARCHS}
globals().update(CONSTRUCTORS)  # VGG9(...), Student_VGG9(...), ...


def student_of(arch: str) -> str:
    """The student name for a teacher or student name (``VGG9`` or ``Student_VGG9`` -> ``Student_VGG9``)."""
    return "Student_" + teacher_name(arch)


# --------------------------------------------------------------------------------------------------------------
# Loading original checkpoints


def convert_original_state_dict(state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Map a state_dict of the original code (magamba/cones) onto this module layout.

    The original teachers use the same layout (conv, ReLU, ..., pool) so their keys are unchanged. Original
    students have ``[conv, ReLU, Bias]`` per convolution (``Bias`` without parameters) where we have one
    :class:`StudentConv`; feature indices are renumbered accordingly.  Classifier keys are unchanged.
    """
    if not arch.startswith("Student_"):
        return dict(state)
    cfg = CFGS[teacher_name(arch)]
    mapping: dict[int, int] = {}
    old = new = 0
    for v in cfg:
        if v == "M":
            old, new = old + 1, new + 1
        else:
            mapping[old] = new
            old, new = old + 3, new + 1
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "module":  # DataParallel prefix
            parts = parts[1:]
        if parts[0] == "features" and len(parts) >= 3:
            idx = int(parts[1])
            if idx not in mapping:
                raise UsageError(f"checkpoint key {key!r} (an outer Bias with parameters?) has no place in "
                                 f"{arch}; only checkpoints of the original code with bias=False can be loaded")
            parts[1] = str(mapping[idx])
        out[".".join(parts)] = value
    return out


# --------------------------------------------------------------------------------------------------------------
# Registration in the shared model registry (``geomlab archs --project cone_geometry`` lists them)


def _register() -> None:
    from shared.models import MODELS, register_model

    for name, ctor in CONSTRUCTORS.items():
        if name not in MODELS:
            register_model(name, project="cone_geometry", student=name.startswith("Student_"))(ctor)


_register()

"""Models of the depth-limit thesis (2024) and the per-step quantities logged while training them (pure functions
on tensors).

* :class:`DepthLimitResNet`: h_0 = U_in x, L residual blocks of dim x dim matrices W_0..W_{L-1} scaled by
  delta_L = L^-alpha, y = U_out h_L. U_in and U_out are frozen random projections (buffers, never trained).
  The update rules, inits and losses follow the original code (see README "Differences from the original code").
* :class:`CifarResNet`: the He et al. CIFAR ResNet-56/104/224 with the original's per-stage scaling
  delta = (blocks per stage)^-alpha and learning rate L^(alpha - beta - 0.05).
* Per-step quantities: :func:`weight_path`, :func:`pvar_metrics`, :func:`output_gradients`, :func:`omega`,
  :func:`dynamic_lr`, :func:`classification_scores`.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from projects.depth_limit.pvar import p_variation
from shared.errors import UsageError

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": F.relu,
    "elu": F.elu,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
}
AUGMENTATIONS = ("skip", "none", "inc_skip", "linear_skip")
INITS = ("constant", "ntrunc", "lin_dec", "lin_inc", "quad", "lin_dec_sym", "lin_inc_sym")
CONVENTIONS = ("code", "readme")


def _choice(value: str, allowed, option: str) -> str:
    if value not in allowed:
        raise UsageError(f"unknown {option} {value!r}; use one of: {', '.join(allowed)}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# initialisation


def init_scale(L: int, alpha: float, gamma: float) -> tuple[float, float]:
    """(s, m) with beta = 1 - alpha, s = 1/gamma + beta and m = L^-s."""
    if gamma == 0:
        raise UsageError("--gamma must be non-zero (the init scale uses 1/gamma); e.g. --gamma 0.5")
    s = 1.0 / gamma + (1.0 - alpha)
    return s, float(L) ** (-s)


def init_values(init: str, L: int, alpha: float, gamma: float, dim: int = 1, convention: str = "code") -> np.ndarray:
    """The constant each layer's entries start from (for ``ntrunc``: the truncation bound), one per layer.

    code (the original's resnet.py): constant/ntrunc m/2; lin_dec (L-i-1)^s m^2; lin_inc i^s m^2;
    quad ((L-i-1) i)^s m^3; lin_dec_sym sgn(L-2(i-1)) |L-2(i-1)|^s m^2 / 2^s; lin_inc_sym sgn(2i-L) |2i-L|^s m^2/2^s,
    with sgn(0) = +1. readme: constant/ntrunc m / dim^2 (the schedules are not in the README and are unchanged).
    """
    _choice(init, INITS, "--init")
    _choice(convention, CONVENTIONS, "--init-convention")
    s, m = init_scale(L, alpha, gamma)
    i = np.arange(L, dtype=np.float64)

    def sgn(v):
        return np.where(v < 0, -1.0, 1.0)

    if init in ("constant", "ntrunc"):
        base = m / dim ** 2 if convention == "readme" else m / 2
        return np.full(L, base)
    if init == "lin_dec":
        return (L - i - 1) ** s * m ** 2
    if init == "lin_inc":
        return i ** s * m ** 2
    if init == "quad":
        return ((L - i - 1) * i) ** s * m ** 3
    if init == "lin_dec_sym":
        v = L - 2 * (i - 1)
        return sgn(v) * np.abs(v) ** s * m ** 2 / 2 ** s
    v = 2 * i - L  # lin_inc_sym
    return sgn(v) * np.abs(v) ** s * m ** 2 / 2 ** s


def init_weights(W: torch.Tensor, init: str, alpha: float, gamma: float, convention: str = "code",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill W (L, dim, dim) in place with the named init and return it.

    ntrunc (code): TruncNormal(0, std = sqrt(m/2)) on [-m/2, m/2]; falls back to constant when m/2 <= 1e-9.
    ntrunc (readme): TruncNormal(0, std = b) on [-b, b] with b = m / dim^2."""
    L, dim, _ = W.shape
    vals = init_values(init, L, alpha, gamma, dim, convention)
    with torch.no_grad():
        if init == "ntrunc" and abs(vals[0]) > 1e-9:
            b = float(vals[0])
            std = b if convention == "readme" else math.sqrt(b)
            torch.nn.init.trunc_normal_(W, mean=0.0, std=std, a=-b, b=b, generator=generator)
        else:
            W.copy_(torch.as_tensor(vals, dtype=W.dtype).view(L, 1, 1).expand_as(W))
    return W


# ---------------------------------------------------------------------------------------------------------------
# the depth-limit ResNet


class DepthLimitResNet(nn.Module):
    """Residual network in the depth limit (the thesis code's ``ResNet`` in resnet.py, with one (L, dim, dim) weight).

    Row-vector form, as the code computes it (W_t in PyTorch [out, in] layout, delta = L^-alpha):

    * ``skip``:        h <- h + delta * act(h W_t^T)
    * ``none``:        h <- delta * act(h W_t^T)
    * ``linear_skip``: h <- h + act(h) W_t^T                       (no delta)
    * ``inc_skip``:    h <- h + act(h W_{t-1}^T) (W_t - W_{t-1})    (no delta, W_{-1} = 0, difference untransposed)
    """

    def __init__(self, in_features: int, out_features: int, L: int = 10, dim: int = 1, alpha: float = 0.5,
                 gamma: float = 0.5, activation: str = "tanh", augmentation: str = "skip", init: str = "constant",
                 init_convention: str = "code", seed: int | None = None):
        super().__init__()
        if L < 1 or dim < 1 or in_features < 1 or out_features < 1:
            raise UsageError(f"--L, --dim and the data sizes must be >= 1 (got L={L}, dim={dim}, "
                             f"in={in_features}, out={out_features})")
        self.L, self.dim, self.alpha, self.gamma = int(L), int(dim), float(alpha), float(gamma)
        self.activation = _choice(activation or "tanh", tuple(ACTIVATIONS), "--activation")
        self.augmentation = _choice(augmentation, AUGMENTATIONS, "--update-rule")
        self.init = _choice(init, INITS, "--init")
        self.init_convention = _choice(init_convention, CONVENTIONS, "--init-convention")
        self.delta = float(L) ** (-alpha)
        self.act = ACTIVATIONS[self.activation]
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        U_in = torch.empty(dim, in_features)
        U_out = torch.empty(out_features, dim)
        # PyTorch's default Linear init (kaiming-uniform, a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        nn.init.kaiming_uniform_(U_in, a=math.sqrt(5), generator=gen)
        nn.init.kaiming_uniform_(U_out, a=math.sqrt(5), generator=gen)
        self.register_buffer("U_in", U_in)
        self.register_buffer("U_out", U_out)
        self.W = nn.Parameter(init_weights(torch.empty(L, dim, dim), init, alpha, gamma, init_convention, gen))

    @property
    def beta(self) -> float:
        return 1.0 - self.alpha

    def extra_repr(self) -> str:
        return (f"L={self.L}, dim={self.dim}, alpha={self.alpha}, gamma={self.gamma}, act={self.activation}, "
                f"augmentation={self.augmentation}, init={self.init}")

    def read_in(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).to(self.U_in.dtype) @ self.U_in.T

    def run_blocks(self, h: torch.Tensor, times_wt: Callable[[torch.Tensor, int], torch.Tensor],
                   times_diff: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
        """The L residual updates, with the weights reached only through two linear maps:
        ``times_wt(u, t) = u W_t^T`` and ``times_diff(u, t) = u (W_t - W_{t-1})`` (W_{-1} = 0)."""
        act, delta, aug = self.act, self.delta, self.augmentation
        for t in range(self.L):
            if aug == "skip":
                h = h + delta * act(times_wt(h, t))
            elif aug == "none":
                h = delta * act(times_wt(h, t))
            elif aug == "linear_skip":
                h = h + times_wt(act(h), t)
            else:  # inc_skip; at t = 0: act(0) W_0, zero for tanh/relu/gelu/elu and 0.5 * 1^T W_0 for sigmoid
                u = act(torch.zeros_like(h)) if t == 0 else act(times_wt(h, t - 1))
                h = h + times_diff(u, t)
        return h

    def propagate(self, h: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """Run the L blocks. h: (..., B, dim); W: (..., L, dim, dim) with leading dims broadcasting against h's."""
        if W.shape[-3] != self.L:
            raise UsageError(f"the weights have {W.shape[-3]} layers but the model has L={self.L}")

        def times_wt(u, t):
            return u @ W.select(-3, t).transpose(-1, -2)

        def times_diff(u, t):
            Wt = W.select(-3, t)
            return u @ (Wt if t == 0 else Wt - W.select(-3, t - 1))

        return self.run_blocks(h, times_wt, times_diff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.propagate(self.read_in(x), self.W) @ self.U_out.T

    def forward_with_weights(self, x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """Outputs for a batch of weight stacks W: (G, L, dim, dim) -> (G, B, out); one pass for all G."""
        h = self.read_in(x)
        h = h.unsqueeze(0).expand(W.shape[0], *h.shape)
        return self.propagate(h, W) @ self.U_out.T

    def forward_on_plane(self, x: torch.Tensor, theta: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor,
                         a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Outputs (G, B, out) at the G weight stacks theta + a_g d1 + b_g d2, all G in one pass.

        Layer t's G matrices are formed only while layer t runs (G * dim^2 numbers, never G * L * dim^2), and each
        block is one batched matrix product over the G points. Computes in theta's dtype."""
        dt = theta.dtype
        G, dim = a.shape[0], self.dim
        h0 = self.read_in(x.to(dt)) if self.U_in.dtype == dt else x.flatten(1).to(dt) @ self.U_in.to(dt).T
        h = h0.unsqueeze(0).expand(G, *h0.shape)
        a = a.to(dt).view(G, 1, 1)
        b = b.to(dt).view(G, 1, 1)

        def weights(t):
            return torch.addcmul(torch.addcmul(theta[t], a, d1[t]), b, d2[t])  # (G, dim, dim)

        def times_wt(u, t):
            return torch.bmm(u, weights(t).transpose(1, 2))

        def times_diff(u, t):
            D = weights(t) if t == 0 else torch.addcmul(torch.addcmul(theta[t] - theta[t - 1], a, d1[t] - d1[t - 1]),
                                                         b, d2[t] - d2[t - 1])
            return torch.bmm(u, D)

        out = self.run_blocks(h, times_wt, times_diff)
        return out @ self.U_out.to(dt).T

    def export_weights(self) -> list[torch.Tensor]:
        """The trained weights as the original exported them: a list of L (dim, dim) tensors, [out, in] layout."""
        return [w.detach().cpu().clone() for w in self.W]


# ---------------------------------------------------------------------------------------------------------------
# losses and metrics


def p_loss(yhat: torch.Tensor, y: torch.Tensor, p: float = 2.0, convention: str = "code") -> torch.Tensor:
    """Batch mean of |y_i - yhat_i|_p^p (code); the README's variant multiplies by 1/p."""
    if p < 1:
        raise UsageError(f"--p-loss must be >= 1, got {p}")
    y = y.reshape(yhat.shape).to(yhat.dtype)
    per = (y - yhat).abs().pow(p).sum(dim=-1)
    loss = per.mean()
    return loss / p if convention == "readme" else loss


def make_loss(task: str, p: float = 2.0, convention: str = "code") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The batch-mean loss of the classification (cross entropy) or regression (p-loss) model."""
    _choice(convention, CONVENTIONS, "--loss-convention")
    if task == "classification":
        return lambda yhat, y: F.cross_entropy(yhat, y)
    if task == "regression":
        return lambda yhat, y: p_loss(yhat, y, p, convention)
    raise UsageError(f"unknown task {task!r}; use classification or regression")


def classification_scores(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """accuracy (macro, torchmetrics' default as in the original), accuracy_micro (plain top-1), macro precision and
    recall. Classes with no true and no predicted sample are left out of the macro averages (torchmetrics' rule)."""
    pred = logits.argmax(dim=-1).reshape(-1).cpu()
    target = target.reshape(-1).cpu().long()
    cm = torch.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    cm = cm.double()
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    present = (tp + fp + fn) > 0
    prec = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), torch.zeros_like(tp))
    rec = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), torch.zeros_like(tp))
    k = present.sum().clamp(min=1)
    recall = float(rec[present].sum() / k)
    return {
        "accuracy": recall,
        "accuracy_micro": float(tp.sum() / cm.sum().clamp(min=1)),
        "precision": float(prec[present].sum() / k),
        "recall": recall,
    }


# ---------------------------------------------------------------------------------------------------------------
# per-step quantities


def weight_path(W, beta: float) -> np.ndarray:
    """x_k = L^beta vec(W_k), k = 0..L-1, as an (L, dim*dim) float64 array. W: (L, dim, dim) tensor or a list."""
    if isinstance(W, (list, tuple)):
        W = torch.stack([torch.as_tensor(w) for w in W])
    W = torch.as_tensor(W).detach().cpu().double()
    L = W.shape[0]
    return (float(L) ** beta) * W.reshape(L, -1).numpy()


def pvar_keys(p: float) -> tuple[str, str, str]:
    """The metric names of the original: '{p:.3f}-variation', '{p/2:.3f}-variation', '{3p/4:.3f}-variation'."""
    return f"{p:.3f}-variation", f"{p / 2:.3f}-variation", f"{p * 3 / 4:.3f}-variation"


def check_p_var(p: float) -> float:
    p = float(p)
    if not (p >= 2.0) or not math.isfinite(p):
        raise UsageError(f"--p-var must be >= 2 because its half p/2 must be >= 1 for the p/2-variation; got {p}")
    return p


def pvar_metrics(W, p: float, beta: float, method: str = "auto") -> dict[str, float]:
    """The three logged p-variation norms of the weight path: V_q(x)^(1/q) for q = p, p/2, 3p/4."""
    p = check_p_var(p)
    x = weight_path(W, beta)
    out = {}
    for key, q in zip(pvar_keys(p), (p, p / 2, 3 * p / 4)):
        out[key] = p_variation(x, q, method=method).norm
    return out


def output_gradients(yhat: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
    """g_i = d(batch-mean loss)/d yhat_i for every sample i (shape of yhat)."""
    z = yhat.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss_fn(z, y), z)
    return g


def omega(yhat: torch.Tensor, y: torch.Tensor, loss_fn, convention: str = "code") -> float:
    """Omega(t), the average squared output-gradient norm of a batch of B samples.

    code (the original's store_grad): (1/B) sum_i |g_i|^2 with g_i the gradient of the batch-mean loss, i.e.
    (1/B^3) sum_i |grad l_i|^2. readme: (1/B) sum_i |grad l_i|^2 = B^2 times the code's value."""
    _choice(convention, CONVENTIONS, "--omega-convention")
    g = output_gradients(yhat, y, loss_fn).reshape(yhat.shape[0], -1)
    val = float(g.double().pow(2).sum(dim=1).mean())
    B = yhat.shape[0]
    return val * B * B if convention == "readme" else val


def dynamic_lr_constant(activation: str) -> float:
    return 10.0 if activation == "relu" else 2.0


def dynamic_lr(lr0: float, pvar_norm: float, activation: str) -> float | None:
    """The original's rule lr = C * lr0 / |W|_{p-var}^2 with the *initial* lr0, C = 10 for relu and 2 otherwise.
    Returns None when the p-variation norm is 0 (the rule is undefined; the caller keeps the current lr)."""
    if not pvar_norm > 0:
        return None
    return dynamic_lr_constant(activation) * lr0 / pvar_norm ** 2


# ---------------------------------------------------------------------------------------------------------------
# the CIFAR ResNets (resnet_cifar10.py)

CIFAR_DEPTHS = {56: 9, 104: 17, 224: 37}


class _PadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad `pad` channels on each side."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class ScaledBasicBlock(nn.Module):
    """y = relu(bn1(conv1 x)) * delta; y = bn2(conv2 y) * delta; out = relu(y + shortcut(x))."""

    def __init__(self, in_planes: int, planes: int, stride: int, delta: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.delta = delta
        self.shortcut = _PadShortcut(planes // 4) if (stride != 1 or in_planes != planes) else nn.Identity()

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x))) * self.delta
        y = self.bn2(self.conv2(y)) * self.delta
        return F.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (16/32/64 planes, 3 stages of n blocks, depth 6n + 2) with delta = n^-alpha."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3, alpha: float = 0.75,
                 block_init: str = "default"):
        super().__init__()
        if blocks_per_stage < 1:
            raise UsageError(f"blocks per stage must be >= 1, got {blocks_per_stage}")
        _choice(block_init, ("default", "kaiming"), "--block-init")
        self.alpha = alpha
        self.delta = float(blocks_per_stage) ** (-alpha)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(ScaledBasicBlock(in_planes, planes, stride if b == 0 else 1, self.delta))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.linear = nn.Linear(64, num_classes)
        nn.init.kaiming_normal_(self.conv1.weight)
        nn.init.kaiming_normal_(self.linear.weight)
        if block_init == "kaiming":  # what the original's init loop meant to do (it never reached the convs)
            for m in self.modules():
                if isinstance(m, nn.Conv2d) and m is not self.conv1:
                    nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.stage3(self.stage2(self.stage1(y)))
        y = F.adaptive_avg_pool2d(y, 1).flatten(1)
        return self.linear(y)


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3, alpha: float = 0.75,
                 block_init: str = "default") -> CifarResNet:
    if depth not in CIFAR_DEPTHS:
        raise UsageError(f"--L must be one of {', '.join(map(str, CIFAR_DEPTHS))} for the CIFAR ResNet, got {depth}")
    return CifarResNet(CIFAR_DEPTHS[depth], num_classes, in_channels, alpha, block_init)


def cifar_lr(depth: int, alpha: float = 0.75, offset: float = 0.05) -> float:
    """The original's learning rate eta = L^(alpha - beta - 0.05) with beta = 1 - alpha (L^0.45 for alpha = 0.75)."""
    return float(depth) ** (alpha - (1.0 - alpha) - offset)


# ---------------------------------------------------------------------------------------------------------------
# registration in the shared model registry


def _in_features(in_channels: int, input_size) -> int:
    if isinstance(input_size, (tuple, list)):
        return int(in_channels * int(np.prod(input_size)))
    return int(in_channels * input_size * input_size) if input_size and input_size > 1 else int(in_channels)


def _register() -> None:
    from shared.models import MODELS, register_model

    if "depth_limit_resnet" in MODELS:
        return

    @register_model("depth_limit_resnet", project="depth_limit")
    def depth_limit_resnet(num_classes: int, in_channels: int, input_size, **options) -> nn.Module:
        """Seed 003's depth-limit ResNet; num_classes 0 or 1 means one regression output."""
        return DepthLimitResNet(_in_features(in_channels, input_size), max(int(num_classes), 1), **options)

    for depth in CIFAR_DEPTHS:
        def make(num_classes: int, in_channels: int, input_size, _depth=depth, **options) -> nn.Module:
            return cifar_resnet(_depth, num_classes, in_channels, **options)

        register_model(f"resnet{depth}_scaled", project="depth_limit")(make)


_register()

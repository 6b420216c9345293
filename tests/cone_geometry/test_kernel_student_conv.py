"""The fused StudentConv CPU kernel equals the grouped-convolution reference (outputs and all gradients)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from projects.cone_geometry import student_kernel as sk
from projects.cone_geometry.models import StudentConv, build
from shared.errors import UsageError

pytestmark = pytest.mark.skipif(sk.library() is None, reason=f"fused kernel unavailable: {sk.unavailable()}")

RTOL = 1e-5


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> None:
    """Equal to ``rtol`` relative to the reference's scale (elementwise rtol plus rtol * max|b| absolute)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max().clamp_min(1e-30)))


def both(m: StudentConv, x: torch.Tensor, monkeypatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Output and (input, weight, bias) gradients of ``m(x)`` with the kernel and with the reference."""
    x = x.detach().requires_grad_(True)
    g = torch.randn(m(x).shape, dtype=x.dtype, generator=torch.Generator().manual_seed(7))
    res = []
    for impl in ("fused", "reference"):
        monkeypatch.setenv(sk.ENV, impl)
        y = m(x)
        res.append([y.detach(), *torch.autograd.grad(y, (x, m.weight, m.bias), g)])
    return res[0], res[1]


def random_module(c: int, o: int, k: int = 3, seed: int = 0, dtype=torch.float32) -> StudentConv:
    torch.manual_seed(seed)
    m = StudentConv(c, o, k).to(dtype)
    with torch.no_grad():
        m.weight.normal_(0, 0.5)
        m.bias.normal_(0, 0.3)  # non-zero biases: both signs of the pre-activation everywhere
    return m


@pytest.mark.parametrize("c,o,h,w,b,k", [
    (1, 64, 8, 8, 5, 3),     # first layer of Student_VGG9 on digits
    (3, 6, 7, 5, 1, 3),      # odd sizes, batch 1
    (5, 7, 9, 11, 3, 3),     # filters not a multiple of the vector width or block
    (17, 33, 13, 6, 2, 3),
    (64, 64, 8, 8, 4, 3),
    (16, 16, 1, 1, 3, 3),    # 1x1 maps (the last VGG9 layer on 8x8 inputs after pools)
    (4, 5, 6, 7, 2, 1),      # 1x1 kernel
    (3, 4, 9, 8, 2, 5),      # 5x5 kernel, padding 2
])
def test_fused_equals_reference_random(c, o, h, w, b, k, monkeypatch):
    m = random_module(c, o, k)
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(1))
    fused, ref = both(m, x, monkeypatch)
    for a, r in zip(fused, ref):
        close(a, r)


def test_fused_equals_reference_stride_dilation(monkeypatch):
    """Stride and dilation set on the module are honoured exactly as by the grouped convolution."""
    for stride, dilation, padding in [((2, 2), (1, 1), (1, 1)), ((1, 2), (2, 1), (2, 1)), ((1, 1), (1, 1), (0, 0))]:
        m = random_module(3, 5)
        m.stride, m.dilation, m.padding = stride, dilation, padding
        fused, ref = both(m, torch.randn(2, 3, 9, 10), monkeypatch)
        for a, r in zip(fused, ref):
            close(a, r)


def test_fused_equals_reference_trained_network(monkeypatch):
    """Whole Student_LeNet9 after some training: logits and every parameter gradient."""
    torch.manual_seed(0)
    monkeypatch.setenv(sk.ENV, "auto")
    net = build("Student_LeNet9", num_classes=10, in_channels=1, input_size=(11, 9))
    x, y = torch.randn(16, 1, 11, 9), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(8):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    assert any(float(m.bias.abs().max()) > 1e-3 for m in net.modules() if isinstance(m, StudentConv))
    net.eval()  # no dropout: both passes see the same network
    out = {}
    for impl in ("fused", "reference"):
        monkeypatch.setenv(sk.ENV, impl)
        net.zero_grad()
        logits = net(x)
        F.cross_entropy(logits, y).backward()
        out[impl] = [logits.detach()] + [p.grad.clone() for p in net.parameters()]
    for a, r in zip(out["fused"], out["reference"]):
        close(a, r)


def test_gradcheck_float64():
    m = random_module(2, 3, dtype=torch.float64)
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert sk.use_fused(m, x)
    assert torch.autograd.gradcheck(lambda x, w, b: sk._FusedStudentConv.apply(x, w, b, m),
                                    (x, m.weight, m.bias), eps=1e-6, atol=1e-7)


def test_channels_last_input(monkeypatch):
    m = random_module(6, 5)
    x = torch.randn(3, 6, 7, 8).to(memory_format=torch.channels_last)
    fused, ref = both(m, x, monkeypatch)
    for a, r in zip(fused, ref):
        close(a, r)


def test_bf16_autocast_uses_kernel_in_float32(monkeypatch, capsys):
    """bf16 inputs (autocast) run the kernel in the weights' float32 and come back as bf16 with a float32 gradient."""
    m = random_module(4, 5)
    x = torch.randn(2, 4, 6, 6).bfloat16().requires_grad_(True)
    monkeypatch.setenv(sk.ENV, "auto")
    assert sk.use_fused(m, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and m.weight.grad.dtype == torch.float32
    close(y.float(), m.reference_forward(x.float()).detach().bfloat16().float(), rtol=2e-2)


def test_fallbacks_are_automatic_and_said(monkeypatch, capsys):
    monkeypatch.setattr(sk, "_said", set())
    monkeypatch.setenv(sk.ENV, "auto")
    bf16 = random_module(3, 4).bfloat16()  # bf16 weights: not a kernel case
    x = torch.randn(2, 3, 5, 5).bfloat16()
    assert not sk.use_fused(bf16, x)
    torch.testing.assert_close(bf16(x), bf16.reference_forward(x))
    big = random_module(2, 3, k=7)  # 49 taps: not compiled
    assert not sk.use_fused(big, torch.randn(1, 2, 8, 8))
    reflect = random_module(2, 3)
    reflect.padding_mode = "reflect"
    assert not sk.use_fused(reflect, torch.randn(1, 2, 8, 8))
    assert sk.use_fused(random_module(2, 3), torch.randn(1, 2, 8, 8))
    err = capsys.readouterr().err
    assert "StudentConv: reference grouped convolution (torch.bfloat16 input with torch.bfloat16 weights)" in err
    assert "kernel size (7, 7)" in err and "padding_mode='reflect'" in err
    assert err.count("StudentConv: fused CPU kernel") == 1
    sk.use_fused(random_module(2, 3), torch.randn(1, 2, 8, 8))
    assert "fused" not in capsys.readouterr().err  # once per process


def test_vmap_falls_back_to_reference(monkeypatch):
    monkeypatch.setenv(sk.ENV, "auto")
    m, x = random_module(2, 3), torch.randn(4, 1, 2, 5, 5)
    out = torch.func.vmap(m)(x)
    torch.testing.assert_close(out, torch.stack([m.reference_forward(xi) for xi in x]))


def test_cuda_falls_back_to_reference():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    m = random_module(3, 4).cuda()
    x = torch.randn(2, 3, 6, 6, device="cuda")
    assert not sk.use_fused(m, x)
    torch.testing.assert_close(m(x), m.reference_forward(x))


def test_env_choice(monkeypatch):
    m, x = random_module(2, 3, k=7), torch.randn(1, 2, 8, 8)
    monkeypatch.setenv(sk.ENV, "reference")
    assert not sk.use_fused(random_module(2, 3), x) and sk.impl_name() == "reference"
    monkeypatch.setenv(sk.ENV, "fused")
    with pytest.raises(UsageError, match="cannot run: kernel size"):
        sk.use_fused(m, x)
    monkeypatch.setenv(sk.ENV, "fast")
    with pytest.raises(UsageError, match="use one of: auto, fused, reference"):
        sk.use_fused(m, x)


def test_no_compiler_or_failed_build_falls_back(monkeypatch, tmp_path):
    """Without a compiler, or when the build fails, forward still works (by the reference) and says why."""
    monkeypatch.setenv(sk.ENV, "auto")
    monkeypatch.setattr(sk, "cache_dirs", lambda: [tmp_path])
    m, x = random_module(2, 3), torch.randn(1, 2, 5, 5)
    for cxx, why in [("no-such-compiler-xyz", "no C++ compiler"), ("false", "false failed")]:
        monkeypatch.setenv("CXX", cxx)
        monkeypatch.setattr(sk, "_lib", None)
        monkeypatch.setattr(sk, "_error", None)
        assert not sk.use_fused(m, x)
        assert why in sk.unavailable() and sk.impl_name() == "reference"
        assert sk.run_tags("Student_VGG9", "cpu") == {"student_conv_impl": "reference"}
        torch.testing.assert_close(m(x), m.reference_forward(x))
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind


def test_cache_is_keyed_by_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(sk, "cache_dirs", lambda: [tmp_path])
    cxx = sk._compiler()
    here = sk.library_path(cxx)
    monkeypatch.setattr(sk, "_cpu_flags", lambda: "fpu sse2")
    assert sk.library_path(cxx) != here and sk.library_path(cxx).parent == tmp_path


def test_run_tags():
    assert sk.run_tags("VGG9", "cpu") == {}
    assert sk.run_tags("Student_VGG9", "cpu") == {"student_conv_impl": sk.impl_name()}
    assert sk.run_tags("Student_VGG9", "cuda") == {"student_conv_impl": "reference"}


def test_parameters_and_state_dict_unchanged():
    """Old snapshots load: the module keeps the grouped convolution's parameter names and shapes."""
    m = StudentConv(3, 5)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {"weight": (15, 1, 3, 3), "bias": (15,)}
    assert (m.in_channels, m.out_channels, m.groups, m.padding, m.stride) == (3, 15, 3, (1, 1), (1, 1))


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_training_run_records_the_implementation(mlflow_store, cli, monkeypatch, impl):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv(sk.ENV, impl)
    res = cli("cone-geometry", "train", "--arch", "Student_LeNet5", "--dataset", "digits", "--epochs", "1",
              "--batch-size", "256", "--device", "cpu")
    assert res.exit_code == 0, res.output
    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["student_conv_impl"] == ("fused" if impl == "auto" else "reference")

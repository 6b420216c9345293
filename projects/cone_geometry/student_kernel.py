"""The fused CPU kernel of :class:`~projects.cone_geometry.models.StudentConv` (``student_conv.cpp``).

``StudentConv`` as a grouped convolution materializes an ``n_in x n_out x H x W`` tensor per image; the kernel
computes ``out[b, o, p] = sum_c relu(bias[c, o] + sum_k X_k[b, c, p] W[c, o, k])`` without it (see the C++ file),
and its backward recomputes the pre-activations.  The grouped convolution stays the reference and the fallback.

Which one runs is decided per call by :func:`use_fused`: the kernel for CPU tensors in float32 / float64 (bf16 and
fp16 inputs, as under ``torch.autocast``, are computed in the weights' float32 and cast back), zero padding and a
supported kernel size; the reference otherwise (CUDA, no C++ compiler, a failed build).  The environment
variable ``GEOMLAB_STUDENT_CONV`` = ``auto`` (default) | ``fused`` | ``reference`` overrides it; ``fused`` fails
when the kernel cannot be built.  The choice is written to stderr once per process and reason, and
:func:`impl_name` gives it for run parameters (``student_conv_impl``).

The shared library is compiled with ``g++ -O3 -march=native`` on first use (or by ``make setup``, which calls
``python -m projects.cone_geometry.student_kernel``) into ``.geomlab-cache/student_conv/`` at the repository root
(``$GEOMLAB_CACHE/student_conv/`` when that is not writable), named by a hash of the source, the flags, the
compiler and the CPU's instruction-set flags, so a cache carried to another CPU rebuilds instead of crashing.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

from shared.errors import UsageError
from shared.files import cache_dir

ENV = "GEOMLAB_STUDENT_CONV"
CHOICES = ("auto", "fused", "reference")
SOURCE = Path(__file__).with_name("student_conv.cpp")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")
CPU_DTYPES = (torch.float32, torch.float64)
CAST_DTYPES = (torch.bfloat16, torch.float16)  # computed in float32, result cast back

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None  # why the kernel is unavailable, once known
_said: set[str] = set()


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise UsageError(f"{ENV}={value!r} is not valid; use one of: {', '.join(CHOICES)}")
    return value


def _say(message: str) -> None:
    if message not in _said:
        _said.add(message)
        print(f"geomlab: {message}", file=sys.stderr, flush=True)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def cache_dirs() -> list[Path]:
    repo = Path(__file__).resolve().parents[2] / ".geomlab-cache" / "student_conv"
    home = cache_dir() / "student_conv"
    return [repo, home]


def library_path(cxx: str) -> Path | None:
    """Where the library for this source, compiler and CPU lives (the first writable cache directory)."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_flags(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    for d in cache_dirs():
        lib = d / f"student_conv-{key}.so"
        if lib.exists():
            return lib
    for d in cache_dirs():
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d / f"student_conv-{key}.so"
    return None


def _build(cxx: str, lib: Path) -> None:
    _say(f"compiling the fused StudentConv CPU kernel (once per machine, about 20 s) into {lib.parent}")
    fd, tmp = tempfile.mkstemp(prefix=lib.name + ".", suffix=".tmp", dir=lib.parent)
    os.close(fd)
    try:
        done = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise RuntimeError(f"{cxx} failed: {last}")
        os.replace(tmp, lib)  # atomic: concurrent builders (MPI ranks, sweep workers) each rename a whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH")
    lib = library_path(cxx)
    if lib is None:
        raise RuntimeError(f"no writable cache directory among {', '.join(map(str, cache_dirs()))}")
    if not lib.exists():
        _build(cxx, lib)
    return open_library(lib)


def open_library(lib: Path) -> ctypes.CDLL:
    so = ctypes.CDLL(str(lib))
    p, i64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    for t in ("f32", "f64"):
        getattr(so, f"student_conv_forward_{t}").argtypes = [p, p, p, p, i64p, ctypes.c_int]
        getattr(so, f"student_conv_backward_{t}").argtypes = [p, p, p, p, p, p, p, i64p, ctypes.c_int]
    so.student_conv_supported_taps.argtypes = [ctypes.c_int]
    return so


def library() -> ctypes.CDLL | None:
    """The loaded kernel, building it on first use; None (and :func:`unavailable` says why) when it cannot be."""
    global _lib, _error
    with _lock:
        if _lib is None and _error is None:
            try:
                _lib = _load()
            except Exception as e:  # any build or load failure falls back to the reference
                _error = f"kernel unavailable: {e}"
        return _lib


def unavailable() -> str | None:
    library()
    return _error


def impl_name() -> str:
    """``fused`` or ``reference`` as chosen for CPU float32 tensors in this process (for run parameters)."""
    m = mode()
    if m == "reference":
        return "reference"
    return "fused" if library() is not None else "reference"


def run_tags(arch: str, device: str) -> dict[str, str]:
    """``{"student_conv_impl": "fused" | "reference"}`` for a run training ``arch`` on ``device`` (auto|cpu|cuda[:n]);
    empty for teachers.  (Autocast inputs on CPU also run the kernel, in float32.)"""
    if not arch.startswith("Student_"):
        return {}
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return {"student_conv_impl": impl_name() if on_cpu else "reference"}


def _reason(module, x: torch.Tensor) -> str | None:
    """Why ``module(x)`` cannot use the kernel (None when it can)."""
    if x.device.type != "cpu" or module.weight.device.type != "cpu":
        return f"{x.device.type} tensors"
    if torch._C._functorch.is_functorch_wrapped_tensor(x) or torch.jit.is_tracing():
        return "a torch.func transform or tracer"
    if module.weight.dtype not in CPU_DTYPES or x.dtype not in CPU_DTYPES + CAST_DTYPES:
        return f"{x.dtype} input with {module.weight.dtype} weights"
    if module.padding_mode != "zeros" or isinstance(module.padding, str) or module.groups != module.n_in:
        return f"padding_mode={module.padding_mode!r}, padding={module.padding!r}, groups={module.groups}"
    lib = library()
    if lib is None:
        return _error
    if not lib.student_conv_supported_taps(module.kernel_size[0] * module.kernel_size[1]):
        return f"kernel size {tuple(module.kernel_size)}"
    return None


def use_fused(module, x: torch.Tensor) -> bool:
    """Whether ``module(x)`` runs the fused kernel; says which (and why not) on stderr, once per reason."""
    m = mode()
    if m == "reference":
        _say(f"StudentConv: reference grouped convolution ({ENV}=reference)")
        return False
    why = _reason(module, x)
    if why is None:
        _say("StudentConv: fused CPU kernel")
        return True
    if m == "fused":
        raise UsageError(f"{ENV}=fused but the fused StudentConv kernel cannot run: {why}; "
                         f"unset {ENV} (auto) to fall back to the reference")
    _say(f"StudentConv: reference grouped convolution ({why})")
    return False


def _shape(module, x: torch.Tensor, h_out: int, w_out: int) -> ctypes.Array:
    b, c, h, w = x.shape
    kh, kw = module.kernel_size
    return (ctypes.c_int64 * 15)(b, c, h, w, module.n_out, kh, kw, *module.stride, *module.padding,
                                 *module.dilation, h_out, w_out)


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


def _suffix(t: torch.Tensor) -> str:
    return "f32" if t.dtype == torch.float32 else "f64"


class _FusedStudentConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, module):
        x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
        kh, kw = module.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = module.stride, module.padding, module.dilation
        h_out = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        w_out = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        out = torch.empty(x.shape[0], module.n_out, h_out, w_out, dtype=x.dtype)
        shape = _shape(module, x, h_out, w_out)
        rc = getattr(library(), f"student_conv_forward_{_suffix(x)}")(
            _ptr(x), _ptr(weight), _ptr(bias), _ptr(out), shape, torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"fused StudentConv forward failed (code {rc})")
        ctx.save_for_backward(x, weight, bias)
        ctx.shape = shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight, bias = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous().to(x.dtype)
        gx = torch.zeros_like(x) if need_x else None
        gw = torch.empty_like(weight) if need_w else None
        gb = torch.empty_like(bias) if need_b else None
        if need_x or need_w or need_b:
            rc = getattr(library(), f"student_conv_backward_{_suffix(x)}")(
                _ptr(x), _ptr(weight), _ptr(bias), _ptr(grad_out), _ptr(gx), _ptr(gw), _ptr(gb), ctx.shape,
                torch.get_num_threads())
            if rc != 0:
                raise RuntimeError(f"fused StudentConv backward failed (code {rc})")
        return gx, gw, gb, None


def student_conv(module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` by the fused kernel (call only when :func:`use_fused` says so).

    bf16 / fp16 inputs (autocast) are computed in the weights' dtype and the result is cast back to theirs.
    """
    dtype = module.weight.dtype
    out = _FusedStudentConv.apply(x.to(dtype), module.weight, module.bias, module)
    return out.to(x.dtype) if x.dtype in CAST_DTYPES else out


def main() -> int:
    """``python -m projects.cone_geometry.student_kernel``: build the kernel now (``make setup`` runs this)."""
    if library() is None:
        print(f"geomlab: StudentConv will use the reference grouped convolution ({_error})", file=sys.stderr)
        return 0  # a missing compiler is not a setup failure: the reference runs everywhere
    print("geomlab: fused StudentConv CPU kernel ready", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the machine is: CPU model and instruction set, GPU, library versions, threads; and whether it computes in
bfloat16 (detected at run time: the CPU type varies between machines). Pure reads, no side effects."""
from __future__ import annotations

import functools
import os
import platform
import re
from pathlib import Path

#: CPU flags (Linux /proc/cpuinfo names) that compute bfloat16 natively; without them torch emulates it in fp32
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: the vector instruction sets worth naming, widest first
ISA_FLAGS = ("amx_bf16", "avx512_bf16", "avx512_vnni", "avx512f", "avx2", "avx", "neon", "asimd", "sse4_2")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where the platform does not list them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    m = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    return frozenset(m.group(1).split()) if m else frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_isa() -> str:
    """The instruction sets that matter for speed, e.g. ``avx512f,avx512_bf16,avx2`` (or torch's own capability)."""
    flags = cpu_flags()
    names = [f for f in ISA_FLAGS if f in flags]
    if names:
        return ",".join(names)
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability().lower()
    except Exception:  # noqa: BLE001 - an old torch or an unknown platform: say so
        return "unknown"


def cpu_computes_bf16() -> bool:
    return any(f in cpu_flags() for f in BF16_CPU_FLAGS)


def computes_bf16(device: str) -> bool:
    """Does ``device`` (``cpu``, ``cuda``, ``auto``...) compute in bfloat16 rather than emulate it?"""
    import torch

    from shared.train import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return dev.type == "cpu" and cpu_computes_bf16()


def fast_precision(device: str) -> tuple[str, bool]:
    """(precision, channels_last) for training on ``device``: bf16-mixed with channels_last where it computes in
    bfloat16 (AVX-512-BF16, AMX or a GPU), fp32 elsewhere (emulated bfloat16 is several times slower)."""
    return ("bf16-mixed", True) if computes_bf16(device) else ("fp32", False)


def describe(device: str = "auto") -> dict[str, str]:
    """The machine as a flat dict of strings (logged as ``hw.*`` run tags and shown in study reports)."""
    import importlib.metadata as md

    import torch

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "absent"

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu_model(), "cpu_isa": cpu_isa(), "cpu_bf16": "yes" if cpu_computes_bf16() else "no (emulated)",
            "cores": str(os.cpu_count() or 0), "threads": str(torch.get_num_threads()), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": version("torchvision"),
            "numpy": version("numpy"), "mlflow": version("mlflow"), "os": platform.platform(terse=True)}

"""Which device a command runs its networks on: ``auto`` is CUDA when present, then Apple's MPS, then the CPU.

:func:`check_name` is torch-free (the CLI checks ``--device`` before importing torch); :func:`pick` turns a
checked name into a ``torch.device`` and refuses a device this machine does not have, naming it.
"""

from __future__ import annotations

import re

from genforge.errors import GenforgeError

NAMES_TEXT = "auto, cpu, cuda, cuda:N or mps"
_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_name(name: str) -> str:
    """``name`` stripped and lower-cased, or a GenforgeError naming the accepted spellings."""
    text = str(name).strip().lower()
    if not _NAME.fullmatch(text):
        raise GenforgeError(f"device {name!r}: use {NAMES_TEXT}")
    return text


def pick(name: str = "auto"):
    """A ``torch.device`` for ``name`` (auto, cpu, cuda, cuda:N, mps); an error when it is not available here."""
    import torch  # late: check_name and the CLI's --help stay free of torch

    name = check_name(name)
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GenforgeError(f"device {name!r} asked for, but no CUDA device is available here (use auto or cpu)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise GenforgeError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if name == "mps" and not has_mps:
        raise GenforgeError("device 'mps' asked for, but Apple's MPS is not available here (use auto or cpu)")
    return torch.device(name)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device) -> bool:
    """Whether ``device`` (a torch.device) computes bfloat16 natively: a CUDA GPU that supports it, or a CPU
    with AVX512-BF16 or AMX-BF16. Elsewhere bf16 is emulated, hundreds of times slower than fp32 matmul."""
    import torch  # late: check_name and the CLI's --help stay free of torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    return False

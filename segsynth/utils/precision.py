"""Numeric precision of training and sampling: ``auto``, ``fp32`` or ``bf16`` (autocast; losses stay fp32).

``auto`` takes bfloat16 autocast only where the hardware runs it fast: a CUDA device with bf16 support, or a
CPU whose oneDNN has native bf16 kernels (AMX / avx512_bf16). Elsewhere it is fp32: on a CPU without them
(for example AVX2-only AMD EPYC) bf16 autocast was measured about 20x *slower* than fp32 for a U-Net step.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

from segsynth.errors import ConfigError
from segsynth.utils.device import cpuinfo

PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 kernels (oneDNN says so, or cpuinfo lists amx_bf16/avx512_bf16)."""
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):
        pass
    flags = cpuinfo()[1]
    return "amx_bf16" in flags or "avx512_bf16" in flags


def check_precision(precision: str, name: str = "--precision") -> str:
    """``precision`` when it is one of ``PRECISIONS``, else a ConfigError naming the option (``name``)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{name} {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: ``torch.bfloat16`` or ``None`` (plain fp32)."""
    check_precision(precision)
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return None


def describe_precision(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device``'s type; a no-op when ``dtype`` is None."""
    device = torch.device(device)
    if dtype is None:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield


@contextlib.contextmanager
def full_precision(device: torch.device | str) -> Iterator[None]:
    """Autocast off on ``device``'s type inside a region that runs under autocast (losses, warps, integrals)."""
    with torch.autocast(torch.device(device).type, enabled=False):
        yield

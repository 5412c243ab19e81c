"""Device choice: `auto` takes CUDA when present, else CPU. Same code on both."""

from __future__ import annotations

import functools
import platform
from collections.abc import Mapping
from typing import Any

import torch

from segsynth.errors import ConfigError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine (use auto or cpu)")
    return torch.device(name)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA allocator peak; on Linux the process's peak RSS, VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last reset: CUDA allocator peak on GPU, peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@functools.lru_cache(maxsize=1)
def cpuinfo() -> tuple[str, frozenset[str]]:
    """The first CPU's model name and feature flags from ``/proc/cpuinfo`` ("", {} where there is none)."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = value
    except OSError:
        pass
    return model, frozenset(flags.split())


def cpu_description() -> str:
    """The CPU's model name and its widest vector unit that matters to torch's CPU kernels, e.g. "AMD EPYC
    (avx2)" or "Intel(R) Xeon(R) Platinum 8480+ (amx)". bf16 is native only with amx / avx512_bf16, so the
    same run can be 2x faster or 20x slower under ``--precision bf16`` from one machine to the next."""
    model, flags = cpuinfo()
    model = model or platform.processor() or platform.machine()
    vector = next((name for name, flag in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"),
                                            ("avx512", "avx512f"), ("avx2", "avx2"), ("neon", "asimd"))
                   if flag in flags), None)
    return f"{model} ({vector})" if vector else model


def compute_description(device: torch.device) -> dict[str, object]:
    """Where a run's seconds (and, through kernel choice and thread count, its Dice) came from: the device, the
    torch threads, the CPU (and the GPU on CUDA). Stored in each sweep record and saved model, so that runs
    timed on different machines or thread counts are not compared unawares."""
    out: dict[str, object] = {"device": str(device), "threads": torch.get_num_threads(), "cpu": cpu_description()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def compute_label(record: Mapping[str, Any]) -> str | None:
    """"AMD EPYC (avx2), 2 threads" (the GPU's name on CUDA) from a record holding ``compute_description``'s
    fields; None for a record from before records said where they ran."""
    if "threads" not in record:
        return None
    threads = int(record["threads"])
    where = record.get("gpu") or record.get("cpu") or record.get("device", "?")
    return f"{where}, {threads} thread{'' if threads == 1 else 's'}"

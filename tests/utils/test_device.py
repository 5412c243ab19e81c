"""What a run record says about where it was computed."""

from __future__ import annotations

import torch

from segsynth.utils.device import compute_description, compute_label, cpu_description, cpuinfo


def test_compute_description_names_threads_and_cpu():
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        d = compute_description(torch.device("cpu"))
    finally:
        torch.set_num_threads(torch_threads)
    assert d["device"] == "cpu" and d["threads"] == 1 and "gpu" not in d
    assert d["cpu"] == cpu_description() and d["cpu"].strip()


def test_cpu_description_names_the_vector_unit_from_cpuinfo(monkeypatch, tmp_path):
    import builtins

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
                    "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(info if p == "/proc/cpuinfo" else p, *a, **k))
    cpuinfo.cache_clear()
    try:
        assert cpu_description() == "Test CPU 9000 (avx512_bf16)"
        info.write_text("model name\t: Old CPU\nflags\t\t: fpu sse2 avx2\n")
        cpuinfo.cache_clear()
        assert cpu_description() == "Old CPU (avx2)"
    finally:
        monkeypatch.undo()
        cpuinfo.cache_clear()


def test_compute_label_names_where_a_record_ran():
    assert compute_label({"device": "cpu", "threads": 2, "cpu": "AMD EPYC (avx2)"}) == "AMD EPYC (avx2), 2 threads"
    assert compute_label({"device": "cuda", "threads": 1, "cpu": "x", "gpu": "H200"}) == "H200, 1 thread"
    assert compute_label({"device": "cpu"}) is None  # a record from before records said where they ran

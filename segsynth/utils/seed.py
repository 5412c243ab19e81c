"""Explicit randomness. Library code takes a seed or a generator; only scripts and the CLI seed globally."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global state (for scripts and the CLI only)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def numpy_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (strings, ints), e.g. derive_seed(seed, "val", rank)."""
    import hashlib

    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


@contextlib.contextmanager
def seeded_scope(seed: int) -> Iterator[None]:
    """Run code that draws from global random state (torch CPU and CUDA, NumPy, Python) from ``seed``.

    Module initialisers (MONAI, torch.nn) draw from torch's global generator; whatever ran before in the
    process would otherwise decide a model's initial weights. Inside the scope every global generator starts
    from ``seed``; on exit the caller's states are restored, so the scope leaves no trace either.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        np.random.seed(int(seed) % (2**32))
        random.seed(int(seed))
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)

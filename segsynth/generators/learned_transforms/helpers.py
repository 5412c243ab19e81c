"""Learned transforms helpers: conform cases to the atlas shape, centre crop/pad, batching, seeded init."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from segsynth.data.case import Case
from segsynth.utils.seed import seeded_scope


# ----------------------------------------------------------------------------------------------- helpers
def conform(cases: Sequence[Case], shape: Sequence[int]) -> list[Case]:
    """Centre crop/pad every case to ``shape`` (the atlas's), as the data layer's ``crop_or_pad`` does."""
    from segsynth.data.preprocess import crop_or_pad

    return [crop_or_pad(c, shape) for c in cases]


def center_fit(t: torch.Tensor, shape: Sequence[int], value: float | Sequence[float] = 0.0) -> torch.Tensor:
    """Centre crop/pad the spatial dims of a (B, C, *S) tensor to ``shape``; padding uses ``value`` per channel.

    Offsets follow ``segsynth.data.preprocess.crop_or_pad`` so fitting A -> B -> A returns A's centre.
    """
    spatial = t.shape[2:]
    if tuple(spatial) == tuple(shape):
        return t
    out = t.new_empty((t.shape[0], t.shape[1], *shape))
    vals = [float(value)] * t.shape[1] if isinstance(value, (int, float)) else [float(v) for v in value]
    for ch, v in enumerate(vals):
        out[:, ch] = v
    src, dst = [], []
    for s, want in zip(spatial, shape):
        if s >= want:
            a = (s - want) // 2
            src.append(slice(a, a + want))
            dst.append(slice(0, want))
        else:
            a = (want - s) // 2
            src.append(slice(0, s))
            dst.append(slice(a, a + s))
    out[(slice(None), slice(None), *dst)] = t[(slice(None), slice(None), *src)]
    return out


def _stack_images(cases: Sequence[Case]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.asarray(c.image), dtype=torch.float32) for c in cases])


@torch.no_grad()
def _batched(fn: Any, n: int, batch_size: int) -> list[torch.Tensor]:
    return [fn(slice(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


def _init_under_seed(seed: int, build: Any) -> Any:
    """Build modules with weights drawn from ``seed`` without touching the caller's global RNG state."""
    with seeded_scope(int(seed)):
        return build()

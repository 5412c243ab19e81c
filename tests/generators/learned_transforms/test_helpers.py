"""Centre crop/pad."""

from __future__ import annotations

import torch

from segsynth.generators.learned_transforms import (
    center_fit,
)


def test_center_fit_round_trip():
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).view(1, 2, 5, 7)
    y = center_fit(center_fit(x, (8, 4), -1.0), (5, 7), -1.0)
    assert torch.equal(y[..., :, 2:5], x[..., :, 2:5])  # the kept centre columns survive
    assert center_fit(x, (5, 7)) is x

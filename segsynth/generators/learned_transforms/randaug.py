"""The paper's rand-aug baseline: random smooth deformation + global intensity scaling, as a pair source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from segsynth.data.case import Case
from segsynth.nets.registration import (
    random_smooth_ddf,
    warp_image,
    warp_labels,
)
from segsynth.utils.seed import torch_generator


# -------------------------------------------------------------------------------------------- rand-aug
@dataclass
class RandAug:
    """The paper's rand-aug: a random smooth deformation and a random global intensity scaling.

    Args:
        displacement: std of the control-point displacements, as a fraction of the smallest image side.
        control_points: control points per axis of the smooth field (cubic/trilinear upsampling).
        intensity_scale: (min, max) of the global multiplicative intensity factor.
        label_warp: "onehot" or "nearest".
    """

    displacement: float = 0.04
    control_points: int = 5
    intensity_scale: tuple[float, float] = (0.8, 1.2)
    label_warp: str = "onehot"

    def draw(self, spatial_shape: Sequence[int], generator: torch.Generator) -> dict[str, Any]:
        lo, hi = self.intensity_scale
        return {"ddf_seed": int(torch.randint(0, 2**31 - 1, (), generator=generator)),
                "scale": float(lo + (hi - lo) * torch.rand((), generator=generator).item())}

    def ddf(self, params: dict[str, Any], spatial_shape: Sequence[int]) -> torch.Tensor:
        std = self.displacement * min(spatial_shape)
        return random_smooth_ddf(spatial_shape, torch_generator(params["ddf_seed"]), std, self.control_points)

    def apply(self, image: torch.Tensor, mask: torch.Tensor | None, params: dict[str, Any],
              num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply to one (C, *S) image and its (*S) mask (any device)."""
        ddf = self.ddf(params, image.shape[1:]).to(image.device)
        out = warp_image(image[None], ddf)[0] * params["scale"]
        if mask is None:
            return out, None
        k = num_classes if num_classes is not None else int(mask.max()) + 1
        return out, warp_labels(mask[None], ddf, k, self.label_warp)[0]


class RandAugSource:
    """PairSource: labelled cases (the atlas) with ``RandAug`` applied per sample."""

    def __init__(self, cases: Sequence[Case], rand_aug: RandAug, num_classes: int,
                 patch_size: Sequence[int] | None = None):
        from segsynth.segment.sources import CaseSource

        self.inner = CaseSource(cases, transform=rand_aug, patch_size=patch_size, num_classes=num_classes)

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.draw(batch_size, generator)

"""Single-atlas segmentation (SAS) as a segmenter module."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from segsynth.generators.learned_transforms.helpers import (
    center_fit,
)
from segsynth.generators.learned_transforms.model import LearnedTransforms
from segsynth.nets.registration import (
    warp_probabilities,
)


# ------------------------------------------------------------------------------------------------- SAS
class AtlasSegmenter(torch.nn.Module):
    """Single-atlas segmentation as a segmenter: register the atlas to the input, warp its labels.

    Maps (B, C, *S) to log-probabilities (B, K, *S) (usable as logits). Inputs of another shape are centre
    cropped/padded to the atlas's shape and the output mapped back (background outside).
    """

    def __init__(self, transforms: LearnedTransforms):
        super().__init__()
        self.transforms = transforms
        self.size_divisor = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.transforms
        shape = tuple(x.shape[2:])
        fill = [float(v) for v in x.flatten(2).amin(-1).mean(0)]
        xf = center_fit(x.float(), t.atlas_shape, fill)
        ddf = t.forward_ddf(xf)
        onehot = F.one_hot(t.atlas_mask, t.num_classes).movedim(-1, 0)[None].float()
        probs = warp_probabilities(onehot.expand(x.shape[0], *onehot.shape[1:]), ddf)
        logp = torch.log(probs.clamp_min(1e-6))
        bg = [0.0] + [float(np.log(1e-6))] * (t.num_classes - 1)
        return center_fit(logp, shape, bg)

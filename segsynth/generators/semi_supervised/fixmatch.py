"""FixMatch for segmentation (Sohn et al. NeurIPS 2020; the segmentation form of UniMatch, Yang et al. CVPR 2023).

Each step: a weakly augmented unlabelled batch (the spatial part of ``augment``) is segmented without gradient;
pixels whose top softmax probability reaches ``threshold`` become pseudo-labels. The same images, strongly
perturbed (gamma/contrast/brightness/noise, Gaussian blur, and CutMix with another image of the batch, whose
pseudo-labels and confidences are pasted with it), are segmented with gradient, and the cross-entropy against
the pseudo-labels over the confident pixels (divided by all pixels, as UniMatch does) is the unlabelled loss.
Strong perturbations are photometric or pasted boxes, so weak and strong views stay spatially aligned.
The hook has no state: its random draws are a function of (seed, rank, step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from segsynth.data.case import Case
from segsynth.data.transforms import RandomIntensity
from segsynth.errors import ConfigError
from segsynth.generators.semi_supervised.consistency import (
    SemiSupervisedHook,
    cutmix_boxes,
    gaussian_blur,
    logits_of,
    perturb_intensity,
    unwrap,
)

# strong photometric perturbation (UniMatch: colour jitter p 0.8, blur p 0.5; grey-level equivalents here)
STRONG_INTENSITY = RandomIntensity(gamma=(0.5, 2.0), contrast=(0.6, 1.4), brightness=0.2, noise_std=0.05, p=0.8)


def pseudo_label_loss(logits_s: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor,
                      threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the strong view against pseudo-labels on pixels with confidence >= threshold.

    Returns (loss = sum over confident pixels / number of pixels, boolean mask of the confident pixels).
    """
    keep = confidence >= threshold
    ce = F.cross_entropy(logits_s.float(), pseudo, reduction="none")
    return (ce * keep).sum() / keep.numel(), keep


def strong_view(x: torch.Tensor, g: torch.Generator, blur_prob: float = 0.5,
                blur_sigma: tuple[float, float] = (0.1, 1.5)) -> torch.Tensor:
    """Photometric strong augmentation of a batch: intensity (per sample), then Gaussian blur with prob."""
    x = perturb_intensity(x, STRONG_INTENSITY, g)
    sig = [float(blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * torch.rand((), generator=g).item())
           if torch.rand((), generator=g).item() < blur_prob else 0.0 for _ in range(len(x))]
    return gaussian_blur(x, sig)


class FixMatchHook(SemiSupervisedHook):
    """Confidence-thresholded pseudo-labels from the weak view supervise the strong view.

    Args:
        unlabelled: unlabelled cases (``mask`` ignored).
        spatial_dims, seed, batch_size, patch_size: as the training run (batch_size = unlabelled batch).
        weight: weight of the unlabelled loss.
        threshold: confidence a pixel's pseudo-label needs (UniMatch: 0.95).
        cutmix_prob: probability that a sample gets a CutMix box from another sample of the batch.
        flip: allow flips in the weak spatial augmentation (off: flips swap left/right labels).
    """

    name = "fixmatch"

    def __init__(self, unlabelled: Sequence[Case], *, spatial_dims: int, seed: int, batch_size: int,
                 patch_size: Sequence[int] | None = None, weight: float = 1.0, threshold: float = 0.95,
                 cutmix_prob: float = 0.5, flip: bool = False):
        super().__init__(unlabelled, spatial_dims=spatial_dims, seed=seed, batch_size=batch_size,
                         patch_size=patch_size, weight=weight, flip=flip)
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"fixmatch: threshold must be in [0, 1], got {threshold}")
        if not 0.0 <= cutmix_prob <= 1.0:
            raise ConfigError(f"fixmatch: cutmix_prob must be in [0, 1], got {cutmix_prob}")
        self.threshold = float(threshold)
        self.cutmix_prob = float(cutmix_prob)

    def unlabelled_loss(self, net: torch.nn.Module, x_u: torch.Tensor, g: torch.Generator, step: int,
                        device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            prob = torch.softmax(logits_of(unwrap(net), x_u), dim=1)
            conf, pseudo = prob.max(dim=1)
        x_s = strong_view(x_u, g)
        if self.cutmix_prob > 0 and len(x_u) > 1:
            boxes = cutmix_boxes(len(x_u), x_u.shape[2:], g, p=self.cutmix_prob).to(x_u.device)
            other = torch.roll(torch.arange(len(x_u)), 1).to(x_u.device)  # each sample takes its neighbour's box
            x_s = torch.where(boxes[:, None], x_s[other], x_s)
            pseudo = torch.where(boxes, pseudo[other], pseudo)
            conf = torch.where(boxes, conf[other], conf)
        loss, keep = pseudo_label_loss(logits_of(net, x_s), pseudo, conf, self.threshold)
        return self.weight * loss, {"fixmatch_confident": float(keep.float().mean())}

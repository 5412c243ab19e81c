"""Partial-volume (PV) maps: soft label maps whose K channels are non-negative and sum to 1 at every voxel.

brainSPADE's label generator and image generator work on PV maps rather than hard labels: a voxel on a
tissue boundary is, say, 60 % grey matter and 40 % white matter. PV maps come either

* from hard label maps: one-hot, then Gaussian smoothing (``sigma`` in voxels) and/or area downsampling
  (``downsample``: the fraction of each class in each block, the exact partial volume at the coarser
  resolution), renormalised to sum to 1; or
* from given probability maps (e.g. posteriors of an atlas-based or learned tissue segmentation), checked,
  completed with a background channel when it is missing, and renormalised.

Round trips: ``labels_to_onehot`` -> ``labels_to_pv`` -> ``pv_to_labels`` (argmax) gives back the labels
exactly when ``sigma == 0`` and ``downsample == 1``, and for small ``sigma`` everywhere except where a
structure is thinner than the blur.

The torch functions work on batches (``labels`` (B, *S), ``pv`` (B, K, *S)) on any device; the ``case_*``
helpers take and return single NumPy arrays for ``Case`` objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segsynth.errors import ConfigError, DataError
from segsynth.utils.labels import class_argmax

__all__ = [
    "labels_to_onehot",
    "labels_to_pv",
    "pv_from_probabilities",
    "pv_to_labels",
    "pv_resize",
    "renormalise_pv",
    "is_valid_pv",
    "case_pv",
    "case_labels",
]


def labels_to_onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, *S) integer labels -> (B, K, *S) float one-hot."""
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point:
        raise DataError(f"labels must be integers, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"label values must be in [0, {num_classes - 1}], got [{int(labels.min())}, "
                        f"{int(labels.max())}]")
    return F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()


def _gaussian_smooth(x: torch.Tensor, sigma: float | Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, *S) with replicate padding (no mass leaks at the border)."""
    nd = x.ndim - 2
    sigmas = [float(sigma)] * nd if np.isscalar(sigma) else [float(s) for s in sigma]  # type: ignore[arg-type]
    if len(sigmas) != nd:
        raise ConfigError(f"sigma needs {nd} values, got {len(sigmas)}")
    c = x.shape[1]
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    for axis, s in enumerate(sigmas):
        if s <= 0:
            continue
        radius = max(1, int(np.ceil(3.0 * s)))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / s) ** 2)
        k = k / k.sum()
        shape = [1] * nd
        shape[axis] = k.numel()
        weight = k.reshape(1, 1, *shape).repeat(c, 1, *([1] * nd))
        pad = [0, 0] * nd
        pad[2 * (nd - 1 - axis)] = radius
        pad[2 * (nd - 1 - axis) + 1] = radius
        x = conv(F.pad(x, pad, mode="replicate"), weight, groups=c)
    return x


def renormalise_pv(pv: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Clamp negatives to 0 and divide by the channel sum; voxels with no mass become background."""
    pv = pv.clamp_min(0)
    total = pv.sum(1, keepdim=True)
    empty = total <= eps
    if bool(empty.any()):
        bg = torch.zeros_like(pv)
        bg[:, :1] = 1.0
        pv = torch.where(empty, bg, pv)
        total = pv.sum(1, keepdim=True)
    return pv / total


def labels_to_pv(labels: torch.Tensor, num_classes: int, *, sigma: float | Sequence[float] = 0.0,
                 downsample: int | Sequence[int] = 1) -> torch.Tensor:
    """PV maps (B, K, *S') from hard labels (B, *S).

    Args:
        labels: integer class ids in [0, K).
        num_classes: K.
        sigma: Gaussian smoothing of the one-hot channels, in voxels of the input (0 = none).
        downsample: integer factor(s): each output voxel holds the class fractions of a block of input
            voxels (average pooling of the one-hot map). The spatial size must be divisible by it.

    Returns:
        float32 PV maps: non-negative, summing to 1 over the channel axis.
    """
    pv = labels_to_onehot(labels, num_classes)
    nd = pv.ndim - 2
    if any(float(s) > 0 for s in (np.atleast_1d(sigma))):
        pv = _gaussian_smooth(pv, sigma)
    factors = [int(downsample)] * nd if np.isscalar(downsample) else [int(f) for f in downsample]  # type: ignore
    if any(f < 1 for f in factors):
        raise ConfigError(f"downsample factors must be >= 1, got {factors}")
    if any(f > 1 for f in factors):
        for s, f in zip(pv.shape[2:], factors):
            if s % f:
                raise ConfigError(f"spatial size {tuple(pv.shape[2:])} is not divisible by downsample {factors}")
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
        pv = pool(pv, kernel_size=tuple(factors), stride=tuple(factors))
    return renormalise_pv(pv)


def pv_from_probabilities(probs: torch.Tensor | np.ndarray, *, add_background: bool = False,
                          tolerance: float = 0.05) -> torch.Tensor:
    """PV maps (B, K, *S) from given probability maps.

    Args:
        probs: (B, K, *S) class probabilities; or foreground probabilities only (B, K-1, *S) with
            ``add_background=True``, the background being ``1 - sum``.
        add_background: prepend a background channel ``clamp(1 - sum, 0)``.
        tolerance: how far from 1 the channel sums may be before the maps are rejected (they are then
            renormalised exactly); negative values below ``-tolerance`` are rejected too.

    Raises:
        DataError: NaN/inf values, clearly negative values, or sums far from 1.
    """
    p = torch.as_tensor(np.asarray(probs) if isinstance(probs, np.ndarray) else probs).float()
    if p.ndim < 3:
        raise DataError(f"probability maps must be (B, K, *S), got shape {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()):
        raise DataError("probability maps contain NaN or infinite values")
    if float(p.min()) < -tolerance:
        raise DataError(f"probability maps have negative values (min {float(p.min()):.3f})")
    if add_background:
        bg = (1.0 - p.sum(1, keepdim=True)).clamp_min(0)
        p = torch.cat([bg, p], 1)
    total = p.clamp_min(0).sum(1)
    if float((total - 1).abs().max()) > tolerance:
        raise DataError(f"probability maps must sum to 1 over classes (found sums in "
                        f"[{float(total.min()):.3f}, {float(total.max()):.3f}]); pass add_background=True when "
                        f"the background channel is missing")
    return renormalise_pv(p)


def pv_to_labels(pv: torch.Tensor) -> torch.Tensor:
    """(B, K, *S) PV maps -> (B, *S) int64 labels (argmax; ties go to the lower class id)."""
    return class_argmax(pv, 1)


def pv_resize(pv: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample PV maps to ``size`` (area averaging when shrinking, linear when enlarging), renormalised."""
    size = tuple(int(s) for s in size)
    if tuple(pv.shape[2:]) == size:
        return pv
    shrinking = all(s <= t for s, t in zip(size, pv.shape[2:]))
    nd = pv.ndim - 2
    if shrinking:
        out = F.interpolate(pv, size=size, mode="area")
    else:
        out = F.interpolate(pv, size=size, mode=("linear", "bilinear", "trilinear")[nd - 1], align_corners=False)
    return renormalise_pv(out)


def is_valid_pv(pv: torch.Tensor | np.ndarray, atol: float = 1e-4) -> bool:
    """True when every value is finite and >= 0 and the channels (axis 1) sum to 1 within ``atol``."""
    p = torch.as_tensor(np.asarray(pv) if isinstance(pv, np.ndarray) else pv).float()
    if p.ndim < 3 or not bool(torch.isfinite(p).all()):
        return False
    return bool(float(p.min()) >= -atol and float((p.sum(1) - 1).abs().max()) <= atol)


def case_pv(mask: np.ndarray, num_classes: int, *, sigma: float = 0.0, downsample: int = 1) -> np.ndarray:
    """One mask (*S) -> its PV map (K, *S') as float32 NumPy (see ``labels_to_pv``)."""
    t = torch.as_tensor(np.asarray(mask)).long()[None]
    return labels_to_pv(t, num_classes, sigma=sigma, downsample=downsample)[0].numpy().astype(np.float32)


def case_labels(pv: np.ndarray) -> np.ndarray:
    """One PV map (K, *S) -> int64 labels (*S)."""
    return np.asarray(pv).argmax(0).astype(np.int64)

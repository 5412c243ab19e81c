"""Segmentation losses as pure functions with a thin cached module."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss

_DICE_CE = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, smooth_nr=1e-5, smooth_dr=1e-5)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice (foreground classes) + cross-entropy. logits (B, K, *S), target (B, *S) long."""
    return _DICE_CE(logits, target[:, None])


def soft_dice_per_class(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard Dice per foreground class for label maps (*S); classes absent from both count as 1."""
    from monai.metrics import compute_dice

    p = torch.nn.functional.one_hot(pred.long(), num_classes).movedim(-1, 0)[None].float()
    t = torch.nn.functional.one_hot(target.long(), num_classes).movedim(-1, 0)[None].float()
    d = compute_dice(p, t, include_background=False, ignore_empty=False)[0]
    return torch.nan_to_num(d, nan=1.0)

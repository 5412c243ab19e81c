"""Inference: whole image in 2D (padded to the network's size divisor), sliding window in 3D."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from segsynth.data.case import Case


def _pad_to_divisor(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, list[int]]:
    shape = x.shape[2:]
    pads: list[int] = []
    for s in reversed(shape):
        pads += [0, (-s) % divisor]
    return (F.pad(x, pads, mode="replicate") if any(pads) else x), pads


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, patch_size: Sequence[int] | None = None,
                   overlap: float = 0.5) -> torch.Tensor:
    """Logits (B, K, *S) for a batch (B, C, *S) already on the model's device."""
    divisor = int(getattr(model, "size_divisor", 1))
    if patch_size is not None:
        roi = tuple(int(p) for p in patch_size)
        return sliding_window_inference(x, roi, sw_batch_size=4, predictor=model, overlap=overlap,
                                        mode="gaussian", padding_mode="replicate")
    xp, _ = _pad_to_divisor(x, divisor)
    out = model(xp)
    if isinstance(out, (list, tuple)):
        out = out[0]
    if out.ndim == x.ndim + 1:  # deep supervision stacked on dim 1
        out = out[:, 0]
    sl = (slice(None), slice(None)) + tuple(slice(0, s) for s in x.shape[2:])
    return out[sl]


def predict(model: torch.nn.Module, image: np.ndarray | torch.Tensor, num_classes: int | None = None,
            patch_size: Sequence[int] | None = None, device: torch.device | str | None = None) -> np.ndarray:
    """Predicted label map (*S) int64 for one image (C, *S)."""
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    x = torch.as_tensor(np.asarray(image), dtype=torch.float32)[None].to(dev)
    if patch_size is not None and all(s <= p for s, p in zip(x.shape[2:], patch_size)):
        patch_size = None  # the whole image fits in one window
    logits = predict_logits(model, x, patch_size)
    if was_training:
        model.train()
    return logits.argmax(1)[0].cpu().numpy().astype(np.int64)


def predict_cases(model: torch.nn.Module, cases: Sequence[Case], patch_size: Sequence[int] | None = None,
                  device: torch.device | str | None = None) -> list[np.ndarray]:
    return [predict(model, c.image, patch_size=patch_size, device=device) for c in cases]

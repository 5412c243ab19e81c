"""Inference: whole image in 2D (padded to the network's size divisor), sliding window in 3D."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from segsynth.data.case import Case
from segsynth.nets.segmenters import check_input_size
from segsynth.utils.labels import class_argmax


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


def forward_shape(shape: Sequence[int], divisor: int, patch_size: Sequence[int] | None = None) -> tuple[int, ...]:
    """The spatial shape the network sees for an image of spatial ``shape``: the sliding window's patch where the
    image exceeds ``patch_size`` (smaller images are padded to it), else the whole image padded to ``divisor``."""
    shape = tuple(int(s) for s in shape)
    if patch_size is not None and not all(s <= p for s, p in zip(shape, patch_size)):
        return tuple(int(p) for p in patch_size)
    return tuple(s + (-s) % max(1, divisor) for s in shape)


def check_images_fit(model: torch.nn.Module, shapes: Sequence[Sequence[int]], patch_size: Sequence[int] | None = None,
                     names: Sequence[object] | None = None, options_hint: bool = False) -> None:
    """Refuse, before any forward pass, an image (spatial shape) too small for ``model``: a one-line error naming
    it (``names[i]``: its file) with its size and the minimum, instead of instance normalisation's error."""
    divisor = int(getattr(model, "size_divisor", 1) or 1)
    seen: set[tuple[int, ...]] = set()
    for i, shape in enumerate(shapes):
        fwd = forward_shape(shape, divisor, patch_size)
        if fwd not in seen:
            check_input_size(model, fwd, where=None if names is None else names[i], options_hint=options_hint)
            seen.add(fwd)


def case_names(cases: Sequence[Case]) -> list[str]:
    """What to call each case in a message: its image file, else its id."""
    return [str(c.meta.get("image_path") or c.case_id) for c in cases]


def predict(model: torch.nn.Module, image: np.ndarray | torch.Tensor, num_classes: int | None = None,
            patch_size: Sequence[int] | None = None, device: torch.device | str | None = None,
            name: object | None = None) -> np.ndarray:
    """Predicted label map (*S) int64 for one image (C, *S) (sliding window only where it exceeds ``patch_size``);
    ``name`` (its file) is named when the image is too small for the model."""
    return predict_many(model, [image], patch_size=patch_size, device=device,
                        names=None if name is None else [name])[0]


#: voxels per forward pass when ``predict_many`` stacks images (2D slices at 64²: 64 per pass, capped by
#: ``MAX_BATCH``; 3D volumes of 40×56×40: 5): enough to keep the per-call overhead of a small network out of
#: the way on CPU, little enough that the activations stay a few hundred MB
BATCH_VOXELS = 2**19
MAX_BATCH = 64


def predict_many(model: torch.nn.Module, images: Sequence[np.ndarray | torch.Tensor],
                 patch_size: Sequence[int] | None = None, device: torch.device | str | None = None,
                 batch_voxels: int = BATCH_VOXELS, names: Sequence[object] | None = None) -> list[np.ndarray]:
    """Predicted label maps (*S) int64 of several images (C, *S), as ``predict`` gives them one by one.

    Consecutive images of one shape that need no sliding window go through the network together, up to
    ``batch_voxels`` voxels (and ``MAX_BATCH`` images) per pass: one pass per slice of a 2D-sliced volume
    costs the network's per-call overhead hundreds of times (a validation of the demo's 72 slices: one pass
    instead of 72; 288 test slices at 48x48 on one AVX2 core: 1.5-1.8 s against 4.3 s). Normalisation layers
    work per image in eval mode (instance norm; batch norm with its running statistics), so an image's logits do
    not depend on its neighbours in the batch, up to float rounding (the kernels for a batch of 10 and of 1
    differed by 3e-6-1e-5 in the logits of U-Net, DynUNet and DeepLab; their label maps were equal).
    """
    arrays = [torch.as_tensor(np.asarray(im), dtype=torch.float32) for im in images]
    check_images_fit(model, [a.shape[1:] for a in arrays], patch_size, names)  # too small: one line, no torch error
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    out: list[np.ndarray] = []
    i = 0
    while i < len(arrays):
        shape = arrays[i].shape
        # a window only where the image exceeds the patch; one that fits goes whole (and can share a pass)
        window = patch_size is not None and not all(s <= p for s, p in zip(shape[1:], patch_size))
        per_pass = 1 if window else max(1, min(MAX_BATCH, batch_voxels // max(1, int(np.prod(shape[1:])))))
        j = i + 1
        while j < len(arrays) and j - i < per_pass and arrays[j].shape == shape:
            j += 1
        logits = predict_logits(model, torch.stack(arrays[i:j]).to(dev), patch_size if window else None)
        out.extend(p.cpu().numpy().astype(np.int64) for p in class_argmax(logits, 1))
        i = j
    if was_training:
        model.train()
    return out


def predict_cases(model: torch.nn.Module, cases: Sequence[Case], patch_size: Sequence[int] | None = None,
                  device: torch.device | str | None = None) -> list[np.ndarray]:
    return predict_many(model, [c.image for c in cases], patch_size=patch_size, device=device, names=case_names(cases))

"""GenSeg's pair sources: augmented real masks, and the pairs the current generator renders from them (stage II)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from segsynth.data.case import Case
from segsynth.data.mask_augment import MaskAugment
from segsynth.errors import DataError
from segsynth.generators.genseg.protocol import RenderingGenerator
from segsynth.segment.sources import collate, random_patch
from segsynth.utils.precision import autocast
from segsynth.utils.seed import torch_generator


def as_mask_tensor(mask: Any) -> tuple[torch.Tensor, str | None]:
    if isinstance(mask, Case):
        if mask.mask is None:
            raise DataError("case has no mask to generate an image from", mask.case_id)
        return torch.as_tensor(mask.mask, dtype=torch.long), mask.case_id
    return torch.as_tensor(np.asarray(mask), dtype=torch.long), None


# ================================================================================================ masks

class AugmentedMasks:
    """Draws masks for generation: a random real mask, augmented with a ``MaskAugment`` draw (or as it is)."""

    def __init__(self, masks: Sequence[Any], num_classes: int, augment: MaskAugment | None = None,
                 ids: Sequence[str] | None = None):
        tensors, found = [], []
        for i, m in enumerate(masks):
            t, cid = as_mask_tensor(m)
            tensors.append(t)
            found.append(cid if cid is not None else f"mask{i}")
        if not tensors:
            raise DataError("no masks to generate images from")
        self.masks = tensors
        self.ids = list(ids) if ids is not None else found
        self.num_classes = int(num_classes)
        self.augment = augment
        for t, cid in zip(self.masks, self.ids):
            if int(t.min()) < 0 or int(t.max()) >= self.num_classes:
                raise DataError(f"mask ids {sorted(set(t.unique().tolist()))} are not within the generator's "
                                f"{self.num_classes} classes", cid)

    def __len__(self) -> int:
        return len(self.masks)

    def draw_one(self, generator: torch.Generator, index: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        if index is None:
            index = int(torch.randint(len(self.masks), (), generator=generator))
        m = self.masks[index]
        record: dict[str, Any] = {"source_mask": self.ids[index]}
        if self.augment is not None:
            params = self.augment.draw(m.shape, generator)
            m = self.augment.apply_mask(m, params, self.num_classes)
            record["augment"] = params
        return m, record

    def draw(self, n: int, generator: torch.Generator) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        out = [self.draw_one(generator) for _ in range(n)]
        return [m for m, _ in out], [r for _, r in out]


# ================================================================================================ stage II

class GeneratedSource:
    """A ``PairSource`` of generated pairs: augmented real masks rendered by the generator as it is now.

    Images are generated without a graph: the segmenter's own update needs none, and the generator weights
    learn only from the GAN loss (stage I). Stage III recomputes the images of its own batch with their
    graph to alpha inside the hook, which is where the public code's detached image lost the signal.
    """

    def __init__(self, gen: RenderingGenerator, masks: AugmentedMasks, patch_size: Sequence[int] | None = None,
                 foreground_fraction: float = 1 / 3):
        self.gen = gen
        self.masks = masks
        self.patch_size = tuple(patch_size) if patch_size else None
        self.foreground_fraction = foreground_fraction

    @torch.no_grad()
    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        masks, _ = self.masks.draw(batch_size, generator)
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        net = self.gen.require_net()
        g = torch_generator(seed) if net.dropout > 0 else None
        with autocast(self.gen.device, self.gen.precision):  # rendering in the generator's precision
            if len({tuple(m.shape) for m in masks}) == 1:
                images = list(self.gen.generate(torch.stack(masks), generator=g).float().cpu())
            else:
                images = [self.gen.generate(m[None], generator=g)[0].float().cpu() for m in masks]
        xs, ys = [], []
        for x, y in zip(images, masks):
            if self.patch_size is not None:
                x, y = random_patch(x, y, self.patch_size, generator, self.foreground_fraction)
            xs.append(x)
            ys.append(y)
        return collate(xs, ys)

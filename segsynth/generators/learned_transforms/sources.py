"""Pair source of learned-transform pairs drawn on the fly."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from segsynth.generators.learned_transforms.model import LearnedTransforms
from segsynth.generators.learned_transforms.randaug import RandAug


# --------------------------------------------------------------------------------------- pair sources
class LearnedSource:
    """PairSource: pairs synthesised on the fly from a fitted ``LearnedTransforms``'s bank.

    Each sample draws its spatial and appearance sources independently (``draw_sources``); with
    ``rand_aug`` a rand-aug transform is composed on top.
    """

    def __init__(self, transforms: LearnedTransforms, rand_aug: RandAug | None = None,
                 patch_size: Sequence[int] | None = None, with_appearance: bool = True, distinct: bool = True):
        transforms._require_bank()
        self.t = transforms
        self.rand_aug = rand_aug
        self.patch_size = tuple(patch_size) if patch_size else None
        self.with_appearance = with_appearance
        self.distinct = distinct

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from segsynth.segment.sources import collate, random_patch

        draws = [self.t.draw_sources(generator, self.distinct) for _ in range(batch_size)]
        x, y = self.t.synthesize([d["spatial_index"] for d in draws],
                                 [d["appearance_index"] for d in draws] if self.with_appearance else None)
        xs, ys = list(x), list(y)
        for b in range(batch_size):
            if self.rand_aug is not None:
                params = self.rand_aug.draw(xs[b].shape[1:], generator)
                xs[b], ys[b] = self.rand_aug.apply(xs[b], ys[b], params, self.t.num_classes)
            if self.patch_size is not None:
                xs[b], ys[b] = random_patch(xs[b], ys[b], self.patch_size, generator)
        return collate(xs, ys)

"""The two baselines every synthetic-data method must beat: no augmentation, classical augmentation."""

from __future__ import annotations

from typing import ClassVar

from segsynth.data.transforms import classical_augmentation
from segsynth.generators.base import Method, MethodContext
from segsynth.segment.sources import CaseSource, PairSource


class NoAugmentation(Method):
    """Train on the N real pairs only."""

    name: ClassVar[str] = "none"
    description: ClassVar[str] = "real pairs only, no augmentation"


class ClassicalAugmentation(Method):
    """Train on the N real pairs with classical augmentation drawn on the fly.

    Options: ``kind`` (rotate, flip, translate, elastic, intensity, combined; default combined) and
    ``flip`` (allow flips in combined; default False because flips swap left/right anatomy).
    """

    name: ClassVar[str] = "augment"
    description: ClassVar[str] = "real pairs + classical augmentation (rotate, scale, translate, elastic, intensity)"

    def training_source(self, ctx: MethodContext) -> PairSource:
        aug = classical_augmentation(self.options.get("kind", "combined"), ctx.info.spatial_dims,
                                     flip=bool(self.options.get("flip", False)))
        patch = ctx.train_config.patch_size if ctx.train_config else None
        return CaseSource(ctx.train, transform=aug, patch_size=patch, num_classes=ctx.info.num_classes)

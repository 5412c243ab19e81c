"""The two baselines every synthetic-data method must beat: no augmentation, classical augmentation."""

from __future__ import annotations

from typing import Any, ClassVar

from segsynth.data.transforms import AUGMENTATIONS, classical_augmentation
from segsynth.errors import ConfigError
from segsynth.generators.base import Method, MethodContext
from segsynth.segment.sources import CaseSource, PairSource


class NoAugmentation(Method):
    """Train on the N real pairs only."""

    name: ClassVar[str] = "none"
    description: ClassVar[str] = "real pairs only, no augmentation"
    defaults: ClassVar[dict[str, Any]] = {}


class ClassicalAugmentation(Method):
    """Train on the N real pairs with classical augmentation drawn on the fly.

    Options: ``kind`` (rotate, flip, translate, elastic, intensity, combined; default combined) and
    ``flip`` (allow flips in combined; default False because flips swap left/right anatomy).
    """

    name: ClassVar[str] = "augment"
    description: ClassVar[str] = "real pairs + classical augmentation (rotate, scale, translate, elastic, intensity)"
    defaults: ClassVar[dict[str, Any]] = {"kind": "combined", "flip": False}

    def __init__(self, **options: Any):
        super().__init__(**options)
        if "kind" in options and options["kind"] not in AUGMENTATIONS:
            raise ConfigError(f"method {self.name!r}: unknown kind {options['kind']!r}; choose one of "
                              f"{', '.join(AUGMENTATIONS)}")

    def training_source(self, ctx: MethodContext) -> PairSource:
        opts = self.option_values()
        aug = classical_augmentation(opts["kind"], ctx.info.spatial_dims, flip=bool(opts["flip"]))
        patch = ctx.train_config.patch_size if ctx.train_config else None
        return CaseSource(ctx.train, transform=aug, patch_size=patch, num_classes=ctx.info.num_classes)


class _OneAugmentation(ClassicalAugmentation):
    """Classical augmentation of one kind only (GenSeg's per-transform baselines); no options."""

    kind: ClassVar[str] = "combined"
    defaults: ClassVar[dict[str, Any]] = {}

    def training_source(self, ctx: MethodContext) -> PairSource:
        aug = classical_augmentation(self.kind, ctx.info.spatial_dims)
        patch = ctx.train_config.patch_size if ctx.train_config else None
        return CaseSource(ctx.train, transform=aug, patch_size=patch, num_classes=ctx.info.num_classes)


class RotateAugmentation(_OneAugmentation):
    name: ClassVar[str] = "augment_rotate"
    description: ClassVar[str] = "real pairs + random rotation (±15°)"
    kind: ClassVar[str] = "rotate"


class FlipAugmentation(_OneAugmentation):
    name: ClassVar[str] = "augment_flip"
    description: ClassVar[str] = "real pairs + random flips of every axis"
    kind: ClassVar[str] = "flip"


class TranslateAugmentation(_OneAugmentation):
    name: ClassVar[str] = "augment_translate"
    description: ClassVar[str] = "real pairs + random translation (±10 %)"
    kind: ClassVar[str] = "translate"


class ElasticAugmentation(_OneAugmentation):
    name: ClassVar[str] = "augment_elastic"
    description: ClassVar[str] = "real pairs + random elastic deformation"
    kind: ClassVar[str] = "elastic"


class IntensityAugmentation(_OneAugmentation):
    name: ClassVar[str] = "augment_intensity"
    description: ClassVar[str] = "real pairs + random gamma, contrast, brightness and noise"
    kind: ClassVar[str] = "intensity"

"""GenSeg sweep methods: genseg, separate, genseg_aug, separate_aug, genseg_frozen."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, ClassVar

from segsynth.generators.base import Method, MethodContext
from segsynth.generators.genseg.driver import train_genseg
from segsynth.generators.genseg.options import GenSegOptions
from segsynth.segment.train import (
    TrainResult,
)


class GenSegMethod(Method):
    """GenSeg: a searchable Pix2Pix generator trained end to end with the segmenter (multi-level optimisation)."""

    name: ClassVar[str] = "genseg"
    description: ClassVar[str] = ("GenSeg: searchable Pix2Pix renders augmented masks; its architecture follows "
                                  "the segmenter's validation loss (end-to-end multi-level optimisation)")
    feedback: ClassVar[bool] = True

    def __init__(self, **options: Any):
        super().__init__(**options)
        from segsynth.segment.synthetic_mix import MIX_OPTION_NAMES, MixOptions, parse_mix_options

        shared = MIX_OPTION_NAMES - {"augment_real"}  # augment_real is GenSeg's own option too
        gen_opts = {k: v for k, v in options.items() if k not in shared}
        if options.get("real_fraction") is not None:
            gen_opts["synthetic_fraction"] = 1.0 - float(options["real_fraction"])
        self.opts = GenSegOptions.from_dict(gen_opts)
        self.mix, _ = parse_mix_options({k: v for k, v in options.items() if k in shared},
                                        defaults=MixOptions(real_fraction=1.0 - self.opts.synthetic_fraction,
                                                            augment_real=self.opts.augment_real))
        self._generator: Any = None

    def option_values(self) -> dict[str, Any]:
        # the mixing options' real_fraction is 1 - synthetic_fraction
        return {**dataclasses.asdict(self.opts), **dataclasses.asdict(self.mix)}

    def option_docs(self) -> list[str]:
        from segsynth.segment.synthetic_mix import MixOptions

        return [*super().option_docs(), inspect.getdoc(GenSegOptions) or "", inspect.getdoc(MixOptions) or ""]

    def run(self, ctx: MethodContext) -> TrainResult:
        result, self._generator = train_genseg(ctx, self.opts, feedback=self.feedback, mix=self.mix)
        return result

    def synthetic_source(self, ctx: MethodContext) -> Any:
        """Pairs rendered by this run's generator as it ended the run (derived, when it was saved)."""
        from segsynth.generators.genseg.sources import GeneratedSource

        gen = self._generator
        if gen is None or gen.source is None:
            return None
        return GeneratedSource(gen, gen.source, patch_size=ctx.train_config.patch_size if ctx.train_config else None)


class SeparateMethod(GenSegMethod):
    """GenSeg's ablation: the same generator trained without segmentation feedback, then used for data."""

    name: ClassVar[str] = "separate"
    description: ClassVar[str] = ("GenSeg ablation: the same Pix2Pix generator trained separately (no segmentation "
                                  "feedback), then used to generate pairs for the segmenter")
    feedback: ClassVar[bool] = False


class GenSegAugMethod(GenSegMethod):
    """GenSeg with classical augmentation of the real pairs too: generated pairs on top of the ``augment`` baseline."""

    name: ClassVar[str] = "genseg_aug"
    description: ClassVar[str] = ("GenSeg + classical augmentation of the real pairs (generated pairs added to what "
                                  "`augment` trains on)")

    def __init__(self, **options: Any):
        super().__init__(**{"augment_real": True, **options})


class SeparateAugMethod(SeparateMethod):
    """The separately trained Pix2Pix (all its GAN steps before the segmenter) with its pairs stacked on classical
    augmentation: a segmenter step costs about a plain step. The recipe that beat ``augment`` on Kvasir polyps at
    800 segmenter steps (benchmarks/README.md, issue 11): the generated pairs delay the over-fitting that stops
    ``augment`` early."""

    name: ClassVar[str] = "separate_aug"
    description: ClassVar[str] = ("Pix2Pix trained first (no segmentation feedback), its pairs added to what `augment` "
                                  "trains on (real and generated pairs augmented alike)")

    def __init__(self, **options: Any):
        super().__init__(**{"augment_real": True, **options})


class GenSegFrozenMethod(GenSegMethod):
    """GenSeg's search ablation: everything as in ``genseg`` (GAN updates in the loop, the same mixture of real
    and generated pairs, derivation at the end) except that alpha is never updated: the cells stay uniform
    mixtures of their candidate operations."""

    name: ClassVar[str] = "genseg_frozen"
    description: ClassVar[str] = ("GenSeg ablation: as genseg, but the architecture weights alpha stay uniform "
                                  "(no hypergradient updates)")

    def __init__(self, **options: Any):
        super().__init__(**{"search": False, **options})

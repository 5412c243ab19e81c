"""brainSPADE sweep methods: ``spade`` (image generator on real masks) and ``brainspade`` (both stages)."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import shutil
from typing import Any, ClassVar

import numpy as np

from segsynth.data.case import Case
from segsynth.errors import ConfigError
from segsynth.generators.base import Method, MethodContext, refuse_unknown_options
from segsynth.generators.brainspade.images import ImageGenerator
from segsynth.generators.brainspade.labels import LabelGenerator
from segsynth.generators.brainspade.pipeline import (
    BrainSpadeGenerator,
)
from segsynth.segment.synthetic_mix import MIX_OPTION_NAMES, MixOptions, parse_mix_options
from segsynth.utils.files import write_json
from segsynth.utils.seed import derive_seed, torch_generator

log = logging.getLogger(__name__)


_METHOD_OPTIONS = {
    "n_synthetic": 500,        # synthetic pairs sampled for the segmenter
    "mode": "mixed",           # "synthetic" (S: synthetic only) or "mixed" (H: real + synthetic)
    "real_weight": 0.5,        # share of real pairs in each batch in "mixed" mode
    "style": "source",         # style codes: "source" (training images), "target" (other-domain unlabelled), "any"
    "augment_real": False,     # classical augmentation of the real pairs in "mixed" mode
    "reuse": True,             # reuse a generator saved in the run folder (resumed sweeps)
    "sampler": None,           # brainspade: "ddim" / "ddpm" (default: the generator's)
    "sampling_steps": None,    # brainspade: DDIM steps at sampling
}
#: generator options the run fills in (from the dataset and the run's flags) unless the method options set them
RUN_SET = frozenset({"spatial_dims", "num_classes", "progress", "precision"})


class _SyntheticPairsMethod(Method):
    """Shared run(): fit (or reload) a generator, sample pairs, train one segmenter on them (+ real)."""

    generator_cls: ClassVar[type] = ImageGenerator
    option_classes: ClassVar[tuple[type, ...]] = (ImageGenerator,)  # whose constructor options the method takes

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.method_options = {k: options.get(k, v) for k, v in _METHOD_OPTIONS.items()}
        gen_opts = {k: v for k, v in options.items() if k not in _METHOD_OPTIONS}
        if self.method_options["mode"] not in ("synthetic", "mixed"):
            raise ConfigError(f"{self.name}.mode must be 'synthetic' or 'mixed', not {self.method_options['mode']!r}")
        if self.method_options["style"] not in ("source", "target", "any"):
            raise ConfigError(f"{self.name}.style must be 'source', 'target' or 'any'")
        if not 0.0 <= float(self.method_options["real_weight"]) < 1.0:
            raise ConfigError(f"{self.name}.real_weight must be in [0, 1)")
        # shared mixing options (segsynth.segment.synthetic_mix); mode / real_weight / augment_real set defaults
        real = 0.0 if self.method_options["mode"] == "synthetic" else float(self.method_options["real_weight"])
        self.mix, gen_opts = parse_mix_options(gen_opts, defaults=MixOptions(
            real_fraction=real, augment_real=bool(self.method_options["augment_real"])))
        self._synthetic: list[Case] | None = None
        refuse_unknown_options(self.name, gen_opts, set(_METHOD_OPTIONS) | MIX_OPTION_NAMES
                               | set(self._generator_defaults()))
        self.generator_options = gen_opts

    def _generator_defaults(self) -> dict[str, Any]:
        """The options of the generator classes (their constructors' parameters, in the order of
        ``option_classes``) with their defaults; the run sets those in ``RUN_SET`` unless an option does."""
        out: dict[str, Any] = {}
        for cls in self.option_classes:
            for name, p in inspect.signature(cls.__init__).parameters.items():
                if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                    out.setdefault(name, None if name in RUN_SET or p.default is p.empty else p.default)
        return out

    def option_values(self) -> dict[str, Any]:
        return {**self.method_options, **dataclasses.asdict(self.mix), **self._generator_defaults(),
                **self.generator_options}

    def option_docs(self) -> list[str]:
        inits = [f"{cls.__name__}: {inspect.getdoc(cls.__init__) or inspect.getdoc(cls) or ''}"
                 for cls in self.option_classes]
        params = [set(inspect.signature(cls.__init__).parameters) - {"self"} - RUN_SET for cls in self.option_classes]
        shared = sorted(set.intersection(*params)) if len(params) > 1 else []
        both = [f"Options of both generators, given once, go to both: {', '.join(shared)}."] if shared else []
        return [*super().option_docs(), inspect.getdoc(MixOptions) or "", *inits, *both]

    def _make_generator(self, ctx: MethodContext) -> Any:
        opts = {"spatial_dims": ctx.info.spatial_dims, "num_classes": ctx.info.num_classes,
                "progress": bool(ctx.train_config.progress) if ctx.train_config else True,
                "precision": ctx.precision,  # the run's --precision, unless the method options say otherwise
                **self.generator_options}
        return self.generator_cls(**opts)

    def fitted_generator(self, ctx: MethodContext) -> Any:
        """The generator of this run: reloaded from ``workdir/generator`` when saved there, else fitted.

        With ``ctx.workdir`` the fit checkpoints to ``workdir/generator_checkpoint`` (a killed run resumes
        there); that folder is removed once the fitted generator is saved.
        """
        gen_dir = ctx.workdir / "generator" if ctx.workdir else None
        ckpt_dir = ctx.workdir / "generator_checkpoint" if ctx.workdir else None
        marker = gen_dir / "fit_stats.json" if gen_dir else None
        if self.method_options["reuse"] and marker is not None and marker.exists():
            log.info("%s: reusing the generator saved in %s", self.name, gen_dir)
            gen = self.generator_cls.load(gen_dir, ctx.device)
            if isinstance(gen, ImageGenerator):
                gen.train_masks = [np.asarray(c.mask) for c in ctx.train]
                gen.train_mask_ids = [c.case_id for c in ctx.train]
            return gen
        gen = self._make_generator(ctx)
        stats = gen.fit(ctx.train, val=ctx.val, unlabelled=ctx.unlabelled, device=ctx.device, seed=ctx.seed,
                        checkpoint_dir=ckpt_dir)
        if gen_dir is not None:
            gen.save(gen_dir)
            write_json(marker, stats)
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # superseded by the saved generator
        return gen

    def synthetic_cases(self, gen: Any, ctx: MethodContext) -> list[Case]:
        raise NotImplementedError

    def training_source(self, ctx: MethodContext) -> Any:
        from segsynth.segment.synthetic_mix import mixed_training_source

        gen = self.fitted_generator(ctx)
        self._synthetic = self.synthetic_cases(gen, ctx)
        return mixed_training_source(ctx, self._synthetic, self.mix)

    def synthetic_source(self, ctx: MethodContext) -> Any:
        """The pairs sampled for this run's segmenter (sampled again from the saved generator if needed)."""
        from segsynth.segment.sources import CaseSource

        if self._synthetic is None:
            self._synthetic = self.synthetic_cases(self.fitted_generator(ctx), ctx)
        return CaseSource(self._synthetic, patch_size=ctx.train_config.patch_size if ctx.train_config else None,
                          num_classes=ctx.info.num_classes)


class SpadeMethod(_SyntheticPairsMethod):
    """SPADE image generator on the training masks and warped copies of them (style from the training images)."""

    name: ClassVar[str] = "spade"
    description: ClassVar[str] = "SPADE VAE-GAN painting images on (augmented) training masks"
    generator_cls: ClassVar[type] = ImageGenerator

    def synthetic_cases(self, gen: ImageGenerator, ctx: MethodContext) -> list[Case]:
        g = torch_generator(derive_seed(ctx.seed, "spade-sample"))
        return gen.sample(int(self.method_options["n_synthetic"]), generator=g,
                          style_domain=self.method_options["style"], augment_masks=True, precision=ctx.precision)


class BrainSpadeMethod(_SyntheticPairsMethod):
    """Label diffusion + SPADE: fully synthetic pairs (brainSPADE)."""

    name: ClassVar[str] = "brainspade"
    description: ClassVar[str] = "brainSPADE: latent-diffusion label maps + SPADE images (fully synthetic pairs)"
    generator_cls: ClassVar[type] = BrainSpadeGenerator
    option_classes: ClassVar[tuple[type, ...]] = (LabelGenerator, ImageGenerator)

    def synthetic_cases(self, gen: BrainSpadeGenerator, ctx: MethodContext) -> list[Case]:
        g = torch_generator(derive_seed(ctx.seed, "brainspade-sample"))
        return gen.sample(int(self.method_options["n_synthetic"]), generator=g,
                          style_domain=self.method_options["style"], sampler=self.method_options["sampler"],
                          steps=self.method_options["sampling_steps"], precision=ctx.precision)

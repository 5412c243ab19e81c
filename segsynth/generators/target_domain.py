"""Methods that adapt to the deployment site from its unlabelled images (``--target-unlabelled DIR``).

Each name contains ``target``; each reads the site's images from ``MethodContext.target`` (never from
``MethodContext.unlabelled``, the same-domain pool) and refuses to run without them:

* ``spade_target``: brainSPADE's SPADE image generator paints the training masks (warped) in the style of the
  target images (see ``SpadeTargetMethod`` for the choice made and why);
* ``fixmatch_target``: FixMatch with the target images as its unlabelled set (``augment``'s labelled stream);
* ``spade_target+fixmatch``: both: spade_target's real + target-styled pairs, FixMatch on the target images;
* ``domain_rand_aug``: the reference that uses no target image: SynthSeg-style domain randomisation of the
  label maps stacked on classical augmentation (every pair, real and randomised, augmented).

Each target method also says what a montage of its run shows (``montage_cases``): the target images, the pairs
painted in their style, the source pairs; the sweep draws it (``segsynth.experiments.target_montage``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from segsynth.data.case import Case
from segsynth.errors import ConfigError
from segsynth.generators.base import MethodContext, needs_target_error
from segsynth.generators.brainspade.methods import SpadeMethod
from segsynth.generators.domain_randomization import DomainRandMethod
from segsynth.generators.semi_supervised.methods import FixMatchMethod
from segsynth.utils.seed import derive_seed, torch_generator


def require_target(name: str, ctx: MethodContext) -> list[Case]:
    """The run's target images, or a ConfigError telling the user to pass them."""
    if not ctx.target:
        raise needs_target_error(name)
    return list(ctx.target)


def _tagged(target: list[Case]) -> list[Case]:
    """Target images marked as one domain, ``"target"`` (their own ``meta["domain"]`` when they have one)."""
    return [c if c.meta.get("domain") else Case(c.case_id, c.image, None, {**c.meta, "domain": "target"})
            for c in target]


class SpadeTargetMethod(SpadeMethod):
    """SPADE pairs painted in the deployment site's style: the training masks (warped) with style codes that
    brainSPADE's style encoder takes from the target images.

    Choice (option ``fit_on_target``, default true): brainSPADE's own recipe for a domain without labels. The
    image generator is fitted on the labelled source pairs **and** the unlabelled target images: a modality
    classifier learns to tell the two sites apart (``classifier_steps``), and in each GAN batch a share
    ``target_style_prob`` of the fakes is painted with the style code the encoder takes from a target image;
    those fakes get the modality loss (they must look like the target site to the classifier) instead of the
    discriminator, which only ever sees real source pairs with their own masks. So the target images train the
    style encoder and the decoder through the style/modality path; they cannot train them through a
    reconstruction, because a target image has no label map to reconstruct it from (SPADE decodes a style code
    *on a label map*). With ``fit_on_target=false`` the generator is the plain ``spade`` fit on the source pairs
    and the target images are only encoded at sampling (``brainspade-sample --styles``): cheaper, but the
    encoder has never seen the target site, and nothing asks the decoder to render its look.

    Either way every synthetic pair is a training mask (randomly warped) painted with the style code of one
    target image (drawn from its posterior, ``style_noise``); each pair's ``meta`` names its
    ``style_source``. Options are ``spade``'s (``segsynth methods spade``), plus ``fit_on_target``; ``style``
    is fixed to ``target``.

    Not done: a style-transfer head on GenSeg's Pix2Pix generator (``separate_aug``); Pix2Pix has no style
    input, so it would be a new network, not a setting.
    """

    name: ClassVar[str] = "spade_target"
    description: ClassVar[str] = ("SPADE pairs painted in the deployment site's style (style codes of the "
                                  "--target-unlabelled images; generator fitted on them too)")
    needs_target: ClassVar[bool] = True
    own_defaults: ClassVar[dict[str, Any]] = {"fit_on_target": True}

    def __init__(self, **options: Any):
        own = {k: options.pop(k, v) for k, v in self.own_defaults.items()}
        if options.get("style", "target") != "target":
            raise ConfigError(f"{self.name}: style is always 'target' (use spade for source styles)")
        options.pop("style", None)
        super().__init__(**options, style="target")
        self.options = {**options, **own}
        self.fit_on_target = bool(own["fit_on_target"])
        self.styles_used: list[Case] = []  # the target images whose style codes painted this run's pairs

    def option_values(self) -> dict[str, Any]:
        return {**super().option_values(), "fit_on_target": self.fit_on_target}

    def fitted_generator(self, ctx: MethodContext) -> Any:
        target = _tagged(require_target(self.name, ctx))
        return super().fitted_generator(dataclasses.replace(ctx, unlabelled=target if self.fit_on_target else []))

    def synthetic_cases(self, gen: Any, ctx: MethodContext) -> list[Case]:
        target = _tagged(require_target(self.name, ctx))
        g = torch_generator(derive_seed(ctx.seed, "spade-target-sample"))
        self.styles_used = target
        return gen.sample(int(self.method_options["n_synthetic"]), generator=g, styles=target, augment_masks=True,
                          precision=ctx.precision)

    def run(self, ctx: MethodContext) -> Any:
        require_target(self.name, ctx)  # before anything is fitted
        return super().run(ctx)

    def montage_cases(self, ctx: MethodContext, result: Any) -> dict[str, Any]:
        """What the montage of this run shows: the source pairs, and synthetic pairs beside the target image
        whose style painted each."""
        return {"source": list(ctx.train), "target": list(ctx.target), "synthetic": list(self._synthetic or []),
                "model": None}


class FixMatchTargetMethod(FixMatchMethod):
    """FixMatch with the deployment site's images as its unlabelled set (``--target-unlabelled``), not the
    same-domain pool: confident weak-view pseudo-labels on target images supervise strong views of them. Options
    are ``fixmatch``'s (``labelled`` picks the labelled stream, ``augment`` by default)."""

    name: ClassVar[str] = "fixmatch_target"
    description: ClassVar[str] = "augment + FixMatch on the deployment site's unlabelled images (--target-unlabelled)"
    needs_target: ClassVar[bool] = True

    def build_hook(self, ctx: MethodContext) -> Any:
        return super().build_hook(dataclasses.replace(ctx, unlabelled=require_target(self.name, ctx)))

    def run(self, ctx: MethodContext) -> Any:
        require_target(self.name, ctx)
        return super().run(ctx)

    def montage_cases(self, ctx: MethodContext, result: Any) -> dict[str, Any]:
        """The target images with the trained segmenter's predictions (what the pseudo-labels became), beside
        the source pairs, and the labelled stream's synthetic pairs when it makes any (spade_target+fixmatch)."""
        inner = getattr(self.inner, "montage_cases", None)
        shown = inner(ctx, result) if callable(inner) else {"source": list(ctx.train), "target": list(ctx.target),
                                                            "synthetic": []}
        return {**shown, "model": getattr(result, "model", None)}


class SpadeTargetFixMatchMethod(FixMatchTargetMethod):
    """``spade_target`` (real + target-styled SPADE pairs) with FixMatch on the same target images."""

    name: ClassVar[str] = "spade_target+fixmatch"
    description: ClassVar[str] = ("spade_target pairs (deployment site's style) + FixMatch on the deployment "
                                  "site's unlabelled images")
    labelled: ClassVar[str] = "spade_target"


class DomainRandAugMethod(DomainRandMethod):
    """``domain_rand`` stacked on ``augment``: SynthSeg-style randomised pairs from the N label maps and the real
    pairs, both classically augmented (``augment_real`` is fixed to true). The reference for the target methods
    that uses no target image: robustness to any appearance instead of adaptation to one. Options are
    ``domain_rand``'s."""

    name: ClassVar[str] = "domain_rand_aug"
    description: ClassVar[str] = ("domain randomisation stacked on augment (no target images: the reference for "
                                  "the *_target methods)")

    def __init__(self, **options: Any):
        if options.get("augment_real", True) is not True:
            raise ConfigError(f"{self.name}: augment_real is always true (domain_rand takes augment_real=false)")
        super().__init__(**{**options, "augment_real": True})
        self.options = dict(options)


__all__ = ["DomainRandAugMethod", "FixMatchTargetMethod", "SpadeTargetFixMatchMethod", "SpadeTargetMethod",
           "require_target"]

"""Sweep methods that learn from labelled + unlabelled images, and their combinations with any other method.

A semi-supervised method is another method (its *labelled stream*: by default ``augment``, the N real pairs
with classical augmentation) run with one more hook in ``MethodContext.hooks``: the hook adds an unlabelled
loss inside every training step of the one loop. So ``genseg+fixmatch`` is GenSeg's own training (real +
generated pairs, architecture updates) with FixMatch on the real unlabelled images, and option
``labelled=NAME`` does the same for any method whose training passes ``ctx.hooks`` to ``train_segmenter``.

Options (``--method-opt`` / ``SweepConfig.method_options``):
    weight: weight of the unlabelled loss (mean teacher: its maximum after the ramp-up). Default 10 for mean
        teacher (a softmax MSE), 1 for FixMatch (a cross-entropy).
    unlabelled_batch: unlabelled images per step (default: the labelled batch size).
    flip: allow flips (labelled augmentation, weak unlabelled view, mean teacher's student view). Default False.
    labelled: the method that provides the labelled stream (default ``augment``).
    mean_teacher: ema_decay (0.99), rampup (fraction of the steps of the sigmoid ramp-up, 0.25).
    fixmatch: threshold (0.95), cutmix_prob (0.5).
Every other option goes to the labelled-stream method.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, ClassVar

from segsynth.errors import ConfigError
from segsynth.generators.base import Method, MethodContext
from segsynth.generators.semi_supervised.consistency import SemiSupervisedHook

COMMON_OPTIONS = ("weight", "unlabelled_batch", "flip", "labelled")
#: each semi-supervised loss's own options and their defaults
HOOK_OPTIONS: dict[str, dict[str, float]] = {"mean_teacher": {"ema_decay": 0.99, "rampup": 0.25},
                                             "fixmatch": {"threshold": 0.95, "cutmix_prob": 0.5}}
SHARED_WITH_LABELLED = ("flip",)
# the softmax MSE of mean teacher is ~100x smaller per pixel than a cross-entropy (Tarvainen & Valpola weight
# it up to 100 for classification); FixMatch's pseudo-label cross-entropy is on the supervised loss's scale
DEFAULT_WEIGHT = {"mean_teacher": 10.0, "fixmatch": 1.0}


class SemiSupervisedMethod(Method):
    """A labelled-stream method plus an unlabelled-loss hook in the same training loop."""

    name: ClassVar[str] = "semi_supervised"
    ssl: ClassVar[str] = "fixmatch"
    labelled: ClassVar[str] = "augment"

    def __init__(self, **options: Any):
        super().__init__(**options)
        inner = str(options.get("labelled", self.labelled))
        if "+" in inner or inner in HOOK_OPTIONS:
            raise ConfigError(f"{self.name}: labelled={inner!r} must be a method without semi-supervision")
        own = set(COMMON_OPTIONS) | set(HOOK_OPTIONS[self.ssl])
        for other, keys in HOOK_OPTIONS.items():
            bad = [k for k in keys if k in options and other != self.ssl]
            if bad:
                raise ConfigError(f"{self.name}: option {bad[0]!r} belongs to {other}, not {self.ssl}")
        self.inner_name = inner
        from segsynth.generators import get_method

        inner_takes = get_method(inner).option_values()  # `flip` reaches it only where it has one (augment)
        self.inner_options = {k: v for k, v in options.items()
                              if k not in own or (k in SHARED_WITH_LABELLED and k in inner_takes)}
        self.inner = get_method(inner, **self.inner_options)

    def option_values(self) -> dict[str, Any]:
        """The labelled-stream method's options, then this method's own (``unlabelled_batch`` None: the
        labelled batch size)."""
        own = {"weight": DEFAULT_WEIGHT[self.ssl], "unlabelled_batch": None, "flip": False,
               "labelled": self.labelled, **HOOK_OPTIONS[self.ssl]}
        given = {k: v for k, v in self.options.items() if k in own}
        return {**self.inner.option_values(), **own, **given}

    def option_docs(self) -> list[str]:
        return [inspect.cleandoc(__doc__ or ""), *self.inner.option_docs()]  # this module's docstring

    def build_hook(self, ctx: MethodContext) -> SemiSupervisedHook:
        from segsynth.segment.train import TrainConfig

        cfg = ctx.train_config or TrainConfig()
        o = self.option_values()
        common = {"spatial_dims": ctx.info.spatial_dims, "seed": ctx.seed, "patch_size": cfg.patch_size,
                  "batch_size": int(o["unlabelled_batch"] or cfg.batch_size),
                  "weight": float(o["weight"]), "flip": bool(o["flip"])}
        if self.ssl == "mean_teacher":
            from segsynth.generators.semi_supervised.mean_teacher import MeanTeacherHook

            return MeanTeacherHook(ctx.unlabelled, ema_decay=float(o["ema_decay"]),
                                   rampup_steps=int(round(float(o["rampup"]) * cfg.steps)), **common)
        from segsynth.generators.semi_supervised.fixmatch import FixMatchHook

        return FixMatchHook(ctx.unlabelled, threshold=float(o["threshold"]), cutmix_prob=float(o["cutmix_prob"]),
                            **common)

    def training_source(self, ctx: MethodContext) -> Any:
        return self.inner.training_source(ctx)

    def synthetic_source(self, ctx: MethodContext) -> Any:
        """The labelled-stream method's synthetic pairs (a combination such as ``separate_aug+fixmatch`` gets a
        label fidelity like its generator method); None when that method makes none (``fixmatch`` = augment)."""
        return self.inner.synthetic_source(ctx)

    def makes_synthetic_pairs(self) -> bool:
        return self.inner.makes_synthetic_pairs()

    def run(self, ctx: MethodContext) -> Any:
        hook = self.build_hook(ctx)
        inner_ctx = dataclasses.replace(ctx, hooks=[*ctx.hooks, hook], options=dict(self.inner_options))
        result = self.inner.run(inner_ctx)
        history = getattr(result, "history", None) or []
        if history and f"{hook.name}_loss" not in history[-1]:
            raise ConfigError(f"{self.name}: method {self.inner_name!r} does not pass MethodContext.hooks to "
                              "the training loop, so it cannot be combined with semi-supervision")
        return result


class MeanTeacherMethod(SemiSupervisedMethod):
    name: ClassVar[str] = "mean_teacher"
    description: ClassVar[str] = ("augment + mean teacher on unlabelled images (EMA teacher, softmax consistency "
                                  "under noise/intensity, sigmoid ramp-up)")
    ssl: ClassVar[str] = "mean_teacher"


class FixMatchMethod(SemiSupervisedMethod):
    name: ClassVar[str] = "fixmatch"
    description: ClassVar[str] = ("augment + FixMatch on unlabelled images (confident weak-view pseudo-labels "
                                  "supervise strong intensity + CutMix views)")
    ssl: ClassVar[str] = "fixmatch"


class GenSegFixMatchMethod(FixMatchMethod):
    name: ClassVar[str] = "genseg+fixmatch"
    description: ClassVar[str] = "GenSeg (real + generated pairs) + FixMatch on real unlabelled images"
    labelled: ClassVar[str] = "genseg"


class GenSegMeanTeacherMethod(MeanTeacherMethod):
    name: ClassVar[str] = "genseg+mean_teacher"
    description: ClassVar[str] = "GenSeg (real + generated pairs) + mean teacher on real unlabelled images"
    labelled: ClassVar[str] = "genseg"


class BrainSpadeFixMatchMethod(FixMatchMethod):
    name: ClassVar[str] = "brainspade+fixmatch"
    description: ClassVar[str] = "brainSPADE synthetic + real pairs + FixMatch on real unlabelled images"
    labelled: ClassVar[str] = "brainspade"

"""Learned-transforms sweep methods: sas, sas_aug, randaug, learned, learned_randaug."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from segsynth.data.case import Case
from segsynth.errors import ConfigError, DataError
from segsynth.generators.base import Method, MethodContext
from segsynth.generators.learned_transforms.helpers import (
    conform,
)
from segsynth.generators.learned_transforms.model import LearnedTransforms, TransformFitConfig
from segsynth.generators.learned_transforms.randaug import RandAug, RandAugSource
from segsynth.generators.learned_transforms.sas import AtlasSegmenter
from segsynth.generators.learned_transforms.sources import LearnedSource
from segsynth.nets.registration import (
    warp_labels,
)
from segsynth.utils.files import atomic_dir, write_json
from segsynth.utils.seed import derive_seed, torch_generator

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- methods
_FIT_OPTIONS = {"reg_steps": 300, "app_steps": 300, "reg_batch": 4, "reg_lr": 1e-3, "similarity": "ncc",
                "window": None, "smooth_weight": 1.0, "app_smooth_weight": 1.0, "inverse": "model",
                "integration_steps": 7, "reg_channels": [16, 32, 32, 32], "reg_final_channels": [16, 16],
                "app_channels": [16, 32, 64],
                "max_unlabelled": 100, "label_warp": "onehot", "transforms": None, "cache": True}
_RANDAUG_OPTIONS = {"displacement": 0.04, "control_points": 5, "intensity_scale": [0.8, 1.2]}
# segsynth.segment.synthetic_mix's options (None: the method's default)
_MIX_OPTIONS = {"real_fraction": None, "augment_real": False, "augment_synthetic": None, "min_fidelity": None,
                "aug_kind": "combined", "aug_flip": False, "fidelity_tries": 8, "synthetic_until": None}


class _TransformsMethod(Method):
    """Shared option handling and fitting (or loading, or reusing) of the transform models.

    Options of the methods that learn transforms (``sas``, ``sas_aug``, ``learned``, ``learned_randaug``):
    ``reg_steps``, ``app_steps``, ``reg_batch``, ``reg_lr``, ``similarity`` ("ncc"/"mse"), ``window``,
    ``smooth_weight``, ``app_smooth_weight``, ``inverse`` ("model"/"negate"), ``integration_steps``,
    ``reg_channels``, ``reg_final_channels``, ``app_channels``, ``max_unlabelled`` (default 100),
    ``label_warp`` ("onehot"/"nearest"), ``transforms`` (a folder from ``segsynth transforms-fit`` to use
    instead of fitting), ``cache`` (share one fit between the methods of a sweep; default True). Rand-aug:
    ``displacement``, ``control_points``, ``intensity_scale``. ``learned*``: ``real_weight`` ("auto": 0 with
    one labelled case, else 0.5 of each batch from the real pairs) and ``atlases`` (beyond the paper: how many
    labelled cases serve as atlases, an int or "all"; default 1); ``learned_randaug``: ``mix``
    ("alternate"/"compose") and ``randaug_weight``. The atlas is the first labelled case of the run; with
    ``atlases=k`` the first k, each with its own fitted transforms (and cache entry), their pairs drawn in equal
    shares.
    """

    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any):
        super().__init__(**options)
        n = options.get("atlases", 1)  # its form is known now; whether the run has that many cases, at run time
        if n != "all" and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"method {self.name!r}: atlases must be a positive integer or 'all', got {n!r}")
        if n != "all":  # "all" is known only at run time (all of one labelled case is one atlas)
            self._refuse_one_fit_for(n, n)

    def _refuse_one_fit_for(self, n: int, given: int | str) -> None:
        """ConfigError when ``n`` (> 1) atlases, from ``atlases=given``, are asked of one ``transforms=PATH`` fit."""
        if n > 1 and self.options.get("transforms"):
            detail = "" if given == n else f" ({n} labelled cases)"
            raise ConfigError(f"method {self.name!r}: transforms=PATH holds one atlas's fit; it cannot serve "
                              f"atlases={given}{detail}")

    def option_docs(self) -> list[str]:
        from segsynth.segment.synthetic_mix import MixOptions

        mix = [inspect.getdoc(MixOptions) or ""] if "real_fraction" in self.defaults else []
        return [*super().option_docs(), inspect.getdoc(_TransformsMethod) or "", *mix]

    def opt(self, key: str) -> Any:
        return self.options.get(key, self.defaults[key])

    def rand_aug(self) -> RandAug:
        return RandAug(displacement=float(self.opt("displacement")), control_points=int(self.opt("control_points")),
                       intensity_scale=tuple(self.opt("intensity_scale")), label_warp=str(self.opt("label_warp")))

    def n_atlases(self, ctx: MethodContext) -> int:
        """How many labelled cases serve as atlases (option ``atlases`` where the method has it; else 1)."""
        given = self.opt("atlases") if "atlases" in self.defaults else 1
        n = max(1, len(ctx.train)) if given == "all" else given
        if n > len(ctx.train):
            raise DataError(f"method {self.name!r}: atlases={n} needs {n} labelled cases; this run has "
                            f"{len(ctx.train)}")
        self._refuse_one_fit_for(n, given)  # an int > 1 was refused when the method was made; "all", now
        return n

    def _atlas_and_unlabelled(self, ctx: MethodContext, index: int = 0) -> tuple[Case, list[Case]]:
        """Labelled case ``index`` as the atlas, and the images it is registered to: the run's unlabelled images
        (up to ``max_unlabelled``), or else the other labelled cases' images."""
        if not ctx.train:
            raise DataError("this method needs one labelled atlas (N >= 1)")
        atlas = ctx.train[index]
        pool = list(ctx.unlabelled) or [Case(c.case_id, c.image, None, dict(c.meta))
                                        for i, c in enumerate(ctx.train) if i != index]
        if not pool:
            raise DataError(f"method {self.name!r} learns from unlabelled images, and this run has none: give "
                            "--unlabelled DIR, or leave unused labelled cases in the pool")
        k = self.opt("max_unlabelled")
        if k is not None and len(pool) > int(k):
            g = torch_generator(derive_seed(ctx.seed, "unlabelled-subset"))
            pool = [pool[i] for i in sorted(torch.randperm(len(pool), generator=g)[: int(k)].tolist())]
        return atlas, pool

    def fit_config(self, need_appearance: bool, progress: bool, precision: str = "fp32") -> TransformFitConfig:
        return TransformFitConfig(steps=int(self.opt("reg_steps")), precision=precision,
                                  appearance_steps=int(self.opt("app_steps")) if need_appearance else 0,
                                  batch_size=int(self.opt("reg_batch")), lr=float(self.opt("reg_lr")),
                                  similarity=str(self.opt("similarity")), window=self.opt("window"),
                                  smooth_weight=float(self.opt("smooth_weight")),
                                  appearance_smooth_weight=float(self.opt("app_smooth_weight")), progress=progress)

    def transforms(self, ctx: MethodContext, need_appearance: bool, index: int = 0) -> LearnedTransforms:
        """Fitted transforms for this run's atlas (labelled case ``index``): loaded from ``transforms=PATH``, or
        from the sweep's cache (same atlas, unlabelled images and options: shared by sas, sas_aug, learned,
        learned_randaug), or fitted now (and cached)."""
        atlas, pool = self._atlas_and_unlabelled(ctx, index)
        progress = bool(ctx.train_config.progress) if ctx.train_config else False
        path = self.opt("transforms")
        if path:
            t = LearnedTransforms.load(path, ctx.device)
            if tuple(t.atlas_shape) != tuple(atlas.spatial_shape) or not torch.allclose(
                    t.atlas_image.cpu(), torch.as_tensor(np.asarray(atlas.image), dtype=torch.float32), atol=1e-4):
                raise ConfigError(f"transforms in {path} were fitted to atlas {t.atlas_id!r}, not to this run's "
                                  f"atlas {atlas.case_id!r}")
            if t.bank is None:
                t.encode(pool, with_appearance=need_appearance)
            return t
        # with a cache, the appearance model is always fitted: one entry then serves every method of the sweep
        cache = self._cache_dir(ctx, atlas, pool) if self.opt("cache") else None
        cfg = self.fit_config(need_appearance=need_appearance or cache is not None, progress=progress,
                              precision=ctx.precision)
        if cache is not None and (cache / "transforms.json").exists():
            log.info("reusing learned transforms from %s", cache)
            return LearnedTransforms.load(cache, ctx.device)
        t = LearnedTransforms.for_atlas(
            atlas, ctx.info.num_classes, reg_channels=tuple(self.opt("reg_channels")),
            reg_final_channels=tuple(self.opt("reg_final_channels")),
            integration_steps=int(self.opt("integration_steps")), appearance_channels=tuple(self.opt("app_channels")),
            inverse=str(self.opt("inverse")), label_warp=str(self.opt("label_warp")),
            seed=derive_seed(ctx.seed, "transforms-init"))
        stats = t.fit([atlas], unlabelled=pool, device=ctx.device, seed=ctx.seed, config=cfg)
        log.info("learned transforms: spatial loss %.4f -> %.4f in %.0f s; appearance %s",
                 stats["spatial"]["loss_start"], stats["spatial"]["loss_end"], stats["spatial"]["seconds"],
                 {k: round(v, 4) for k, v in stats.get("appearance", {}).items()
                  if k in ("loss_start", "loss_end", "seconds")})
        if cache is not None:
            with atomic_dir(cache) as tmp:
                t.save(tmp)
        if ctx.workdir is not None:
            write_json(Path(ctx.workdir) / ("transforms_fit.json" if index == 0 else
                                            f"transforms_fit_atlas{index}.json"), stats)
        return t

    def learned_sources(self, ctx: MethodContext, rand_aug: RandAug | None = None) -> Any:
        """Learned-transform pairs of each atlas (``n_atlases``), in equal shares of every batch."""
        from segsynth.segment.sources import MixedSource

        sources = [LearnedSource(self.transforms(ctx, need_appearance=True, index=k), rand_aug=rand_aug,
                                 patch_size=self.patch(ctx)) for k in range(self.n_atlases(ctx))]
        return sources[0] if len(sources) == 1 else MixedSource([(s, 1.0) for s in sources])

    def _cache_dir(self, ctx: MethodContext, atlas: Case, pool: Sequence[Case]) -> Path | None:
        """Per sweep: ``<sweep out>/_learned_transforms/<atlas>_<hash of images, options, seed>``."""
        if ctx.workdir is None:
            return None
        opts = sorted((k, self.opt(k)) for k in _FIT_OPTIONS if k not in ("transforms", "cache"))
        if ctx.precision != "fp32":  # fp32 keys stay as they were
            opts.append(("precision", ctx.precision))
        key = derive_seed(atlas.case_id, ",".join(c.case_id for c in pool), opts, ctx.seed, ctx.device.type)
        return Path(ctx.workdir).parent / "_learned_transforms" / f"{atlas.case_id}_{key:08x}"

    def patch(self, ctx: MethodContext) -> tuple[int, ...] | None:
        return ctx.train_config.patch_size if ctx.train_config else None

    def _with_real(self, ctx: MethodContext, source: Any) -> Any:
        """The synthetic stream mixed with the real pairs by ``segsynth.segment.synthetic_mix`` (its options:
        ``real_fraction`` overrides ``real_weight``; ``augment_real``, ``augment_synthetic``, ``min_fidelity``)."""
        from segsynth.segment.synthetic_mix import (
            MIX_OPTION_NAMES,
            MixOptions,
            mixed_training_source,
            parse_mix_options,
        )

        w = self.opt("real_weight") if "real_weight" in self.defaults else 0.0
        if w == "auto":  # one-shot: synthetic pairs only (the paper); more labels: half of each batch real
            w = 0.0 if len(ctx.train) <= 1 else 0.5
        mix, _ = parse_mix_options({k: v for k, v in self.options.items() if k in MIX_OPTION_NAMES},
                                   defaults=MixOptions(real_fraction=float(w)))
        return mixed_training_source(ctx, source, mix)


class SASMethod(_TransformsMethod):
    """Single-atlas segmentation: the atlas (first labelled case) registered to each image, labels warped."""

    name: ClassVar[str] = "sas"
    description: ClassVar[str] = "single-atlas segmentation: register the atlas to each test image, warp its labels"
    defaults: ClassVar[dict[str, Any]] = dict(_FIT_OPTIONS)

    def run(self, ctx: MethodContext) -> Any:
        from segsynth.segment.train import TrainResult, validation_dice
        from segsynth.utils.device import peak_memory_mb

        t0 = time.perf_counter()
        t = self.transforms(ctx, need_appearance=False)
        model = AtlasSegmenter(t).to(ctx.device).eval()
        vd = validation_dice(model, ctx.val, ctx.info.num_classes, None, ctx.device) if ctx.val else float("nan")
        spatial = t.fit_stats.get("spatial", {})
        history = [{"step": i, "loss": v} for i, v in enumerate(spatial.get("losses", []))]
        return TrainResult(model=model, best_val_dice=vd, best_step=int(spatial.get("steps", 0)), history=history,
                           seconds=time.perf_counter() - t0, peak_memory_mb=peak_memory_mb(ctx.device),
                           steps=int(spatial.get("steps", 0)))


class SASAugMethod(_TransformsMethod):
    """A segmenter trained on the unlabelled images labelled by single-atlas segmentation, plus the atlas."""

    name: ClassVar[str] = "sas_aug"
    description: ClassVar[str] = "segmenter trained on unlabelled images labelled by the registered atlas"
    defaults: ClassVar[dict[str, Any]] = dict(_FIT_OPTIONS)

    def training_source(self, ctx: MethodContext) -> Any:
        from segsynth.segment.sources import CaseSource

        return CaseSource(list(ctx.train) + self.pseudo_labelled(ctx), patch_size=self.patch(ctx),
                          num_classes=ctx.info.num_classes)

    def synthetic_source(self, ctx: MethodContext) -> Any:
        """The atlas-labelled images alone (their label fidelity is the registration's accuracy)."""
        from segsynth.segment.sources import CaseSource

        return CaseSource(self.pseudo_labelled(ctx), patch_size=self.patch(ctx), num_classes=ctx.info.num_classes)

    def pseudo_labelled(self, ctx: MethodContext) -> list[Case]:
        t = self.transforms(ctx, need_appearance=False)
        _, pool = self._atlas_and_unlabelled(ctx)
        bank = t._require_bank()
        shaped = conform(pool, t.atlas_shape)
        by_id = {c.case_id: c for c in shaped}
        pseudo = []
        for i, cid in enumerate(bank.ids):
            if cid not in by_id:
                continue
            y = warp_labels(t.atlas_mask.cpu()[None], bank.ddf[i:i + 1], t.num_classes, t.label_warp)[0]
            c = by_id[cid]
            pseudo.append(Case(f"sas_{cid}", c.image, y.numpy(), {**c.meta, "method": "sas_aug",
                                                                 "source_mask": t.atlas_id}))
        return pseudo


class RandAugMethod(_TransformsMethod):
    """The labelled case(s) with random smooth deformations and global intensity scaling (the paper's rand-aug)."""

    name: ClassVar[str] = "randaug"
    description: ClassVar[str] = "random smooth deformation + global intensity scaling of the labelled case(s)"
    defaults: ClassVar[dict[str, Any]] = {**_RANDAUG_OPTIONS, "label_warp": "onehot"}

    def training_source(self, ctx: MethodContext) -> Any:
        return RandAugSource(ctx.train, self.rand_aug(), ctx.info.num_classes, patch_size=self.patch(ctx))


class LearnedMethod(_TransformsMethod):
    """Pairs synthesised by learned spatial and appearance transforms drawn independently (Zhao et al.)."""

    name: ClassVar[str] = "learned"
    description: ClassVar[str] = "learned spatial + appearance transforms of the atlas, drawn independently"
    defaults: ClassVar[dict[str, Any]] = {**_FIT_OPTIONS, **_MIX_OPTIONS, "real_weight": "auto", "atlases": 1}

    def synthetic_source(self, ctx: MethodContext) -> Any:
        return self.learned_sources(ctx)

    def training_source(self, ctx: MethodContext) -> Any:
        return self._with_real(ctx, self.synthetic_source(ctx))


class LearnedRandAugMethod(_TransformsMethod):
    """Learned transforms plus rand-aug: alternated per sample (default, as in the paper) or composed."""

    name: ClassVar[str] = "learned_randaug"
    description: ClassVar[str] = "learned transforms + rand-aug (half of the samples each, or composed)"
    defaults: ClassVar[dict[str, Any]] = {**_FIT_OPTIONS, **_RANDAUG_OPTIONS, **_MIX_OPTIONS, "real_weight": "auto",
                                         "mix": "alternate", "randaug_weight": 0.5, "atlases": 1}

    def synthetic_source(self, ctx: MethodContext) -> Any:
        from segsynth.segment.sources import MixedSource

        mix = self.opt("mix")
        if mix == "compose":
            return self.learned_sources(ctx, rand_aug=self.rand_aug())
        if mix != "alternate":
            raise ConfigError(f"learned_randaug mix must be 'alternate' or 'compose', got {mix!r}")
        w = float(self.opt("randaug_weight"))
        learned = self.learned_sources(ctx)
        ra = RandAugSource(ctx.train[:self.n_atlases(ctx)], self.rand_aug(), ctx.info.num_classes,
                           patch_size=self.patch(ctx))
        return MixedSource([(learned, 1.0 - w), (ra, w)])

    def training_source(self, ctx: MethodContext) -> Any:
        return self._with_real(ctx, self.synthetic_source(ctx))

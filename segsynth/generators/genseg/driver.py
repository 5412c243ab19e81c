"""GenSeg's training driver: pre-train, train segmenter + generator with the hook, derive, save."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from typing import Any

from segsynth.errors import DataError
from segsynth.generators.base import MethodContext
from segsynth.generators.genseg.generator import GenSegGenerator
from segsynth.generators.genseg.helpers import rank
from segsynth.generators.genseg.hook import GenSegHook
from segsynth.generators.genseg.options import GENSEG_CONFIG, GenSegOptions
from segsynth.generators.genseg.sources import GeneratedSource
from segsynth.segment.sources import CaseSource, MixedSource
from segsynth.segment.train import (
    TrainConfig,
    TrainResult,
    init_distributed_from_env,
    train_segmenter,
)
from segsynth.utils.device import resolve_device
from segsynth.utils.precision import describe_precision
from segsynth.utils.seed import derive_seed

log = logging.getLogger(__name__)


# ================================================================================================ methods

def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_fitted(key: str, own: Any, shared: Any, device: Any) -> GenSegGenerator | None:
    """The generator fitted with this fit key: this run's own (after a kill), else the sweep's shared one (fitted
    by another method of the same seed), else None. The shared folder is a cache other runs write, at the same
    time under Ray: one that cannot be read (being replaced) counts as absent, and this run fits its own."""
    for folder in (own, shared):
        if folder is None or not (folder / GENSEG_CONFIG).exists():
            continue
        try:
            old = GenSegGenerator.load(folder, device)
        except (DataError, OSError, RuntimeError) as e:
            if folder is own:
                raise
            log.warning("genseg: shared generator %s unreadable (%s): fitting this run's own", folder, e)
            continue
        if old.history.get("fit_key") == key:
            log.info("genseg: generator fitted already (%s): reused", folder)
            return old
    return None


def _save_fitted(gen: GenSegGenerator, own: Any, shared: Any) -> None:
    """Keep the fitted generator in the run's folder (a self-contained run, resumable) and in the sweep's shared
    cache, each once. A concurrent run may write the shared copy at the same moment: that is not an error."""
    if own is not None and not (own / GENSEG_CONFIG).exists():
        gen.save(own)
    if shared is not None and not (shared / GENSEG_CONFIG).exists():
        try:
            gen.save(shared)
        except OSError as e:
            log.warning("genseg: shared generator %s not written (%s); another run wrote it", shared, e)


def gan_updates_in_loop(steps: int, gen_every: int, switch: int | None = None) -> int:
    """GAN updates GenSeg's hook makes in a run of ``steps`` segmenter steps: after each step ``t`` (1-based)
    with ``t % gen_every == 0``, and, with a switch to real pairs at step ``switch``, only for ``t < switch``
    (an update after that would reach no generated batch)."""
    if not gen_every:
        return 0
    last = steps if switch is None else min(steps, switch - 1)
    return last // gen_every


def train_genseg(ctx: MethodContext, opts: GenSegOptions, feedback: bool = True, mix: Any = None
                 ) -> tuple[TrainResult, GenSegGenerator]:
    """Train a GenSeg (``feedback=True``) or "separate" generator and the segmenter; returns both.

    ``mix`` (``segsynth.segment.synthetic_mix.MixOptions``) builds the segmenter's batches with the shared
    real + synthetic mixer (generated pairs augmented like the real ones, ``min_fidelity``); None keeps
    ``synthetic_fraction`` / ``augment_real`` as they are.

    With ``ctx.workdir`` the pre-trained generator, the training checkpoints and the final generator are kept
    there, and a killed run resumes.
    """
    cfg = ctx.train_config or TrainConfig(seed=ctx.seed)
    k = ctx.info.num_classes
    device = resolve_device(ctx.device)
    init_distributed_from_env(device)  # under torchrun: ranks agree on the GAN updates from the start
    patch = cfg.patch_size
    # what the GAN learns from: crops of gan_patch (checked against the networks once they are built), or the
    # segmenter's patch
    gan_patch = tuple(int(v) for v in opts.gan_patch) if opts.gan_patch else (tuple(patch) if patch else None)
    train = [c for c in ctx.train if c.mask is not None]
    if not train:
        raise DataError("GenSeg needs labelled training cases")
    masks, mask_ids = [c.mask for c in train], [c.case_id for c in train]
    if opts.extra_masks:  # label maps without images, rendered alongside the real masks (read before the
        # generator's fit, so that a bad file stops the run before minutes of GAN steps)
        from segsynth.data.dataset import load_masks, value_map_of

        extra, extra_ids = load_masks(opts.extra_masks, value_map_of(ctx.info), tuple(train[0].mask.shape),
                                      progress=cfg.progress)
        masks, mask_ids = masks + extra, mask_ids + extra_ids
        log.info("genseg: %d extra masks from %s rendered alongside the %d real ones", len(extra),
                 opts.extra_masks, len(train))
    # the step from which batches are real pairs only (synthetic_until), or None; GenSeg's hook updates nothing
    # from there on
    switch = mix.switch_step(cfg.steps) if mix is not None else None
    in_loop_gan = gan_updates_in_loop(cfg.steps, opts.gen_every, switch)
    # "separate" gets as many GAN updates as GenSeg's generator, all before the segmenter starts
    pre_steps = opts.pretrain_steps + (0 if feedback else in_loop_gan)
    gen = GenSegGenerator(**opts.generator_kwargs(), fit_steps=pre_steps)
    gen.build_for(train, k, seed=ctx.seed, device=device, info=ctx.info)
    precision = cfg.autocast_dtype(device)  # the segmenter's precision is the generator's too
    key_parts: list[Any] = [asdict(opts), pre_steps, ctx.seed, [c.case_id for c in train], patch,
                            str(gen.spatial_shape)]
    if precision is not None:  # fp32 keys stay as they were
        key_parts.append(describe_precision(precision))
    key = _fingerprint(*key_parts)
    pre_dir = ctx.workdir / "generator_pretrained" if ctx.workdir else None
    shared = ctx.shared_dir / "genseg_pretrained" / key if ctx.shared_dir else None
    reused = _load_fitted(key, pre_dir, shared, device)
    if reused is not None:
        gen = reused
        gen.info = ctx.info
    gen.require_net().set_fused(opts.fused_cells)
    if opts.gan_patch:
        gen.check_crop(gan_patch)
    gen.precision = precision
    if reused is None:
        log.info("genseg: %d GAN steps of the generator (%s) before the segmenter", pre_steps,
                 "pre-training" if feedback else "separate training")
        gen.fit(train, device=device, seed=ctx.seed, steps=pre_steps, patch_size=gan_patch, progress=cfg.progress)
        gen.history["fit_key"] = key
    if rank() == 0:
        _save_fitted(gen, pre_dir, shared)
    gen.set_source_masks(masks, ids=mask_ids)
    gen.ensure_seg_term(train, seed=ctx.seed, patch_size=patch)  # a reused pre-trained generator comes without one
    assert gen.source is not None

    real_aug = None
    if opts.augment_real:
        from segsynth.data.transforms import classical_augmentation

        real_aug = classical_augmentation("combined", ctx.info.spatial_dims)
    real = CaseSource(train, transform=real_aug, patch_size=patch, num_classes=k)
    synth = GeneratedSource(gen, gen.source, patch_size=patch)
    if mix is None:
        source = MixedSource([(real, 1.0 - opts.synthetic_fraction), (synth, opts.synthetic_fraction)])
    else:  # synthesis stacked with augmentation (segsynth.segment.synthetic_mix)
        from segsynth.segment.synthetic_mix import mixed_training_source

        source = mixed_training_source(ctx, synth, mix)
    hooks: list[Any] = []
    if feedback:
        val_cases = ctx.val if ctx.val else train
        if not ctx.val:
            log.warning("genseg: no validation cases; the architecture follows the training loss instead")
        hooks.append(GenSegHook(gen, real, gen.source, CaseSource(val_cases, patch_size=patch, num_classes=k),
                                opts, seed=ctx.seed, gan_real=gen.gan_source(train, gan_patch),
                                until=switch))
    hooks += list(ctx.hooks)  # e.g. a semi-supervised loss on unlabelled images (genseg+fixmatch)
    model = ctx.build_segmenter()
    ckpt = ctx.workdir / "checkpoint" if ctx.workdir else None
    result = train_segmenter(model, source, ctx.val, cfg, num_classes=k, device=device,
                             checkpoint_dir=ckpt, hooks=hooks)
    net = gen.require_net()
    if feedback and opts.search and net.searchable:
        gen.history["arch"] = net.arch_summary()
        log.info("genseg: searched architecture %s", net.arch_summary())
    if feedback and opts.save_search and ctx.workdir is not None and rank() == 0:
        gen.save(ctx.workdir / "generator_search")
    if opts.save_generator:
        if feedback:
            gen.derive()
            if opts.derive_steps:
                stats = gen.fit(train, device=device, seed=derive_seed(ctx.seed, "derive"), steps=opts.derive_steps,
                                patch_size=gan_patch)
                gen.history["derive_fit"] = stats
        if ctx.workdir is not None and rank() == 0:
            gen.save(ctx.workdir / "generator")
    return result, gen

"""GenSeg's options (``--method-opt genseg.KEY=VALUE``) and saved-file names."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from segsynth.data.mask_augment import MaskAugment
from segsynth.errors import ConfigError
from segsynth.generators.genseg.hypergradient import (
    HYPERGRADIENT_MODES,
)

GENSEG_CONFIG = "genseg.json"
FORMAT = "segsynth-genseg-1"
Params = dict[str, torch.Tensor]


# ================================================================================================ options

@dataclass
class GenSegOptions:
    """Options of the ``genseg`` and ``separate`` methods (``--method-opt genseg.KEY=VALUE``).

    Generator and GAN (stage I):
        features, max_features: generator channels (first level; cap). Pix2Pix uses 64 / 512.
        num_downs: generator levels (None: as many as keep a 2-voxel bottleneck, at most 8).
        disc_features, disc_layers: PatchGAN width and strided layers (lowered automatically for small inputs).
        dropout: generator dropout (Pix2Pix's noise), on the 3 innermost up cells.
        lambda_l1: weight of the L1 term (Pix2Pix: 100).
        gen_lr: Adam learning rate of generator and discriminator (betas 0.5, 0.999).
        gen_batch_size: real pairs per GAN update.
        pretrain_steps: GAN updates before the segmenter starts.
        gan_augment: augment the real pairs the GAN learns from (same spatial augmentation as the masks).
        gan_patch: beyond the paper, GAN updates on random crops of this size (e.g. [32, 32, 32]; a third of
            them centred on foreground) instead of the segmenter's whole inputs. The generator and the PatchGAN
            are fully convolutional, so the generator still renders whole images. Hippocampus 3D (40×56×40,
            2 cores): a GAN step on a 32³ crop took 0.29 s against 0.43-0.58 s on the whole volume, and the
            segmenter's Dice was 2.2 points lower than with whole-volume steps (benchmarks/README.md, issue 12).
            None (default): the segmenter's patch, or the whole image.
        seg_weight: weight of the segmentation term in the generator loss (``segsynth.generators.seg_term``):
            a U-Net trained on the real pairs segments each generated image, and Dice + CE against the mask
            it was rendered from joins LSGAN + lambda L1 (0 = off: plain Pix2Pix, the paper).
        seg_steps: training steps of that U-Net (classical augmentation of the real pairs) before the GAN.
        seg_cotrain: keep training it on augmented real pairs (one step per GAN step) instead of freezing it.
    Coupling (stages II and III):
        synthetic_fraction: expected share of generated pairs in each segmenter batch (the public code uses
            one real and one generated batch of equal size: 0.5).
        gen_every: one GAN update of the generator every this many segmenter steps (0 = none in the loop).
        arch_every: one architecture update every this many segmenter steps.
        arch_every_max: 0 (default) keeps ``arch_every`` fixed. Larger: alpha is updated less often once it
            settles: after an update that moved softmax(alpha) by less than ``arch_settle_tol`` (largest
            entry) the interval doubles, up to this many steps; a larger move resets it to ``arch_every``.
            Each architecture step costs about 3 segmenter steps (measured, 2D 64²), so this is most of what
            a GenSeg step costs beyond the GAN update (benchmarks/genseg_speed.py).
        arch_settle_tol: the move of softmax(alpha) below which alpha counts as settled.
        fused_cells: evaluate each searchable cell as one convolution with the mixed kernel (same function, float
            rounding aside; 2D 64²: GAN step -25 %, generation -45 %) instead of op by op (False: as before).
        arch_lr, arch_weight_decay: Adam on alpha (betas 0.5, 0.999; DARTS: 3e-4, 1e-3). Measured at a few
            hundred segmenter steps: hypergradient entries are ~1e-5, so the L2 term (coupled, as in DARTS)
            holds alpha within ~0.01 of 0 whatever the learning rate; weight decay 0 lets it move (see
            benchmarks/README.md for what that did to Dice: nothing measurable).
        arch_batch_size: generated images per hyper-step (the real and validation batches have the same size).
        hypergradient: "finite_difference" (DARTS) or "exact" (double backward).
        fd_eps: relative finite-difference step.
        unroll_generator: also follow alpha's effect on the generator weights through one virtual GAN step
            (off by default: that path scales with the GAN's SGD step, and Adam has none; see hypergradient.py).
        augment: mask augmentation options (``MaskAugment`` fields), e.g. {"flip_axes": []}.
        augment_real: classical augmentation of the real pairs in the segmenter's batches too.
        extra_masks: a folder of label maps without images (same values as the dataset's masks, e.g. ISIC's
            ``masks_only_train2000/``): beyond the paper, the generator renders images for them too, drawn
            (and augmented) alongside the real masks, so the segmenter sees lesion shapes no labelled case
            has. The GAN still learns from the labelled pairs only. Local files only; None = off.
        search: update alpha from the validation loss (False: alpha stays uniform, everything else as in
            GenSeg: the ``genseg_frozen`` ablation, which isolates what the architecture search contributes).
        weight_feedback: beyond the paper, which updates only alpha that way: the same hypergradient of the
            unrolled validation loss (through the segmenter's loss on the generated pairs) also reaches the
            generator weights W, applied with its own Adam (``weight_feedback_lr``) at every architecture step.
        weight_feedback_lr: learning rate of that Adam on W.
    Output:
        derive_steps: stage-I updates of the derived generator before it is saved (0 = save it untrained).
        save_generator: save the generator in the run's work folder (``generator/``).
        save_search: also save the searched (mixture) generator with its alpha (``generator_search/``).
    """

    features: int = 32
    max_features: int = 256
    num_downs: int | None = None
    disc_features: int = 64
    disc_layers: int = 3
    dropout: float = 0.5
    lambda_l1: float = 100.0
    gen_lr: float = 2e-4
    gen_batch_size: int = 4
    pretrain_steps: int = 300
    gan_augment: bool = True
    gan_patch: list[int] | None = None
    seg_weight: float = 0.0
    seg_steps: int = 200
    seg_cotrain: bool = False
    synthetic_fraction: float = 0.5
    gen_every: int = 1
    arch_every: int = 2
    arch_every_max: int = 0
    arch_settle_tol: float = 1e-3
    fused_cells: bool = True
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    arch_batch_size: int = 4
    hypergradient: str = "finite_difference"
    fd_eps: float = 1e-2
    unroll_generator: bool = False
    augment: dict[str, Any] = field(default_factory=dict)
    augment_real: bool = False
    extra_masks: str | None = None
    search: bool = True
    weight_feedback: bool = False
    weight_feedback_lr: float = 1e-4
    derive_steps: int = 200
    save_generator: bool = True
    save_search: bool = False

    def __post_init__(self) -> None:
        if self.hypergradient not in HYPERGRADIENT_MODES:
            raise ConfigError(f"genseg hypergradient must be one of {', '.join(HYPERGRADIENT_MODES)}, "
                              f"not {self.hypergradient!r}")
        if not 0.0 < float(self.synthetic_fraction) < 1.0:
            raise ConfigError(f"genseg synthetic_fraction must be in (0, 1), got {self.synthetic_fraction}")
        for name in ("features", "max_features", "disc_features", "disc_layers", "gen_batch_size",
                     "arch_batch_size", "arch_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"genseg {name} must be >= 1, got {getattr(self, name)}")
        if int(self.arch_every_max) and int(self.arch_every_max) < int(self.arch_every):
            raise ConfigError(f"genseg arch_every_max must be 0 or >= arch_every ({self.arch_every}), "
                              f"got {self.arch_every_max}")
        if self.gan_patch is not None and (not isinstance(self.gan_patch, (list, tuple)) or not self.gan_patch
                                           or any(int(v) < 1 for v in self.gan_patch)):
            raise ConfigError(f"genseg gan_patch must be a list of positive sizes, one per axis, got {self.gan_patch!r}")
        if float(self.seg_weight) < 0:
            raise ConfigError(f"genseg seg_weight must be >= 0, got {self.seg_weight}")
        if self.weight_feedback and self.unroll_generator:
            raise ConfigError("genseg weight_feedback and unroll_generator do not combine: with the unrolled GAN "
                              "step the images depend on the virtual weights W', not on W")
        for name in ("pretrain_steps", "gen_every", "derive_steps", "seg_steps"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"genseg {name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"genseg dropout must be in [0, 1), got {self.dropout}")
        MaskAugment.from_options(self.augment)  # validates the augmentation options

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> GenSegOptions:
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown genseg options {unknown}; known: {sorted(known)}")
        return cls(**options)

    def generator_kwargs(self) -> dict[str, Any]:
        keys = ("features", "max_features", "num_downs", "disc_features", "disc_layers", "dropout", "lambda_l1",
                "gen_lr", "gen_batch_size", "gan_augment", "augment", "seg_weight", "seg_steps", "seg_cotrain")
        return {k: getattr(self, k) for k in keys}

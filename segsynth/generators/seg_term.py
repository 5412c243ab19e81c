"""A segmentation term for mask-to-image generators: the generated image, segmented, must give back its mask.

OASIS (Sushko et al., ICLR 2021) makes a segmentation network the discriminator. Here the auxiliary form of
the same idea: a segmenter trained on the *real* pairs (with classical augmentation) segments each generated
image, and ``weight * DiceCE(prediction, the mask it was generated from)`` joins the generator's loss. The
segmenter never sees generated images as training data, so it cannot learn to read generator artefacts: a
generated image scores well only when it shows what the mask says the way real images do. After its own
training it is frozen, or (``cotrain``) keeps taking one step on augmented real pairs per generator step.

Used by GenSeg's Pix2Pix (genseg options ``seg_weight``, ``seg_steps``, ``seg_cotrain``) and by brainSPADE's
SPADE image generator (``lambda_seg``, ``seg_steps``, ``seg_cotrain``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from segsynth.data.case import Case
from segsynth.errors import ConfigError, DataError
from segsynth.segment.inference import _pad_to_divisor
from segsynth.segment.losses import dice_ce_loss
from segsynth.utils.seed import derive_seed, torch_generator

#: BasicUNet widths of the guiding segmenter (small: it runs in every generator step)
SEG_FEATURES = (16, 16, 32, 64, 128, 16)


def seg_term_features(width: int) -> tuple[int, ...]:
    """BasicUNet widths scaled like a generator of first-level width ``width`` (16 gives ``SEG_FEATURES``)."""
    w = max(2, int(width))
    return (w, w, 2 * w, 4 * w, 8 * w, w)


class SegmentationTerm:
    """``weight * DiceCE(segmenter(images), masks)`` with gradients to the images only.

    Build it with ``trained_on`` (a segmenter trained here on the real pairs) or ``from_saved`` (a segsynth
    segmenter folder, e.g. the ``augment`` model of the same split).

    Args:
        model: the segmenter (logits (B, K, *S) for images (B, C, *S) in the data's intensity range).
        weight: factor of the term in the generator loss.
        real: the augmented real pairs ``cotrain`` steps on (None: frozen).
        lr: Adam learning rate of the co-training steps.
        batch_size: real pairs per co-training step.
        seed: seeds the co-training draws.
    """

    def __init__(self, model: torch.nn.Module, weight: float, *, real: Any = None, lr: float = 1e-3,
                 batch_size: int = 8, seed: int = 0):
        if weight < 0:
            raise ConfigError(f"the segmentation term's weight must be >= 0, got {weight}")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.weight = float(weight)
        self.real = real
        self.batch_size = int(batch_size)
        self.opt = torch.optim.Adam(model.parameters(), lr=lr) if real is not None else None
        self.rng = torch_generator(derive_seed(seed, "seg-term-cotrain"))
        self.history: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def trained_on(cls, cases: Sequence[Case], num_classes: int, *, weight: float, steps: int = 200,
                   cotrain: bool = False, batch_size: int = 8, lr: float = 3e-3, seed: int = 0,
                   device: torch.device | str = "cpu", features: Sequence[int] = SEG_FEATURES,
                   patch_size: Sequence[int] | None = None) -> SegmentationTerm:
        """Train a small U-Net on the real pairs (classical ``combined`` augmentation) for ``steps`` steps."""
        from segsynth.data.transforms import classical_augmentation
        from segsynth.nets.segmenters import build_segmenter
        from segsynth.segment.sources import CaseSource
        from segsynth.segment.train import TrainConfig, train_segmenter

        cases = [c for c in cases if c.mask is not None]
        if not cases:
            raise DataError("the segmentation term needs labelled real cases to train its segmenter")
        dims = cases[0].spatial_dims
        real = CaseSource(cases, transform=classical_augmentation("combined", dims), patch_size=patch_size,
                          num_classes=num_classes)
        with torch.random.fork_rng(devices=[]):  # MONAI's weight initialisation draws from the global generator
            torch.manual_seed(derive_seed(seed, "seg-term-init"))
            model = build_segmenter("unet", dims, cases[0].in_channels, num_classes, features=tuple(features))
        t0 = time.perf_counter()
        cfg = TrainConfig(steps=int(steps), batch_size=batch_size, lr=lr, val_every=max(1, int(steps)),
                          progress=False, seed=derive_seed(seed, "seg-term"), patch_size=patch_size)
        result = train_segmenter(model, real, [], cfg, num_classes=num_classes, device=device)
        term = cls(result.model, weight, real=real if cotrain else None, lr=lr * 0.1, batch_size=batch_size,
                   seed=seed)
        term.history = {"steps": int(steps), "seconds": time.perf_counter() - t0, "cotrain": bool(cotrain),
                        "final_loss": result.history[-1]["loss"] if result.history else None}
        return term

    @classmethod
    def from_saved(cls, model_dir: str | Path, weight: float, device: torch.device | str = "cpu"
                   ) -> SegmentationTerm:
        from segsynth.segment.model_io import load_segmenter

        model, _ = load_segmenter(model_dir, device)
        return cls(model, weight)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Segmenter logits for images (B, C, *S), padded to the network's size divisor and cropped back."""
        xp, _ = _pad_to_divisor(images.to(self.device), int(getattr(self.model, "size_divisor", 1)))
        out = self.model(xp)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out[(slice(None), slice(None)) + tuple(slice(0, s) for s in images.shape[2:])]

    def loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Unweighted Dice + CE of the segmenter on ``images`` against ``masks`` (B, *S); differentiable in images."""
        return dice_ce_loss(self.logits(images).float(), masks.long().to(self.device))

    def cotrain_step(self) -> float | None:
        """One Adam step of the segmenter on augmented real pairs (no-op and None when frozen)."""
        if self.opt is None:
            return None
        params = list(self.model.parameters())
        for p in params:
            p.requires_grad_(True)
        self.model.train()
        try:
            x, y = self.real.draw(self.batch_size, self.rng)
            loss = self.loss(x, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        finally:
            self.model.eval()
            for p in params:
                p.requires_grad_(False)
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        """Segmenter weights, co-training optimiser and random state (a resumed run continues exactly)."""
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict() if self.opt is not None else {},
                "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.opt is not None and state.get("opt"):
            self.opt.load_state_dict(state["opt"])
        self.rng.set_state(state["rng"])

    def to(self, device: torch.device | str) -> SegmentationTerm:
        self.model.to(device)
        return self

"""GenSeg (Zhang et al. 2024, Nature Biomedical Engineering; arXiv 2308.14670), on CPU or GPU, 2D and 3D.

A Pix2Pix mask-to-image generator with searchable cells (``segsynth.nets.pix2pix``) turns augmented masks
(``segsynth.data.mask_augment``) into synthetic images; the segmenter trains on real and generated pairs, and
the generator's architecture follows the segmenter's validation loss. The three levels of the paper's
multi-level optimisation run inside segsynth's one training loop (``segsynth.segment.train``):

* **before the loop** (stage I alone, as the public code pre-trains Pix2Pix): ``pretrain_steps`` GAN updates of
  the generator weights W on the real pairs (LSGAN + lambda L1, lambda = 100);
* **each segmenter step** (stage II): the batch comes from a ``MixedSource`` of the real pairs and a
  ``GeneratedSource`` that draws augmented masks and renders them with the *current* generator;
* **the hook** (``GenSegHook.after_step``): every ``gen_every`` steps one more stage-I update of W, and every
  ``arch_every`` steps one stage-III update of alpha with the hypergradient of the validation loss
  through the segmenter's dependence on the generated images (``segsynth.generators.hypergradient``:
  DARTS one-step unrolling, finite differences by default, exact double backward on request).

The ``separate`` ablation (the paper's key comparison) is the same generator trained without segmentation
feedback: stage I only, for as many GAN updates as GenSeg's generator gets in total (pre-training plus the
updates inside the loop), then frozen and used to generate data for the segmenter.

After a GenSeg run the searched generator is derived (strongest operation per cell), briefly re-trained
(stage I, ``derive_steps``; the derived network computes something else than the mixture it came from) and
saved with its genotype; ``segsynth synthesize`` writes datasets from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from torch.func import functional_call

from segsynth.data.case import Case, DatasetInfo
from segsynth.data.mask_augment import MaskAugment
from segsynth.errors import ConfigError, DataError
from segsynth.generators.base import Method, MethodContext
from segsynth.generators.hypergradient import HYPERGRADIENT_MODES, UnrolledProblem, architecture_hypergradient
from segsynth.nets.pix2pix import PatchGANDiscriminator, Pix2PixGenerator, auto_disc_layers, auto_num_downs
from segsynth.segment.sources import CaseSource, MixedSource, collate, random_patch
from segsynth.segment.train import (
    StepState,
    TrainConfig,
    TrainResult,
    init_distributed_from_env,
    train_segmenter,
)
from segsynth.utils.config import load_state, save_module
from segsynth.utils.device import resolve_device
from segsynth.utils.files import atomic_dir, write_json
from segsynth.utils.seed import derive_seed, torch_generator

log = logging.getLogger(__name__)

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
    Coupling (stages II and III):
        synthetic_fraction: expected share of generated pairs in each segmenter batch (the public code uses
            one real and one generated batch of equal size: 0.5).
        gen_every: one GAN update of the generator every this many segmenter steps (0 = none in the loop).
        arch_every: one architecture update every this many segmenter steps.
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
        search: update alpha from the validation loss (False: alpha stays uniform, everything else as in
            GenSeg: the ``genseg_frozen`` ablation, which isolates what the architecture search contributes).
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
    synthetic_fraction: float = 0.5
    gen_every: int = 1
    arch_every: int = 2
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    arch_batch_size: int = 4
    hypergradient: str = "finite_difference"
    fd_eps: float = 1e-2
    unroll_generator: bool = False
    augment: dict[str, Any] = field(default_factory=dict)
    augment_real: bool = False
    search: bool = True
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
        for name in ("pretrain_steps", "gen_every", "derive_steps"):
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
                "gen_lr", "gen_batch_size", "gan_augment", "augment")
        return {k: getattr(self, k) for k in keys}


# ================================================================================================ helpers

def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _average_grads(params: Sequence[torch.Tensor]) -> None:
    """Average gradients over DDP ranks (the generator is not wrapped in DDP; the hook keeps ranks equal)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


@contextlib.contextmanager
def _frozen(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Temporarily switch off requires_grad (no gradient is computed or stored for them)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def _as_mask_tensor(mask: Any) -> tuple[torch.Tensor, str | None]:
    if isinstance(mask, Case):
        if mask.mask is None:
            raise DataError("case has no mask to generate an image from", mask.case_id)
        return torch.as_tensor(mask.mask, dtype=torch.long), mask.case_id
    return torch.as_tensor(np.asarray(mask), dtype=torch.long), None


def _intensity_range(cases: Sequence[Case]) -> list[list[float]]:
    """Per-channel [min, max] of the real images: the generator's tanh output is mapped onto it."""
    c = cases[0].in_channels
    lo = [min(float(k.image[i].min()) for k in cases) for i in range(c)]
    hi = [max(float(k.image[i].max()) for k in cases) for i in range(c)]
    hi = [h if h > lo_ + 1e-6 else lo_ + 1.0 for lo_, h in zip(lo, hi)]
    return [lo, hi]


# ================================================================================================ masks

class AugmentedMasks:
    """Draws masks for generation: a random real mask, augmented with a ``MaskAugment`` draw (or as it is)."""

    def __init__(self, masks: Sequence[Any], num_classes: int, augment: MaskAugment | None = None,
                 ids: Sequence[str] | None = None):
        tensors, found = [], []
        for i, m in enumerate(masks):
            t, cid = _as_mask_tensor(m)
            tensors.append(t)
            found.append(cid if cid is not None else f"mask{i}")
        if not tensors:
            raise DataError("no masks to generate images from")
        self.masks = tensors
        self.ids = list(ids) if ids is not None else found
        self.num_classes = int(num_classes)
        self.augment = augment
        for t, cid in zip(self.masks, self.ids):
            if int(t.min()) < 0 or int(t.max()) >= self.num_classes:
                raise DataError(f"mask ids {sorted(set(t.unique().tolist()))} are not within the generator's "
                                f"{self.num_classes} classes", cid)

    def __len__(self) -> int:
        return len(self.masks)

    def draw_one(self, generator: torch.Generator, index: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        if index is None:
            index = int(torch.randint(len(self.masks), (), generator=generator))
        m = self.masks[index]
        record: dict[str, Any] = {"source_mask": self.ids[index]}
        if self.augment is not None:
            params = self.augment.draw(m.shape, generator)
            m = self.augment.apply_mask(m, params, self.num_classes)
            record["augment"] = params
        return m, record

    def draw(self, n: int, generator: torch.Generator) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        out = [self.draw_one(generator) for _ in range(n)]
        return [m for m, _ in out], [r for _, r in out]


# ================================================================================================ generator

class GenSegGenerator:
    """GenSeg's mask-to-image generator (``SyntheticGenerator`` protocol): Pix2Pix with searchable cells.

    Build it with options, then ``fit`` (stage I on real pairs) or let ``GenSegMethod`` train it end to end;
    ``sample`` renders augmented (or given) masks; ``save`` / ``load`` round-trip it (safetensors + JSON, the
    genotype of a derived network included).

    Args:
        features, max_features, num_downs, disc_features, disc_layers, dropout: network sizes (see
            ``GenSegOptions``).
        lambda_l1: L1 weight of the Pix2Pix loss.
        gen_lr: Adam learning rate of ``fit``.
        gen_batch_size: pairs per GAN update in ``fit``.
        gan_augment: augment real pairs (image and mask alike) while fitting.
        augment: ``MaskAugment`` options for the masks ``sample`` draws.
        fit_steps: GAN updates of ``fit`` (default when ``fit`` gets no ``steps``).
    """

    name: ClassVar[str] = "genseg"

    def __init__(self, *, features: int = 32, max_features: int = 256, num_downs: int | None = None,
                 disc_features: int = 64, disc_layers: int = 3, dropout: float = 0.5, lambda_l1: float = 100.0,
                 gen_lr: float = 2e-4, gen_batch_size: int = 4, gan_augment: bool = True,
                 augment: dict[str, Any] | None = None, fit_steps: int = 300):
        self.options: dict[str, Any] = {
            "features": int(features), "max_features": int(max_features), "num_downs": num_downs,
            "disc_features": int(disc_features), "disc_layers": int(disc_layers), "dropout": float(dropout),
            "lambda_l1": float(lambda_l1), "gen_lr": float(gen_lr), "gen_batch_size": int(gen_batch_size),
            "gan_augment": bool(gan_augment), "augment": dict(augment or {}), "fit_steps": int(fit_steps)}
        self.mask_augment = MaskAugment.from_options(self.options["augment"])
        self.net: Pix2PixGenerator | None = None
        self.disc: PatchGANDiscriminator | None = None
        self.num_classes: int | None = None
        self.image_channels: int | None = None
        self.spatial_shape: list[int] | None = None
        self.intensity_range: list[list[float]] | None = None
        self.info: DatasetInfo | None = None
        self.source: AugmentedMasks | None = None
        self.model_dir: str | None = None
        self.search_record: dict[str, Any] | None = None
        self.history: dict[str, Any] = {}
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------------------------------ building

    @property
    def built(self) -> bool:
        return self.net is not None

    def build(self, spatial_shape: Sequence[int], num_classes: int, image_channels: int,
              intensity_range: Sequence[Sequence[float]], *, seed: int = 0, device: torch.device | str = "cpu",
              info: DatasetInfo | None = None) -> GenSegGenerator:
        """Create the (searchable) generator and the discriminator for this data."""
        if num_classes < 2:
            raise ConfigError(f"GenSeg needs at least 2 classes (background + 1), got {num_classes}")
        o = self.options
        nd = len(spatial_shape)
        num_downs = o["num_downs"] or auto_num_downs(spatial_shape)
        self.net = Pix2PixGenerator(spatial_dims=nd, in_channels=num_classes, out_channels=image_channels,
                                    features=o["features"], max_features=o["max_features"], num_downs=num_downs,
                                    dropout=o["dropout"], seed=derive_seed(seed, "genseg-generator"))
        self.disc = PatchGANDiscriminator(spatial_dims=nd, in_channels=num_classes + image_channels,
                                          features=o["disc_features"],
                                          num_layers=auto_disc_layers(spatial_shape, o["disc_layers"]),
                                          seed=derive_seed(seed, "genseg-discriminator"))
        self.num_classes = int(num_classes)
        self.image_channels = int(image_channels)
        self.spatial_shape = [int(s) for s in spatial_shape]
        self.intensity_range = [[float(v) for v in intensity_range[0]], [float(v) for v in intensity_range[1]]]
        self.info = info
        return self.to(device)

    def build_for(self, cases: Sequence[Case], num_classes: int | None = None, *, seed: int = 0,
                  device: torch.device | str = "cpu", info: DatasetInfo | None = None) -> GenSegGenerator:
        """Build for these real pairs: sizes, classes and the intensity range come from them."""
        cases = [c for c in cases if c.mask is not None]
        if not cases:
            raise DataError("GenSeg needs labelled cases to learn the mask-to-image mapping")
        k = num_classes or int(max(int(c.mask.max()) for c in cases)) + 1
        shape = [max(c.spatial_shape[d] for c in cases) for d in range(cases[0].spatial_dims)]
        return self.build(shape, k, cases[0].in_channels, _intensity_range(cases), seed=seed, device=device,
                          info=info)

    def to(self, device: torch.device | str) -> GenSegGenerator:
        self.device = torch.device(device)
        if self.net is not None:
            self.net.to(self.device)
        if self.disc is not None:
            self.disc.to(self.device)
        return self

    def _require(self) -> Pix2PixGenerator:
        if self.net is None:
            raise ConfigError("the GenSeg generator is not built yet (call fit, build or load first)")
        return self.net

    # ------------------------------------------------------------------------------------------ mapping

    def _range(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.intensity_range is not None
        shape = (1, -1) + (1,) * (like.ndim - 2)
        lo = torch.tensor(self.intensity_range[0], device=like.device, dtype=like.dtype).view(shape)
        hi = torch.tensor(self.intensity_range[1], device=like.device, dtype=like.dtype).view(shape)
        return lo, hi

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the data's intensity range -> the generator's [-1, 1]."""
        lo, hi = self._range(images)
        return ((images - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)

    def from_unit(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = self._range(t)
        return lo + (t + 1.0) * 0.5 * (hi - lo)

    def encode(self, masks: torch.Tensor) -> torch.Tensor:
        """Label maps (B, *S) -> one-hot (B, K, *S) in the generator's dtype and device."""
        net = self._require()
        dtype = next(net.parameters()).dtype
        return F.one_hot(masks.long().to(self.device), self.num_classes).movedim(-1, 1).to(dtype)

    def generate(self, masks: torch.Tensor, generator: torch.Generator | None = None,
                 weights: Params | None = None, unit: bool = False) -> torch.Tensor:
        """Images (B, C, *S) for label maps (B, *S), with the autograd graph (wrap in no_grad to sample).

        Args:
            masks: label maps with ids in 0..K-1.
            generator: draws the dropout masks (None: deterministic, dropout off).
            weights: generator weights by name to use instead of the current ones (hypergradients).
            unit: return the raw [-1, 1] output instead of the data's intensity range.
        """
        net = self._require()
        onehot = self.encode(masks)
        if weights is None:
            t = net(onehot, generator)
        else:
            t = functional_call(net, weights, (onehot,), {"generator": generator})
        return t if unit else self.from_unit(t)

    # ------------------------------------------------------------------------------------------ stage I

    def fit(self, train: list[Case], *, val: list[Case] | None = None, unlabelled: list[Case] | None = None,
            device: torch.device | str = "cpu", seed: int = 0, steps: int | None = None,
            patch_size: Sequence[int] | None = None, progress: bool = False) -> dict[str, Any]:
        """Stage I alone: train generator weights (not alpha) on the real pairs with LSGAN + lambda L1.

        Builds the networks first when needed. ``val`` and ``unlabelled`` are not used (Pix2Pix needs pairs).
        Returns training statistics (final losses, seconds, steps).
        """
        device = resolve_device(device)
        if not self.built:
            self.build_for(train, seed=seed, device=device)
        else:
            self.to(device)
        self.set_source_masks(train)
        steps = self.options["fit_steps"] if steps is None else int(steps)
        gan = GanTrainer(self)
        source = self.gan_source(train, patch_size)
        g = torch_generator(derive_seed(seed, "genseg-fit", _rank()))
        t0 = time.perf_counter()
        last: dict[str, float] = {}
        for step in range(steps):
            x, y = source.draw(self.options["gen_batch_size"], g)
            last = gan.step(x, y, g)
            if progress and (step + 1) % max(1, steps // 10) == 0:
                log.info("genseg GAN step %d/%d: %s", step + 1, steps,
                         ", ".join(f"{k} {v:.3f}" for k, v in last.items()))
        stats = {"steps": steps, "seconds": time.perf_counter() - t0, **last}
        self.history.setdefault("fit", []).append(stats)
        return stats

    def gan_source(self, train: Sequence[Case], patch_size: Sequence[int] | None = None) -> CaseSource:
        """The real pairs the GAN learns from (spatially augmented when ``gan_augment``)."""
        aug = self.mask_augment if self.options["gan_augment"] else None
        return CaseSource([c for c in train if c.mask is not None], transform=aug, patch_size=patch_size,
                          num_classes=self.num_classes)

    # ------------------------------------------------------------------------------------------ sampling

    def set_source_masks(self, masks: Sequence[Any], augment: bool = True) -> None:
        """The masks ``sample`` draws from when it is given none (real training masks, usually)."""
        self.source = AugmentedMasks(masks, self._num_classes(), self.mask_augment if augment else None)

    def _num_classes(self) -> int:
        if self.num_classes is None:
            raise ConfigError("the GenSeg generator is not built yet (call fit, build or load first)")
        return self.num_classes

    @torch.no_grad()
    def sample_pair(self, seed: int, mask: Any | None = None, case_id: str | None = None,
                    source_id: str | None = None) -> Case:
        """One synthetic pair, reproducible from ``seed`` (and the mask, when given).

        Without ``mask`` a source mask is drawn and augmented (``set_source_masks``); with one, the image is
        rendered for that mask as it is. The seed also draws the generator's dropout.
        """
        net = self._require()
        g = torch_generator(seed)
        if mask is None:
            if self.source is None:
                raise ConfigError("no source masks: pass masks or call set_source_masks / fit first")
            m, record = self.source.draw_one(g)
        else:
            m, cid = _as_mask_tensor(mask)
            if int(m.min()) < 0 or int(m.max()) >= self._num_classes():
                raise DataError(f"mask ids {sorted(set(m.unique().tolist()))} are not within the generator's "
                                f"{self.num_classes} classes", source_id or cid)
            record = {"source_mask": source_id or cid}
        was = net.training
        net.eval()
        image = self.generate(m[None], generator=g if net.dropout > 0 else None)[0]
        net.train(was)
        meta = {"method": self.name, "seed": int(seed), **record, "model": self.model_dir,
                "genotype": net.current_genotype(), "synthetic": True}
        return Case(case_id or f"genseg_{seed}", image.float().cpu().numpy().astype(np.float32),
                    m.cpu().numpy().astype(np.int64), meta)

    def sample(self, n: int, *, generator: torch.Generator, masks: list[Any] | None = None) -> list[Case]:
        """``n`` new pairs from augmented source masks, or one per given mask; provenance in ``meta``."""
        if masks is not None:
            out = []
            for i, m in enumerate(masks):
                seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
                sid = m.case_id if isinstance(m, Case) else f"mask{i}"
                out.append(self.sample_pair(seed, m, case_id=f"genseg_{i:05d}", source_id=sid))
            return out
        seeds = [int(torch.randint(0, 2**31 - 1, (), generator=generator)) for _ in range(n)]
        return [self.sample_pair(s, case_id=f"genseg_{i:05d}") for i, s in enumerate(seeds)]

    # ------------------------------------------------------------------------------------------ derive

    def derive(self) -> dict[str, list[str]]:
        """Replace the searchable generator by its discrete architecture; returns the genotype."""
        net = self._require()
        if net.searchable:
            self.search_record = net.arch_summary()
            self.net = net.derive()
        return self.net.current_genotype()

    # ------------------------------------------------------------------------------------------ save / load

    def config(self) -> dict[str, Any]:
        net = self._require()
        return {"format": FORMAT, "options": self.options, "num_classes": self.num_classes,
                "image_channels": self.image_channels, "spatial_dims": net.spatial_dims,
                "spatial_shape": self.spatial_shape, "intensity_range": self.intensity_range,
                "info": self.info.to_json() if self.info is not None else None,
                "architecture": net.arch_summary(), "search": self.search_record, "history": self.history}

    def save(self, directory: str | Path) -> None:
        """Write generator (+ discriminator) weights and configs; the folder appears whole."""
        net = self._require()
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            save_module(net, tmp, net.config(), name="generator")
            if self.disc is not None:
                save_module(self.disc, tmp, self.disc.config(), name="discriminator")
            write_json(tmp / GENSEG_CONFIG, self.config())
        self.model_dir = str(directory.resolve())

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> GenSegGenerator:
        directory = Path(directory)
        cpath = directory / GENSEG_CONFIG
        if not cpath.exists():
            raise DataError(f"no {GENSEG_CONFIG} here: not a GenSeg generator folder", directory)
        try:
            cfg = json.loads(cpath.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"unreadable {GENSEG_CONFIG}: {e}", cpath) from e
        if cfg.get("format") != FORMAT:
            raise DataError(f"unknown format {cfg.get('format')!r} (expected {FORMAT})", cpath)
        opts = dict(cfg["options"])
        self = cls(**opts)
        state, net_cfg = load_state(directory, "generator")
        net = Pix2PixGenerator(**net_cfg)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise DataError(f"generator weights do not fit its configuration: {e}", directory) from e
        self.net = net
        if (directory / "discriminator.safetensors").exists():
            dstate, dcfg = load_state(directory, "discriminator")
            self.disc = PatchGANDiscriminator(**dcfg)
            self.disc.load_state_dict(dstate)
        self.num_classes = int(cfg["num_classes"])
        self.image_channels = int(cfg["image_channels"])
        self.spatial_shape = cfg.get("spatial_shape")
        self.intensity_range = cfg["intensity_range"]
        self.info = DatasetInfo.from_json(cfg["info"]) if cfg.get("info") else None
        self.search_record = cfg.get("search")
        self.history = cfg.get("history") or {}
        self.model_dir = str(directory.resolve())
        return self.to(resolve_device(device))


# ================================================================================================ stage I

class GanTrainer:
    """Pix2Pix updates of the generator weights W (never alpha) and the PatchGAN: LSGAN + lambda L1."""

    def __init__(self, gen: GenSegGenerator, lr: float | None = None, betas: tuple[float, float] = (0.5, 0.999)):
        net = gen._require()
        if gen.disc is None:
            raise ConfigError("GAN training needs the discriminator (this generator was saved without one)")
        self.gen = gen
        lr = gen.options["gen_lr"] if lr is None else lr
        self.opt_g = torch.optim.Adam(net.weight_parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(gen.disc.parameters(), lr=lr, betas=betas)
        self.adv = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
        self.lambda_l1 = gen.options["lambda_l1"]

    def generator_loss(self, onehot: torch.Tensor, target: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """LSGAN generator term + lambda L1 for already generated ``fake`` (all in [-1, 1])."""
        assert self.gen.disc is not None
        adv = self.adv(self.gen.disc(torch.cat([onehot, fake], 1)), target_is_real=True, for_discriminator=False)
        l1 = (fake - target).abs().mean()
        return adv + self.lambda_l1 * l1, {"gan_g": float(adv.detach()), "gan_l1": float(l1.detach())}

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """One discriminator and one generator update on real pairs (x images, y label maps, CPU or device)."""
        gen, net, disc = self.gen, self.gen._require(), self.gen.disc
        assert disc is not None
        net.train()
        disc.train()
        onehot = gen.encode(y)
        target = gen.to_unit(x.to(gen.device, onehot.dtype))
        with _frozen(net.arch_parameters()):
            fake = net(onehot, generator if net.dropout > 0 else None)
            # discriminator: real pairs -> 1, generated pairs -> 0
            pred_real = disc(torch.cat([onehot, target], 1))
            pred_fake = disc(torch.cat([onehot, fake.detach()], 1))
            loss_d = 0.5 * (self.adv(pred_real, target_is_real=True, for_discriminator=True)
                            + self.adv(pred_fake, target_is_real=False, for_discriminator=True))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            _average_grads(list(disc.parameters()))
            self.opt_d.step()
            # generator: fool the (updated) discriminator and stay close to the real image
            with _frozen(list(disc.parameters())):
                loss_g, parts = self.generator_loss(onehot, target, fake)
                self.opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
            _average_grads(net.weight_parameters())
            self.opt_g.step()
        return {"gan_d": float(loss_d.detach()), **parts}

    def state_dict(self) -> dict[str, Any]:
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


# ================================================================================================ stage II

class GeneratedSource:
    """A ``PairSource`` of generated pairs: augmented real masks rendered by the generator as it is now.

    Images are generated without a graph: the segmenter's own update needs none, and the generator weights
    learn only from the GAN loss (stage I). Stage III recomputes the images of its own batch with their
    graph to alpha inside the hook, which is where the public code's detached image lost the signal.
    """

    def __init__(self, gen: GenSegGenerator, masks: AugmentedMasks, patch_size: Sequence[int] | None = None,
                 foreground_fraction: float = 1 / 3):
        self.gen = gen
        self.masks = masks
        self.patch_size = tuple(patch_size) if patch_size else None
        self.foreground_fraction = foreground_fraction

    @torch.no_grad()
    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        masks, _ = self.masks.draw(batch_size, generator)
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        net = self.gen._require()
        g = torch_generator(seed) if net.dropout > 0 else None
        if len({tuple(m.shape) for m in masks}) == 1:
            images = list(self.gen.generate(torch.stack(masks), generator=g).float().cpu())
        else:
            images = [self.gen.generate(m[None], generator=g)[0].float().cpu() for m in masks]
        xs, ys = [], []
        for x, y in zip(images, masks):
            if self.patch_size is not None:
                x, y = random_patch(x, y, self.patch_size, generator, self.foreground_fraction)
            xs.append(x)
            ys.append(y)
        return collate(xs, ys)


# ================================================================================================ stage III

class GenSegHook:
    """Couples stages I and III to the segmenter's training loop (``train_segmenter(..., hooks=[hook])``).

    After segmenter step t: a GAN update of W when ``t % gen_every == 0``; an architecture update of alpha
    with the unrolled hypergradient when ``t % arch_every == 0``. ``state_dict`` holds generator,
    discriminator, optimisers and random state, so a resumed run continues exactly.
    """

    def __init__(self, gen: GenSegGenerator, real: CaseSource, masks: AugmentedMasks, val: CaseSource,
                 opts: GenSegOptions, seed: int = 0, feedback: bool = True, gan_real: CaseSource | None = None):
        self.gen = gen
        self.real = real
        self.gan_real = gan_real if gan_real is not None else real
        self.masks = masks
        self.val = val
        self.opts = opts
        self.feedback = feedback
        self.gan = GanTrainer(gen)
        net = gen._require()
        self.arch_opt = (torch.optim.Adam(net.arch_parameters(), lr=opts.arch_lr, betas=(0.5, 0.999),
                                          weight_decay=opts.arch_weight_decay)
                         if feedback and opts.search and net.searchable else None)
        self.rng = torch_generator(derive_seed(seed, "genseg-hook", _rank()))

    def after_step(self, state: StepState) -> dict[str, float]:
        rec: dict[str, float] = {}
        if self.opts.gen_every and state.step % self.opts.gen_every == 0:
            x, y = self.gan_real.draw(self.opts.gen_batch_size, self.rng)
            rec.update(self.gan.step(x, y, self.rng))
        if self.arch_opt is not None and state.step % self.opts.arch_every == 0 and state.lr > 0:
            rec.update(self.arch_step(state.model, state.lr, state.device))
        return rec

    def problem(self, segmenter: torch.nn.Module, lr: float, device: torch.device) -> UnrolledProblem:
        """Draw the batches of one hyper-step and wrap them as an ``UnrolledProblem``."""
        gen, net, opts = self.gen, self.gen._require(), self.opts
        b = opts.arch_batch_size
        masks, _ = self.masks.draw(b, self.rng)
        syn_y = collate([torch.zeros(1, *m.shape) for m in masks], masks)[1].to(device)
        real_x, real_y = (t.to(device) for t in self.real.draw(b, self.rng))
        val_x, val_y = (t.to(device) for t in self.val.draw(b, self.rng))
        drop_seed = int(torch.randint(0, 2**31 - 1, (), generator=self.rng))
        use_drop = net.dropout > 0

        def synthesize(weights: Params | None) -> torch.Tensor:
            g = torch_generator(drop_seed) if use_drop else None
            return gen.generate(syn_y, generator=g, weights=weights)

        generator_loss = None
        weights: dict[str, torch.nn.Parameter] = {}
        if opts.unroll_generator:
            gx, gy = self.gan_real.draw(opts.gen_batch_size, self.rng)
            onehot = gen.encode(gy)
            target = gen.to_unit(gx.to(gen.device, onehot.dtype))
            gan_seed = int(torch.randint(0, 2**31 - 1, (), generator=self.rng))
            weights = dict(net.named_weight_parameters())

            def generator_loss(w: Params | None) -> torch.Tensor:
                g = torch_generator(gan_seed) if use_drop else None
                fake = net(onehot, g) if w is None else functional_call(net, w, (onehot,), {"generator": g})
                return self.gan.generator_loss(onehot, target, fake)[0]

        return UnrolledProblem(segmenter=segmenter, synthesize=synthesize, syn_y=syn_y, val_x=val_x, val_y=val_y,
                               xi=float(lr), real_x=real_x, real_y=real_y, syn_weight=opts.synthetic_fraction,
                               generator_loss=generator_loss, generator_weights=weights, eta=opts.gen_lr)

    def arch_step(self, segmenter: torch.nn.Module, lr: float, device: torch.device) -> dict[str, float]:
        """One stage-III update of alpha; returns the unrolled validation loss and the gradient norm."""
        assert self.arch_opt is not None
        net = self.gen._require()
        arch = net.arch_parameters()
        if self.gen.disc is not None:
            self.gen.disc.eval()
        hg = architecture_hypergradient(self.problem(segmenter, lr, device), arch, mode=self.opts.hypergradient,
                                        eps=self.opts.fd_eps)
        self.arch_opt.zero_grad(set_to_none=True)
        for a, g in zip(arch, hg.grads):
            a.grad = g.to(a.dtype)
        _average_grads(arch)
        self.arch_opt.step()
        return {"arch_val_loss": hg.val_loss, "arch_grad_norm": hg.norm()}

    def state_dict(self) -> dict[str, Any]:
        gen = self.gen
        assert gen.net is not None and gen.disc is not None
        return {"net": gen.net.state_dict(), "disc": gen.disc.state_dict(), "gan": self.gan.state_dict(),
                "arch_opt": self.arch_opt.state_dict() if self.arch_opt is not None else {},
                "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        gen = self.gen
        assert gen.net is not None and gen.disc is not None
        gen.net.load_state_dict(state["net"])
        gen.disc.load_state_dict(state["disc"])
        self.gan.load_state_dict(state["gan"])
        if self.arch_opt is not None and state.get("arch_opt"):
            self.arch_opt.load_state_dict(state["arch_opt"])
        self.rng.set_state(state["rng"])


# ================================================================================================ methods

def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_genseg(ctx: MethodContext, opts: GenSegOptions, feedback: bool = True
                 ) -> tuple[TrainResult, GenSegGenerator]:
    """Train a GenSeg (``feedback=True``) or "separate" generator and the segmenter; returns both.

    With ``ctx.workdir`` the pre-trained generator, the training checkpoints and the final generator are kept
    there, and a killed run resumes.
    """
    cfg = ctx.train_config or TrainConfig(seed=ctx.seed)
    k = ctx.info.num_classes
    device = resolve_device(ctx.device)
    init_distributed_from_env(device)  # under torchrun: ranks agree on the GAN updates from the start
    patch = cfg.patch_size
    train = [c for c in ctx.train if c.mask is not None]
    if not train:
        raise DataError("GenSeg needs labelled training cases")
    in_loop_gan = (cfg.steps // opts.gen_every) if opts.gen_every else 0
    # "separate" gets as many GAN updates as GenSeg's generator, all before the segmenter starts
    pre_steps = opts.pretrain_steps + (0 if feedback else in_loop_gan)
    gen = GenSegGenerator(**opts.generator_kwargs(), fit_steps=pre_steps)
    gen.build_for(train, k, seed=ctx.seed, device=device, info=ctx.info)
    key = _fingerprint(asdict(opts), pre_steps, ctx.seed, [c.case_id for c in train], patch, str(gen.spatial_shape))
    pre_dir = ctx.workdir / "generator_pretrained" if ctx.workdir else None
    reused = False
    if pre_dir is not None and (pre_dir / GENSEG_CONFIG).exists():
        old = GenSegGenerator.load(pre_dir, device)
        if old.history.get("fit_key") == key:
            gen, reused = old, True
            gen.info = ctx.info
    if not reused:
        log.info("genseg: %d GAN steps of the generator (%s) before the segmenter", pre_steps,
                 "pre-training" if feedback else "separate training")
        gen.fit(train, device=device, seed=ctx.seed, steps=pre_steps, patch_size=patch, progress=cfg.progress)
        gen.history["fit_key"] = key
        if pre_dir is not None and _rank() == 0:
            gen.save(pre_dir)
    gen.set_source_masks(train)
    assert gen.source is not None

    real_aug = None
    if opts.augment_real:
        from segsynth.data.transforms import classical_augmentation

        real_aug = classical_augmentation("combined", ctx.info.spatial_dims)
    real = CaseSource(train, transform=real_aug, patch_size=patch, num_classes=k)
    synth = GeneratedSource(gen, gen.source, patch_size=patch)
    source = MixedSource([(real, 1.0 - opts.synthetic_fraction), (synth, opts.synthetic_fraction)])
    hooks: list[Any] = []
    if feedback:
        val_cases = ctx.val if ctx.val else train
        if not ctx.val:
            log.warning("genseg: no validation cases; the architecture follows the training loss instead")
        hooks.append(GenSegHook(gen, real, gen.source, CaseSource(val_cases, patch_size=patch, num_classes=k),
                                opts, seed=ctx.seed, gan_real=gen.gan_source(train, patch)))
    model = ctx.build_segmenter()
    ckpt = ctx.workdir / "checkpoint" if ctx.workdir else None
    result = train_segmenter(model, source, ctx.val, cfg, num_classes=k, device=device,
                             checkpoint_dir=ckpt, hooks=hooks)
    net = gen._require()
    if feedback and opts.search and net.searchable:
        gen.history["arch"] = net.arch_summary()
        log.info("genseg: searched architecture %s", net.arch_summary())
    if feedback and opts.save_search and ctx.workdir is not None and _rank() == 0:
        gen.save(ctx.workdir / "generator_search")
    if opts.save_generator:
        if feedback:
            gen.derive()
            if opts.derive_steps:
                stats = gen.fit(train, device=device, seed=derive_seed(ctx.seed, "derive"), steps=opts.derive_steps,
                                patch_size=patch)
                gen.history["derive_fit"] = stats
        if ctx.workdir is not None and _rank() == 0:
            gen.save(ctx.workdir / "generator")
    return result, gen


class GenSegMethod(Method):
    """GenSeg: a searchable Pix2Pix generator trained end to end with the segmenter (multi-level optimisation)."""

    name: ClassVar[str] = "genseg"
    description: ClassVar[str] = ("GenSeg: searchable Pix2Pix renders augmented masks; its architecture follows "
                                  "the segmenter's validation loss (end-to-end multi-level optimisation)")
    feedback: ClassVar[bool] = True

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.opts = GenSegOptions.from_dict(options)

    def run(self, ctx: MethodContext) -> TrainResult:
        result, _ = train_genseg(ctx, self.opts, feedback=self.feedback)
        return result


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


class GenSegFrozenMethod(GenSegMethod):
    """GenSeg's search ablation: everything as in ``genseg`` (GAN updates in the loop, the same mixture of real
    and generated pairs, derivation at the end) except that alpha is never updated: the cells stay uniform
    mixtures of their candidate operations."""

    name: ClassVar[str] = "genseg_frozen"
    description: ClassVar[str] = ("GenSeg ablation: as genseg, but the architecture weights alpha stay uniform "
                                  "(no hypergradient updates)")

    def __init__(self, **options: Any):
        super().__init__(**{"search": False, **options})

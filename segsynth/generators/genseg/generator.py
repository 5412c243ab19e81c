"""GenSeg's mask-to-image generator: Pix2Pix with searchable cells (build, fit = stage I alone, sample, save/load)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from segsynth.data.case import Case, DatasetInfo
from segsynth.data.mask_augment import MaskAugment
from segsynth.errors import ConfigError, DataError
from segsynth.generators.fit_loop import FitLoop
from segsynth.generators.genseg.gan import GanTrainer
from segsynth.generators.genseg.helpers import rank
from segsynth.generators.genseg.options import FORMAT, GENSEG_CONFIG, Params
from segsynth.generators.genseg.sources import AugmentedMasks, as_mask_tensor
from segsynth.generators.seg_term import SegmentationTerm, seg_term_features
from segsynth.nets.pix2pix import PatchGANDiscriminator, Pix2PixGenerator, auto_disc_layers, auto_num_downs
from segsynth.segment.sources import CaseSource
from segsynth.utils.config import load_module_state, load_state, save_module
from segsynth.utils.device import resolve_device
from segsynth.utils.files import atomic_dir, write_json
from segsynth.utils.precision import autocast
from segsynth.utils.seed import derive_seed, torch_generator

log = logging.getLogger(__name__)


def _intensity_range(cases: Sequence[Case]) -> list[list[float]]:
    """Per-channel [min, max] of the real images: the generator's tanh output is mapped onto it."""
    c = cases[0].in_channels
    lo = [min(float(k.image[i].min()) for k in cases) for i in range(c)]
    hi = [max(float(k.image[i].max()) for k in cases) for i in range(c)]
    hi = [h if h > lo_ + 1e-6 else lo_ + 1.0 for lo_, h in zip(lo, hi)]
    return [lo, hi]


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
        seg_weight, seg_steps, seg_cotrain: the segmentation term of the generator loss (``GenSegOptions``);
            ``fit`` trains its U-Net on the real pairs first (``seg_term``; not saved with the generator).
    """

    name: ClassVar[str] = "genseg"

    def __init__(self, *, features: int = 32, max_features: int = 256, num_downs: int | None = None,
                 disc_features: int = 64, disc_layers: int = 3, dropout: float = 0.5, lambda_l1: float = 100.0,
                 gen_lr: float = 2e-4, gen_batch_size: int = 4, gan_augment: bool = True,
                 augment: dict[str, Any] | None = None, fit_steps: int = 300, seg_weight: float = 0.0,
                 seg_steps: int = 200, seg_cotrain: bool = False):
        self.options: dict[str, Any] = {
            "features": int(features), "max_features": int(max_features), "num_downs": num_downs,
            "disc_features": int(disc_features), "disc_layers": int(disc_layers), "dropout": float(dropout),
            "lambda_l1": float(lambda_l1), "gen_lr": float(gen_lr), "gen_batch_size": int(gen_batch_size),
            "gan_augment": bool(gan_augment), "augment": dict(augment or {}), "fit_steps": int(fit_steps),
            "seg_weight": float(seg_weight), "seg_steps": int(seg_steps), "seg_cotrain": bool(seg_cotrain)}
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
        self.seg_term: SegmentationTerm | None = None
        #: autocast dtype of GAN steps and of rendering (``segsynth.utils.precision``); None = fp32. A run-time
        #: choice (``train_genseg`` takes it from the segmenter's ``TrainConfig.precision``), never saved.
        self.precision: torch.dtype | None = None

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

    def check_crop(self, size: Sequence[int]) -> None:
        """Refuse GAN crops (``gan_patch``) too small for the built networks: the generator's bottleneck must
        keep 2 voxels per axis (an instance norm of one voxel fails) and the PatchGAN its layers."""
        net, disc = self.require_net(), self.disc
        if len(size) != net.spatial_dims:
            raise ConfigError(f"genseg gan_patch {list(size)} does not have {net.spatial_dims} dimensions")
        need = max(2 * net.size_divisor, 2 ** (disc.num_layers + 2))
        if any(int(v) < need for v in size):
            raise ConfigError(f"genseg gan_patch {list(size)} is too small: each of the {net.spatial_dims} axes "
                              f"needs at least {need} voxels (generator: {net.size_divisor} per bottleneck voxel, "
                              f"sized for images of {self.spatial_shape}; discriminator: {disc.num_layers} layers)")

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

    def require_net(self) -> Pix2PixGenerator:
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
        net = self.require_net()
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
        net = self.require_net()
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
        self.ensure_seg_term(train, seed=seed, patch_size=patch_size)
        steps = self.options["fit_steps"] if steps is None else int(steps)
        gan = GanTrainer(self)
        source = self.gan_source(train, patch_size)
        g = torch_generator(derive_seed(seed, "genseg-fit", rank()))
        loop = FitLoop("genseg GAN", steps, device=device)  # progress: a log line every tenth, not a bar
        last: dict[str, float] = {}
        for step in loop:
            x, y = source.draw(self.options["gen_batch_size"], g)
            last = gan.step(x, y, g)
            if progress and (step + 1) % max(1, steps // 10) == 0:
                log.info("genseg GAN step %d/%d: %s", step + 1, steps,
                         ", ".join(f"{k} {v:.3f}" for k, v in last.items()))
            loop.done(step)
        stats = {"steps": steps, "seconds": loop.seconds, **last}
        self.history.setdefault("fit", []).append(stats)
        return stats

    def ensure_seg_term(self, train: Sequence[Case], *, seed: int = 0,
                        patch_size: Sequence[int] | None = None) -> SegmentationTerm | None:
        """With ``seg_weight`` > 0 and no term yet: train the term's U-Net on these real pairs (else no-op)."""
        o = self.options
        if o.get("seg_weight", 0.0) > 0 and self.seg_term is None:
            self.seg_term = SegmentationTerm.trained_on(
                train, self._num_classes(), weight=o["seg_weight"], steps=o["seg_steps"], cotrain=o["seg_cotrain"],
                batch_size=max(2, 2 * o["gen_batch_size"]), seed=derive_seed(seed, "genseg-seg-term"),
                device=self.device, patch_size=patch_size, features=seg_term_features(o["features"]))
            self.history["seg_term"] = self.seg_term.history
        return self.seg_term

    def gan_source(self, train: Sequence[Case], patch_size: Sequence[int] | None = None) -> CaseSource:
        """The real pairs the GAN learns from (spatially augmented when ``gan_augment``)."""
        aug = self.mask_augment if self.options["gan_augment"] else None
        return CaseSource([c for c in train if c.mask is not None], transform=aug, patch_size=patch_size,
                          num_classes=self.num_classes)

    # ------------------------------------------------------------------------------------------ sampling

    def set_source_masks(self, masks: Sequence[Any], augment: bool = True, ids: Sequence[str] | None = None) -> None:
        """The masks ``sample`` draws from when it is given none (real training masks, usually; ``ids`` name
        them in each pair's provenance when they are arrays)."""
        self.source = AugmentedMasks(masks, self._num_classes(), self.mask_augment if augment else None, ids=ids)

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
        net = self.require_net()
        g = torch_generator(seed)
        if mask is None:
            if self.source is None:
                raise ConfigError("no source masks: pass masks or call set_source_masks / fit first")
            m, record = self.source.draw_one(g)
        else:
            m, cid = as_mask_tensor(mask)
            if int(m.min()) < 0 or int(m.max()) >= self._num_classes():
                raise DataError(f"mask ids {sorted(set(m.unique().tolist()))} are not within the generator's "
                                f"{self.num_classes} classes", source_id or cid)
            record = {"source_mask": source_id or cid}
        was = net.training
        net.eval()
        with autocast(self.device, self.precision):  # rendering in the generator's precision (None: fp32)
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
        net = self.require_net()
        if net.searchable:
            self.search_record = net.arch_summary()
            self.net = net.derive()
        return self.net.current_genotype()

    # ------------------------------------------------------------------------------------------ save / load

    def config(self) -> dict[str, Any]:
        net = self.require_net()
        return {"format": FORMAT, "options": self.options, "num_classes": self.num_classes,
                "image_channels": self.image_channels, "spatial_dims": net.spatial_dims,
                "spatial_shape": self.spatial_shape, "intensity_range": self.intensity_range,
                "info": self.info.to_json() if self.info is not None else None,
                "architecture": net.arch_summary(), "search": self.search_record, "history": self.history}

    def save(self, directory: str | Path) -> None:
        """Write generator (+ discriminator) weights and configs; the folder appears whole."""
        net = self.require_net()
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
        load_module_state(net, state, directory, "generator weights")
        self.net = net
        if (directory / "discriminator.safetensors").exists():
            dstate, dcfg = load_state(directory, "discriminator")
            self.disc = PatchGANDiscriminator(**dcfg)
            load_module_state(self.disc, dstate, directory, "discriminator weights")
        self.num_classes = int(cfg["num_classes"])
        self.image_channels = int(cfg["image_channels"])
        self.spatial_shape = cfg.get("spatial_shape")
        self.intensity_range = cfg["intensity_range"]
        self.info = DatasetInfo.from_json(cfg["info"]) if cfg.get("info") else None
        self.search_record = cfg.get("search")
        self.history = cfg.get("history") or {}
        self.model_dir = str(directory.resolve())
        return self.to(resolve_device(device))

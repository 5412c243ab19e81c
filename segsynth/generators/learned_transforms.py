"""Learned spatial and appearance transforms from one labelled atlas (Zhao et al., CVPR 2019).

The recipe:

1. **Spatial transform model.** A registration network (``RegistrationNet``) is trained to warp the atlas
   onto each unlabelled image (local NCC or MSE + smoothness of the velocity field); a second, *backward*
   network warps each unlabelled image onto the atlas (``inverse="model"``; ``inverse="negate"`` instead
   integrates the negated forward velocity, which is the exact inverse of the diffeomorphic model).
2. **Appearance transform model.** A U-Net (``AppearanceNet``) predicts an additive intensity change
   ``delta`` in atlas space such that ``atlas + delta`` matches the unlabelled image brought back into atlas
   space with the backward transform (L2), with a smoothness term on ``delta`` that is not penalised across
   the atlas's label boundaries.
3. **Synthesis.** Each unlabelled image ``u`` gives one spatial transform (the forward DDF atlas -> u) and
   one appearance transform (``delta_u``); both are computed once (``encode``) into a ``TransformBank``. A
   new pair draws the spatial source and the appearance source independently, with two separate
   generators, from different unlabelled images: ``image = warp(atlas + delta_j, ddf_i)``,
   ``labels = warp_labels(atlas_labels, ddf_i)`` (one-hot + argmax or nearest neighbour: labels stay in the
   atlas's label set). New pairs are drawn on the fly (``LearnedSource``, a PairSource) or written to disk
   (``sample`` + ``DatasetWriter``).

Baselines from the paper, all registered as sweep methods:

* ``sas``: single-atlas segmentation, the atlas registered to each test image and its labels warped
  (``AtlasSegmenter``, an ``nn.Module`` the sweep evaluates like any segmenter);
* ``sas_aug``: a segmenter trained on the unlabelled images labelled by SAS (plus the atlas);
* ``randaug``: the atlas with random smooth deformations and global intensity scaling (``RandAug``);
* ``learned``: learned transforms, spatial and appearance drawn independently;
* ``learned_randaug``: learned pairs alternated with rand-aug pairs (or composed: ``mix="compose"``).

The transform models' own optimisation (``LearnedTransforms.fit``) is the generator's ``fit``, like any
SyntheticGenerator's; the segmenter is trained by the project's one training loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from segsynth.data.case import Case
from segsynth.errors import ConfigError, DataError
from segsynth.generators.base import Method, MethodContext
from segsynth.nets.registration import (
    AppearanceNet,
    RegistrationNet,
    default_window,
    flush_denormals,
    label_boundaries,
    masked_smoothness_loss,
    random_smooth_ddf,
    similarity_loss,
    smoothness_loss,
    warp_image,
    warp_labels,
    warp_probabilities,
)
from segsynth.utils.config import load_state, save_module
from segsynth.utils.files import atomic_dir, atomic_path, write_json
from segsynth.utils.seed import derive_seed, torch_generator

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- helpers
def conform(cases: Sequence[Case], shape: Sequence[int]) -> list[Case]:
    """Centre crop/pad every case to ``shape`` (the atlas's), as the data layer's ``crop_or_pad`` does."""
    from segsynth.data.preprocess import crop_or_pad

    return [crop_or_pad(c, shape) for c in cases]


def center_fit(t: torch.Tensor, shape: Sequence[int], value: float | Sequence[float] = 0.0) -> torch.Tensor:
    """Centre crop/pad the spatial dims of a (B, C, *S) tensor to ``shape``; padding uses ``value`` per channel.

    Offsets follow ``segsynth.data.preprocess.crop_or_pad`` so fitting A -> B -> A returns A's centre.
    """
    spatial = t.shape[2:]
    if tuple(spatial) == tuple(shape):
        return t
    out = t.new_empty((t.shape[0], t.shape[1], *shape))
    vals = [float(value)] * t.shape[1] if isinstance(value, (int, float)) else [float(v) for v in value]
    for ch, v in enumerate(vals):
        out[:, ch] = v
    src, dst = [], []
    for s, want in zip(spatial, shape):
        if s >= want:
            a = (s - want) // 2
            src.append(slice(a, a + want))
            dst.append(slice(0, want))
        else:
            a = (want - s) // 2
            src.append(slice(0, s))
            dst.append(slice(a, a + s))
    out[(slice(None), slice(None), *dst)] = t[(slice(None), slice(None), *src)]
    return out


def _stack_images(cases: Sequence[Case]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.asarray(c.image), dtype=torch.float32) for c in cases])


@torch.no_grad()
def _batched(fn: Any, n: int, batch_size: int) -> list[torch.Tensor]:
    return [fn(slice(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


def _init_under_seed(seed: int, build: Any) -> Any:
    """Build modules with weights drawn from ``seed`` without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()


# -------------------------------------------------------------------------------------------- rand-aug
@dataclass
class RandAug:
    """The paper's rand-aug: a random smooth deformation and a random global intensity scaling.

    Args:
        displacement: std of the control-point displacements, as a fraction of the smallest image side.
        control_points: control points per axis of the smooth field (cubic/trilinear upsampling).
        intensity_scale: (min, max) of the global multiplicative intensity factor.
        label_warp: "onehot" or "nearest".
    """

    displacement: float = 0.04
    control_points: int = 5
    intensity_scale: tuple[float, float] = (0.8, 1.2)
    label_warp: str = "onehot"

    def draw(self, spatial_shape: Sequence[int], generator: torch.Generator) -> dict[str, Any]:
        lo, hi = self.intensity_scale
        return {"ddf_seed": int(torch.randint(0, 2**31 - 1, (), generator=generator)),
                "scale": float(lo + (hi - lo) * torch.rand((), generator=generator).item())}

    def ddf(self, params: dict[str, Any], spatial_shape: Sequence[int]) -> torch.Tensor:
        std = self.displacement * min(spatial_shape)
        return random_smooth_ddf(spatial_shape, torch_generator(params["ddf_seed"]), std, self.control_points)

    def apply(self, image: torch.Tensor, mask: torch.Tensor | None, params: dict[str, Any],
              num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply to one (C, *S) image and its (*S) mask (any device)."""
        ddf = self.ddf(params, image.shape[1:]).to(image.device)
        out = warp_image(image[None], ddf)[0] * params["scale"]
        if mask is None:
            return out, None
        k = num_classes if num_classes is not None else int(mask.max()) + 1
        return out, warp_labels(mask[None], ddf, k, self.label_warp)[0]


class RandAugSource:
    """PairSource: labelled cases (the atlas) with ``RandAug`` applied per sample."""

    def __init__(self, cases: Sequence[Case], rand_aug: RandAug, num_classes: int,
                 patch_size: Sequence[int] | None = None):
        from segsynth.segment.sources import CaseSource

        self.inner = CaseSource(cases, transform=rand_aug, patch_size=patch_size, num_classes=num_classes)

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.draw(batch_size, generator)


# ------------------------------------------------------------------------------------------ the models
@dataclass
class TransformFitConfig:
    """How the transform models are trained.

    Attributes:
        steps: optimisation steps of the spatial models (forward and backward nets together).
        appearance_steps: optimisation steps of the appearance model (0: no appearance model).
        batch_size: unlabelled images per step.
        lr: Adam learning rate.
        similarity: "ncc" (local NCC) or "mse".
        window: local NCC window (None: 9, smaller for tiny images).
        smooth_weight: weight of the velocity smoothness (VoxelMorph's lambda; 1 for NCC, ~0.01 for MSE).
        appearance_smooth_weight: weight of the appearance smoothness (not across label boundaries).
        progress: show progress bars.
    """

    steps: int = 300
    appearance_steps: int = 300
    batch_size: int = 4
    lr: float = 1e-3
    similarity: str = "ncc"
    window: int | None = None
    smooth_weight: float = 1.0
    appearance_smooth_weight: float = 1.0
    progress: bool = False


@dataclass
class TransformBank:
    """Transforms computed for each unlabelled image: forward DDF (atlas -> u) and appearance change."""

    ids: list[str]
    ddf: torch.Tensor       # (U, nd, *S) voxel displacements, on the CPU
    delta: torch.Tensor     # (U, C, *S) additive intensity change in atlas space, on the CPU

    def __len__(self) -> int:
        return len(self.ids)


class LearnedTransforms(torch.nn.Module):
    """Spatial (forward + backward) and appearance transform models around one labelled atlas.

    A ``SyntheticGenerator``: ``fit`` on [atlas] + unlabelled images, ``sample`` new labelled pairs,
    ``save`` / ``load`` (safetensors + JSON init args, plus the transform bank).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: label classes of the atlas (including background).
        atlas_shape: spatial shape every image is centre cropped/padded to.
        reg_channels: ``RegistrationNet`` channels (pairs).
        reg_final_channels: ``RegistrationNet`` convolutions after its U-Net (full resolution).
        integration_steps: scaling-and-squaring steps (0: plain displacement, then ``inverse`` must be "model").
        appearance_channels: ``AppearanceNet`` channels per level.
        inverse: "model" (a trained backward network) or "negate" (integrate the negated forward velocity).
        label_warp: "onehot" or "nearest".
        seed: initialisation seed of the networks.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, atlas_shape: Sequence[int],
                 reg_channels: Sequence[int] = (16, 32, 32, 32), reg_final_channels: Sequence[int] = (16, 16),
                 integration_steps: int = 7,
                 appearance_channels: Sequence[int] = (16, 32, 64), inverse: str = "model",
                 label_warp: str = "onehot", seed: int = 0):
        super().__init__()
        if inverse not in ("model", "negate"):
            raise ConfigError(f"inverse must be 'model' or 'negate', got {inverse!r}")
        if inverse == "negate" and integration_steps <= 0:
            raise ConfigError("inverse='negate' needs a diffeomorphic model (integration_steps > 0)")
        if label_warp not in ("onehot", "nearest"):
            raise ConfigError(f"label_warp must be 'onehot' or 'nearest', got {label_warp!r}")
        if len(atlas_shape) != spatial_dims:
            raise ConfigError(f"atlas_shape {tuple(atlas_shape)} does not have {spatial_dims} dimensions")
        self.config: dict[str, Any] = {
            "spatial_dims": spatial_dims, "in_channels": in_channels, "num_classes": num_classes,
            "atlas_shape": [int(s) for s in atlas_shape], "reg_channels": list(reg_channels),
            "reg_final_channels": list(reg_final_channels),
            "integration_steps": integration_steps, "appearance_channels": list(appearance_channels),
            "inverse": inverse, "label_warp": label_warp, "seed": seed}
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.atlas_shape = tuple(int(s) for s in atlas_shape)
        self.inverse = inverse
        self.label_warp = label_warp

        def build() -> tuple[RegistrationNet, RegistrationNet | None, AppearanceNet]:
            fwd = RegistrationNet(spatial_dims, in_channels, reg_channels, reg_final_channels, integration_steps)
            bwd = (RegistrationNet(spatial_dims, in_channels, reg_channels, reg_final_channels, integration_steps)
                   if inverse == "model" else None)
            app = AppearanceNet(spatial_dims, in_channels, appearance_channels)
            return fwd, bwd, app

        self.forward_net, self.backward_net, self.appearance_net = _init_under_seed(seed, build)
        self.register_buffer("atlas_image", torch.zeros((in_channels, *self.atlas_shape)))
        self.register_buffer("atlas_mask", torch.zeros(self.atlas_shape, dtype=torch.long))
        self.atlas_id: str = ""
        self.bank: TransformBank | None = None
        self.fit_stats: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------- atlas
    @classmethod
    def for_atlas(cls, atlas: Case, num_classes: int, **kwargs: Any) -> LearnedTransforms:
        """A model shaped for ``atlas`` (a labelled Case), with the atlas set."""
        if atlas.mask is None:
            raise DataError("the atlas must be labelled", atlas.case_id)
        model = cls(atlas.spatial_dims, atlas.in_channels, num_classes, atlas.spatial_shape, **kwargs)
        model.set_atlas(atlas)
        return model

    def set_atlas(self, atlas: Case) -> None:
        if atlas.mask is None:
            raise DataError("the atlas must be labelled", atlas.case_id)
        if tuple(atlas.spatial_shape) != self.atlas_shape:
            raise DataError(f"atlas shape {atlas.spatial_shape} differs from the model's {self.atlas_shape}",
                            atlas.case_id)
        dev = self.atlas_image.device
        self.atlas_image.copy_(torch.as_tensor(np.asarray(atlas.image), dtype=torch.float32).to(dev))
        self.atlas_mask.copy_(torch.as_tensor(np.asarray(atlas.mask), dtype=torch.long).to(dev))
        self.atlas_id = atlas.case_id

    @property
    def device(self) -> torch.device:
        return self.atlas_image.device

    def _images(self, cases_or_tensor: Sequence[Case] | torch.Tensor) -> torch.Tensor:
        if isinstance(cases_or_tensor, torch.Tensor):
            return cases_or_tensor.float()
        cases = list(cases_or_tensor)
        if not cases:
            raise DataError("no unlabelled images to learn transforms from")
        return _stack_images(conform(cases, self.atlas_shape))

    # -------------------------------------------------------------------------------------- fields
    def forward_ddf(self, images: torch.Tensor) -> torch.Tensor:
        """DDF warping the atlas onto each image (B, C, *S) -> (B, nd, *S) (differentiable)."""
        atlas = self.atlas_image[None].expand(images.shape[0], *self.atlas_image.shape)
        return self.forward_net.integrate(self.forward_net.velocity(atlas, images))

    def backward_ddf(self, images: torch.Tensor) -> torch.Tensor:
        """DDF warping each image onto the atlas (the inverse transform)."""
        atlas = self.atlas_image[None].expand(images.shape[0], *self.atlas_image.shape)
        if self.backward_net is not None:
            return self.backward_net.integrate(self.backward_net.velocity(images, atlas))
        return self.forward_net.integrate(self.forward_net.velocity(atlas, images), sign=-1.0)

    def to_atlas_space(self, images: torch.Tensor) -> torch.Tensor:
        return warp_image(images, self.backward_ddf(images))

    def appearance(self, images_in_atlas: torch.Tensor) -> torch.Tensor:
        atlas = self.atlas_image[None].expand(images_in_atlas.shape[0], *self.atlas_image.shape)
        return self.appearance_net(atlas, images_in_atlas)

    # ----------------------------------------------------------------------------------------- fit
    def fit(self, train: list[Case], *, val: list[Case] | None = None, unlabelled: list[Case] | None = None,
            device: torch.device | str = "cpu", seed: int = 0,
            config: TransformFitConfig | None = None) -> dict[str, Any]:
        """Train the spatial and appearance models; ``train[0]`` is the atlas.

        Unlabelled images default to the images of ``train[1:]`` (their labels are not used).
        Returns statistics (losses at the start and end, seconds per stage) and keeps them in ``fit_stats``.
        """
        cfg = config or TransformFitConfig()
        if not train:
            raise DataError("learned transforms need one labelled atlas")
        self.set_atlas(train[0])
        cases = list(unlabelled) if unlabelled else [c for c in train[1:]]
        if not cases:
            raise DataError("learned transforms need unlabelled images (none given and no other labelled case)")
        images = self._images(cases)
        self.to(device)
        stats: dict[str, Any] = {"n_unlabelled": len(cases), "atlas": self.atlas_id, "config": asdict(cfg)}
        stats["spatial"] = self.fit_spatial(images, cfg, generator=torch_generator(derive_seed(seed, "spatial")))
        if cfg.appearance_steps > 0:
            stats["appearance"] = self.fit_appearance(images, cfg,
                                                      generator=torch_generator(derive_seed(seed, "appearance")))
        t0 = time.perf_counter()
        self.encode(images, [c.case_id for c in cases], with_appearance=cfg.appearance_steps > 0)
        stats["encode_seconds"] = time.perf_counter() - t0
        self.fit_stats = stats
        return stats

    def _loop(self, params: list[torch.nn.Parameter], steps: int, lr: float, loss_fn: Any, desc: str,
              progress: bool) -> dict[str, Any]:
        from tqdm.auto import tqdm

        opt = torch.optim.Adam(params, lr=lr)
        losses: list[float] = []
        t0 = time.perf_counter()
        self.train()
        with flush_denormals():
            for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
                loss = loss_fn()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        self.eval()
        k = max(1, min(10, steps // 5))
        return {"steps": steps, "seconds": time.perf_counter() - t0,
                "loss_start": float(np.mean(losses[:k])) if losses else None,
                "loss_end": float(np.mean(losses[-k:])) if losses else None,
                "losses": losses[:: max(1, steps // 50)]}

    def spatial_loss(self, fixed: torch.Tensor, cfg: TransformFitConfig) -> torch.Tensor:
        """Registration loss of the forward (and backward) model on a batch of unlabelled images."""
        window = cfg.window or default_window(self.atlas_shape)
        atlas = self.atlas_image[None].expand(fixed.shape[0], *self.atlas_image.shape)
        v = self.forward_net.velocity(atlas, fixed)
        warped = warp_image(atlas, self.forward_net.integrate(v))
        loss = similarity_loss(warped, fixed, cfg.similarity, window) + cfg.smooth_weight * smoothness_loss(v)
        if self.backward_net is not None:
            vb = self.backward_net.velocity(fixed, atlas)
            warped_b = warp_image(fixed, self.backward_net.integrate(vb))
            loss = loss + similarity_loss(warped_b, atlas, cfg.similarity, window) \
                + cfg.smooth_weight * smoothness_loss(vb)
        return loss

    def fit_spatial(self, images: torch.Tensor, cfg: TransformFitConfig, generator: torch.Generator
                    ) -> dict[str, Any]:
        """Train forward (atlas -> u) and backward (u -> atlas) registration on unlabelled images (U, C, *S)."""
        params = list(self.forward_net.parameters())
        if self.backward_net is not None:
            params += list(self.backward_net.parameters())
        dev = self.device

        def step() -> torch.Tensor:
            idx = torch.randint(len(images), (cfg.batch_size,), generator=generator)
            return self.spatial_loss(images[idx].to(dev), cfg)

        return self._loop(params, cfg.steps, cfg.lr, step, "spatial transforms", cfg.progress)

    def appearance_loss(self, in_atlas: torch.Tensor, weight: torch.Tensor, cfg: TransformFitConfig
                        ) -> torch.Tensor:
        delta = self.appearance(in_atlas)
        fit = F.mse_loss(self.atlas_image[None] + delta, in_atlas)
        return fit + cfg.appearance_smooth_weight * masked_smoothness_loss(delta, weight)

    def fit_appearance(self, images: torch.Tensor, cfg: TransformFitConfig, generator: torch.Generator
                       ) -> dict[str, Any]:
        """Train the appearance model on the unlabelled images brought into atlas space (backward model)."""
        dev = self.device
        self.eval()
        with torch.no_grad():
            in_atlas = torch.cat(_batched(lambda s: self.to_atlas_space(images[s].to(dev)).cpu(), len(images),
                                          max(1, cfg.batch_size)))
            weight = 1.0 - label_boundaries(self.atlas_mask[None], self.num_classes)

        def step() -> torch.Tensor:
            idx = torch.randint(len(images), (cfg.batch_size,), generator=generator)
            return self.appearance_loss(in_atlas[idx].to(dev), weight, cfg)

        return self._loop(list(self.appearance_net.parameters()), cfg.appearance_steps, cfg.lr, step,
                          "appearance transforms", cfg.progress)

    @torch.no_grad()
    def encode(self, images: Sequence[Case] | torch.Tensor, ids: Sequence[str] | None = None,
               with_appearance: bool = True, batch_size: int = 4) -> TransformBank:
        """Compute (and keep) each image's forward DDF and appearance change; they are all synthesis needs."""
        x = self._images(images)
        if ids is None:
            ids = [c.case_id for c in images] if not isinstance(images, torch.Tensor) else \
                [f"u{i}" for i in range(len(x))]
        self.eval()
        dev = self.device
        ddfs, deltas = [], []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(dev)
            ddfs.append(self.forward_ddf(xb).cpu())
            if with_appearance:
                deltas.append(self.appearance(warp_image(xb, self.backward_ddf(xb))).cpu())
            else:
                deltas.append(torch.zeros_like(xb).cpu())
        self.bank = TransformBank(list(ids), torch.cat(ddfs), torch.cat(deltas))
        return self.bank

    # ----------------------------------------------------------------------------------- synthesis
    @torch.no_grad()
    def synthesize(self, spatial_index: Sequence[int], appearance_index: Sequence[int] | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs from the bank: atlas + delta_j warped by ddf_i; labels warped by ddf_i. CPU tensors."""
        bank = self._require_bank()
        atlas = self.atlas_image.detach().cpu()[None]
        mask = self.atlas_mask.detach().cpu()[None]
        i = torch.as_tensor(list(spatial_index), dtype=torch.long)
        ddf = bank.ddf[i]
        img = atlas.expand(len(i), *atlas.shape[1:])
        if appearance_index is not None:
            img = img + bank.delta[torch.as_tensor(list(appearance_index), dtype=torch.long)]
        x = warp_image(img, ddf)
        y = warp_labels(mask.expand(len(i), *mask.shape[1:]), ddf, self.num_classes, self.label_warp)
        return x, y

    def _require_bank(self) -> TransformBank:
        if self.bank is None or len(self.bank) == 0:
            raise ConfigError("no transforms encoded yet: call fit() or encode(unlabelled images) first")
        return self.bank

    def draw_sources(self, generator: torch.Generator, distinct: bool = True) -> dict[str, Any]:
        """One independent draw: spatial and appearance sources, each from its own seeded generator."""
        n = len(self._require_bank())
        s_seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        a_seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        i = int(torch.randint(n, (), generator=torch_generator(s_seed)))
        ga = torch_generator(a_seed)
        if distinct and n > 1:
            j = int(torch.randint(n - 1, (), generator=ga))
            j = j + 1 if j >= i else j  # any image but the spatial source, uniformly
        else:
            j = int(torch.randint(n, (), generator=ga))
        return {"spatial_index": i, "appearance_index": j, "spatial_seed": s_seed, "appearance_seed": a_seed}

    def sample(self, n: int, *, generator: torch.Generator, masks: list[Any] | None = None,
               rand_aug: RandAug | None = None, with_appearance: bool = True, prefix: str = "learned"
               ) -> list[Case]:
        """``n`` new labelled pairs with provenance in ``meta`` (the spatial/appearance sources and seeds)."""
        if masks is not None:
            raise ConfigError("learned transforms deform the atlas's labels; they do not take other masks")
        return list(self.iter_samples(n, generator=generator, rand_aug=rand_aug, with_appearance=with_appearance,
                                      prefix=prefix))

    def iter_samples(self, n: int, *, generator: torch.Generator, rand_aug: RandAug | None = None,
                     with_appearance: bool = True, prefix: str = "learned") -> Iterator[Case]:
        """Like ``sample``, one case at a time (for streaming to disk)."""
        bank = self._require_bank()
        for k in range(n):
            d = self.draw_sources(generator)
            x, y = self.synthesize([d["spatial_index"]], [d["appearance_index"]] if with_appearance else None)
            x, y = x[0], y[0]
            app_id = bank.ids[d["appearance_index"]] if with_appearance else None
            meta: dict[str, Any] = {
                "method": "learned" + ("_randaug" if rand_aug else ""), "source_mask": self.atlas_id,
                "spatial_source": bank.ids[d["spatial_index"]], "appearance_source": app_id,
                "style_source": app_id, "spatial_seed": d["spatial_seed"], "appearance_seed": d["appearance_seed"],
                "model": "learned_transforms"}
            if rand_aug is not None:
                params = rand_aug.draw(x.shape[1:], generator)
                x, y = rand_aug.apply(x, y, params, self.num_classes)
                meta["rand_aug"] = params
            yield Case(f"{prefix}_{k:05d}", x.numpy().astype(np.float32), y.numpy().astype(np.int64), meta)

    # --------------------------------------------------------------------------------- save / load
    def save(self, directory: str | Path, include_bank: bool = True) -> None:
        """``transforms.safetensors`` + ``transforms.json`` (init args, atlas id, fit stats), and the bank."""
        directory = Path(directory)
        save_module(self, directory, {"init": self.config, "atlas_id": self.atlas_id,
                                      "fit_stats": self.fit_stats}, name="transforms")
        if include_bank and self.bank is not None:
            with atomic_path(directory / "bank.safetensors") as tmp:
                save_file({"ddf": self.bank.ddf.contiguous(), "delta": self.bank.delta.contiguous()}, str(tmp))
            write_json(directory / "bank.json", {"ids": self.bank.ids})

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> LearnedTransforms:
        directory = Path(directory)
        state, config = load_state(directory, name="transforms")
        if "init" not in config:
            raise DataError("transforms.json has no 'init' entry: not a learned-transforms folder", directory)
        model = cls(**config["init"])
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise DataError(f"weights do not fit the saved configuration: {e}", directory) from e
        model.atlas_id = config.get("atlas_id", "")
        model.fit_stats = config.get("fit_stats", {})
        bank_path = directory / "bank.safetensors"
        if bank_path.exists():
            import json

            try:
                tensors = load_file(str(bank_path))
                ids = json.loads((directory / "bank.json").read_text())["ids"]
            except Exception as e:
                raise DataError(f"cannot read the transform bank: {e}", bank_path) from e
            model.bank = TransformBank(ids, tensors["ddf"], tensors["delta"])
        return model.to(device).eval()


# --------------------------------------------------------------------------------------- pair sources
class LearnedSource:
    """PairSource: pairs synthesised on the fly from a fitted ``LearnedTransforms``'s bank.

    Each sample draws its spatial and appearance sources independently (``draw_sources``); with
    ``rand_aug`` a rand-aug transform is composed on top.
    """

    def __init__(self, transforms: LearnedTransforms, rand_aug: RandAug | None = None,
                 patch_size: Sequence[int] | None = None, with_appearance: bool = True, distinct: bool = True):
        transforms._require_bank()
        self.t = transforms
        self.rand_aug = rand_aug
        self.patch_size = tuple(patch_size) if patch_size else None
        self.with_appearance = with_appearance
        self.distinct = distinct

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from segsynth.segment.sources import collate, random_patch

        draws = [self.t.draw_sources(generator, self.distinct) for _ in range(batch_size)]
        x, y = self.t.synthesize([d["spatial_index"] for d in draws],
                                 [d["appearance_index"] for d in draws] if self.with_appearance else None)
        xs, ys = list(x), list(y)
        for b in range(batch_size):
            if self.rand_aug is not None:
                params = self.rand_aug.draw(xs[b].shape[1:], generator)
                xs[b], ys[b] = self.rand_aug.apply(xs[b], ys[b], params, self.t.num_classes)
            if self.patch_size is not None:
                xs[b], ys[b] = random_patch(xs[b], ys[b], self.patch_size, generator)
        return collate(xs, ys)


# ------------------------------------------------------------------------------------------------- SAS
class AtlasSegmenter(torch.nn.Module):
    """Single-atlas segmentation as a segmenter: register the atlas to the input, warp its labels.

    Maps (B, C, *S) to log-probabilities (B, K, *S) (usable as logits). Inputs of another shape are centre
    cropped/padded to the atlas's shape and the output mapped back (background outside).
    """

    def __init__(self, transforms: LearnedTransforms):
        super().__init__()
        self.transforms = transforms
        self.size_divisor = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.transforms
        shape = tuple(x.shape[2:])
        fill = [float(v) for v in x.flatten(2).amin(-1).mean(0)]
        xf = center_fit(x.float(), t.atlas_shape, fill)
        ddf = t.forward_ddf(xf)
        onehot = F.one_hot(t.atlas_mask, t.num_classes).movedim(-1, 0)[None].float()
        probs = warp_probabilities(onehot.expand(x.shape[0], *onehot.shape[1:]), ddf)
        logp = torch.log(probs.clamp_min(1e-6))
        bg = [0.0] + [float(np.log(1e-6))] * (t.num_classes - 1)
        return center_fit(logp, shape, bg)


# ---------------------------------------------------------------------------------------------- methods
_FIT_OPTIONS = {"reg_steps": 300, "app_steps": 300, "reg_batch": 4, "reg_lr": 1e-3, "similarity": "ncc",
                "window": None, "smooth_weight": 1.0, "app_smooth_weight": 1.0, "inverse": "model",
                "integration_steps": 7, "reg_channels": [16, 32, 32, 32], "reg_final_channels": [16, 16],
                "app_channels": [16, 32, 64],
                "max_unlabelled": 100, "label_warp": "onehot", "transforms": None, "cache": True}
_RANDAUG_OPTIONS = {"displacement": 0.04, "control_points": 5, "intensity_scale": [0.8, 1.2]}


class _TransformsMethod(Method):
    """Shared option handling and fitting (or loading, or reusing) of the transform models.

    Options of the methods that learn transforms (``sas``, ``sas_aug``, ``learned``, ``learned_randaug``):
    ``reg_steps``, ``app_steps``, ``reg_batch``, ``reg_lr``, ``similarity`` ("ncc"/"mse"), ``window``,
    ``smooth_weight``, ``app_smooth_weight``, ``inverse`` ("model"/"negate"), ``integration_steps``,
    ``reg_channels``, ``reg_final_channels``, ``app_channels``, ``max_unlabelled`` (default 100),
    ``label_warp`` ("onehot"/"nearest"), ``transforms`` (a folder from ``segsynth transforms-fit`` to use
    instead of fitting), ``cache`` (share one fit between the methods of a sweep; default True). Rand-aug:
    ``displacement``, ``control_points``, ``intensity_scale``. ``learned*``: ``real_weight`` ("auto": 0 with
    one labelled case, else 0.5 of each batch from the real pairs); ``learned_randaug``: ``mix``
    ("alternate"/"compose") and ``randaug_weight``. The atlas is the first labelled case of the run.
    """

    allowed: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.allowed))
        if unknown:
            raise ConfigError(f"unknown options for method {self.name!r}: {unknown}; known: {sorted(self.allowed)}")
        super().__init__(**options)

    def opt(self, key: str) -> Any:
        return self.options.get(key, self.allowed[key])

    def rand_aug(self) -> RandAug:
        return RandAug(displacement=float(self.opt("displacement")), control_points=int(self.opt("control_points")),
                       intensity_scale=tuple(self.opt("intensity_scale")), label_warp=str(self.opt("label_warp")))

    def _atlas_and_unlabelled(self, ctx: MethodContext) -> tuple[Case, list[Case]]:
        if not ctx.train:
            raise DataError("this method needs one labelled atlas (N >= 1)")
        atlas = ctx.train[0]
        pool = list(ctx.unlabelled) or [Case(c.case_id, c.image, None, dict(c.meta)) for c in ctx.train[1:]]
        if not pool:
            raise DataError(f"method {self.name!r} learns from unlabelled images, and this run has none: give "
                            "--unlabelled DIR, or leave unused labelled cases in the pool")
        k = self.opt("max_unlabelled")
        if k is not None and len(pool) > int(k):
            g = torch_generator(derive_seed(ctx.seed, "unlabelled-subset"))
            pool = [pool[i] for i in sorted(torch.randperm(len(pool), generator=g)[: int(k)].tolist())]
        return atlas, pool

    def fit_config(self, need_appearance: bool, progress: bool) -> TransformFitConfig:
        return TransformFitConfig(steps=int(self.opt("reg_steps")),
                                  appearance_steps=int(self.opt("app_steps")) if need_appearance else 0,
                                  batch_size=int(self.opt("reg_batch")), lr=float(self.opt("reg_lr")),
                                  similarity=str(self.opt("similarity")), window=self.opt("window"),
                                  smooth_weight=float(self.opt("smooth_weight")),
                                  appearance_smooth_weight=float(self.opt("app_smooth_weight")), progress=progress)

    def transforms(self, ctx: MethodContext, need_appearance: bool) -> LearnedTransforms:
        """Fitted transforms for this run's atlas: loaded from ``transforms=PATH``, or from the sweep's cache
        (same atlas, unlabelled images and options: shared by sas, sas_aug, learned, learned_randaug),
        or fitted now (and cached)."""
        atlas, pool = self._atlas_and_unlabelled(ctx)
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
        cfg = self.fit_config(need_appearance=need_appearance or cache is not None, progress=progress)
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
            write_json(Path(ctx.workdir) / "transforms_fit.json", stats)
        return t

    def _cache_dir(self, ctx: MethodContext, atlas: Case, pool: Sequence[Case]) -> Path | None:
        """Per sweep: ``<sweep out>/_learned_transforms/<atlas>_<hash of images, options, seed>``."""
        if ctx.workdir is None:
            return None
        opts = sorted((k, self.opt(k)) for k in _FIT_OPTIONS if k not in ("transforms", "cache"))
        key = derive_seed(atlas.case_id, ",".join(c.case_id for c in pool), opts, ctx.seed, ctx.device.type)
        return Path(ctx.workdir).parent / "_learned_transforms" / f"{atlas.case_id}_{key:08x}"

    def patch(self, ctx: MethodContext) -> tuple[int, ...] | None:
        return ctx.train_config.patch_size if ctx.train_config else None

    def _with_real(self, ctx: MethodContext, source: Any) -> Any:
        w = self.opt("real_weight") if "real_weight" in self.allowed else 0.0
        if w == "auto":  # one-shot: synthetic pairs only (the paper); more labels: half of each batch real
            w = 0.0 if len(ctx.train) <= 1 else 0.5
        w = float(w)
        if w <= 0:
            return source
        from segsynth.segment.sources import CaseSource, MixedSource

        real = CaseSource(ctx.train, patch_size=self.patch(ctx), num_classes=ctx.info.num_classes)
        return MixedSource([(source, 1.0 - w), (real, w)])


class SASMethod(_TransformsMethod):
    """Single-atlas segmentation: the atlas (first labelled case) registered to each image, labels warped."""

    name: ClassVar[str] = "sas"
    description: ClassVar[str] = "single-atlas segmentation: register the atlas to each test image, warp its labels"
    allowed: ClassVar[dict[str, Any]] = dict(_FIT_OPTIONS)

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
    allowed: ClassVar[dict[str, Any]] = dict(_FIT_OPTIONS)

    def training_source(self, ctx: MethodContext) -> Any:
        from segsynth.segment.sources import CaseSource

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
        return CaseSource(list(ctx.train) + pseudo, patch_size=self.patch(ctx), num_classes=ctx.info.num_classes)


class RandAugMethod(_TransformsMethod):
    """The labelled case(s) with random smooth deformations and global intensity scaling (the paper's rand-aug)."""

    name: ClassVar[str] = "randaug"
    description: ClassVar[str] = "random smooth deformation + global intensity scaling of the labelled case(s)"
    allowed: ClassVar[dict[str, Any]] = {**_RANDAUG_OPTIONS, "label_warp": "onehot"}

    def training_source(self, ctx: MethodContext) -> Any:
        return RandAugSource(ctx.train, self.rand_aug(), ctx.info.num_classes, patch_size=self.patch(ctx))


class LearnedMethod(_TransformsMethod):
    """Pairs synthesised by learned spatial and appearance transforms drawn independently (Zhao et al.)."""

    name: ClassVar[str] = "learned"
    description: ClassVar[str] = "learned spatial + appearance transforms of the atlas, drawn independently"
    allowed: ClassVar[dict[str, Any]] = {**_FIT_OPTIONS, "real_weight": "auto"}

    def training_source(self, ctx: MethodContext) -> Any:
        t = self.transforms(ctx, need_appearance=True)
        return self._with_real(ctx, LearnedSource(t, patch_size=self.patch(ctx)))


class LearnedRandAugMethod(_TransformsMethod):
    """Learned transforms plus rand-aug: alternated per sample (default, as in the paper) or composed."""

    name: ClassVar[str] = "learned_randaug"
    description: ClassVar[str] = "learned transforms + rand-aug (half of the samples each, or composed)"
    allowed: ClassVar[dict[str, Any]] = {**_FIT_OPTIONS, **_RANDAUG_OPTIONS, "real_weight": "auto",
                                         "mix": "alternate", "randaug_weight": 0.5}

    def training_source(self, ctx: MethodContext) -> Any:
        from segsynth.segment.sources import MixedSource

        t = self.transforms(ctx, need_appearance=True)
        mix = self.opt("mix")
        if mix == "compose":
            return self._with_real(ctx, LearnedSource(t, rand_aug=self.rand_aug(), patch_size=self.patch(ctx)))
        if mix != "alternate":
            raise ConfigError(f"learned_randaug mix must be 'alternate' or 'compose', got {mix!r}")
        w = float(self.opt("randaug_weight"))
        learned = LearnedSource(t, patch_size=self.patch(ctx))
        ra = RandAugSource(ctx.train[:1], self.rand_aug(), ctx.info.num_classes, patch_size=self.patch(ctx))
        return self._with_real(ctx, MixedSource([(learned, 1.0 - w), (ra, w)]))


@dataclass
class SynthesisRecord:
    """What ``write_synthetic`` wrote."""

    out_dir: Path
    n: int
    seconds: float
    provenance: dict[str, Any] = field(default_factory=dict)


def write_synthetic(transforms: LearnedTransforms, n: int, out_dir: str | Path, info: Any, *, seed: int = 0,
                    rand_aug: RandAug | None = None, fmt: str = "auto", model_path: str | None = None
                    ) -> SynthesisRecord:
    """Write ``n`` synthesised pairs as a dataset folder (resumable; provenance per case)."""
    from segsynth.data.writer import DatasetWriter

    t0 = time.perf_counter()
    provenance = {"method": "learned" + ("_randaug" if rand_aug else ""), "seed": seed, "atlas": transforms.atlas_id,
                  "model": model_path, "n": n, "rand_aug": asdict(rand_aug) if rand_aug else None}
    g = torch_generator(derive_seed(seed, "learned-synthesis"))
    with DatasetWriter(out_dir, info, fmt=fmt, provenance=provenance, name=f"{info.name}_learned") as w:
        for case in transforms.iter_samples(n, generator=g, rand_aug=rand_aug):
            if not w.has(case.case_id):
                if model_path:
                    case.meta["model"] = model_path
                w.add(case)
    return SynthesisRecord(Path(out_dir), n, time.perf_counter() - t0, provenance)


__all__ = ["AtlasSegmenter", "LearnedMethod", "LearnedRandAugMethod", "LearnedSource", "LearnedTransforms",
           "RandAug", "RandAugMethod", "RandAugSource", "SASAugMethod", "SASMethod", "TransformBank",
           "TransformFitConfig", "center_fit", "conform", "write_synthetic"]

"""The spatial and appearance transform models from one atlas: fit, encode to a bank, synthesise, save/load."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from segsynth.data.case import Case
from segsynth.errors import ConfigError, DataError
from segsynth.generators.fit_loop import FitLoop, optimizer_step
from segsynth.generators.learned_transforms.helpers import (
    _batched,
    _init_under_seed,
    _stack_images,
    conform,
)
from segsynth.generators.learned_transforms.randaug import RandAug
from segsynth.nets.registration import (
    AppearanceNet,
    RegistrationNet,
    default_window,
    flush_denormals,
    label_boundaries,
    masked_smoothness_loss,
    similarity_loss,
    smoothness_loss,
    warp_image,
    warp_labels,
)
from segsynth.utils.config import load_module_state, load_state, save_module
from segsynth.utils.files import atomic_path, write_json
from segsynth.utils.precision import check_precision, full_precision
from segsynth.utils.seed import derive_seed, torch_generator


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
        precision: "fp32" (default), "bf16" or "auto": autocast of the networks' forwards
            (``segsynth.utils.precision``); integration, warping and losses stay fp32.
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
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_precision(self.precision, "precision")


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
              progress: bool, precision: str = "fp32") -> dict[str, Any]:
        opt = torch.optim.Adam(params, lr=lr)
        losses: list[float] = []
        self.train()
        loop = FitLoop(desc, steps, progress=progress, device=self.device, precision=precision)
        with flush_denormals():
            for step in loop:
                with loop.autocast():
                    loss = loss_fn()
                optimizer_step(opt, loss)
                losses.append(float(loss.detach()))
                loop.done(step)
        self.eval()
        k = max(1, min(10, steps // 5))
        return {"steps": steps, "seconds": loop.seconds,
                "loss_start": float(np.mean(losses[:k])) if losses else None,
                "loss_end": float(np.mean(losses[-k:])) if losses else None,
                "losses": losses[:: max(1, steps // 50)]}

    def spatial_loss(self, fixed: torch.Tensor, cfg: TransformFitConfig) -> torch.Tensor:
        """Registration loss of the forward (and backward) model on a batch of unlabelled images."""
        window = cfg.window or default_window(self.atlas_shape)
        atlas = self.atlas_image[None].expand(fixed.shape[0], *self.atlas_image.shape)
        v = self.forward_net.velocity(atlas, fixed)  # under the fit loop's autocast (bf16 when asked)
        vb = self.backward_net.velocity(fixed, atlas) if self.backward_net is not None else None
        with full_precision(fixed.device):  # integration, warps and losses in fp32
            v = v.float()
            warped = warp_image(atlas, self.forward_net.integrate(v))
            loss = similarity_loss(warped, fixed, cfg.similarity, window) + cfg.smooth_weight * smoothness_loss(v)
            if vb is not None and self.backward_net is not None:
                vb = vb.float()
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

        return self._loop(params, cfg.steps, cfg.lr, step, "spatial transforms", cfg.progress, cfg.precision)

    def appearance_loss(self, in_atlas: torch.Tensor, weight: torch.Tensor, cfg: TransformFitConfig
                        ) -> torch.Tensor:
        delta = self.appearance(in_atlas)  # under the fit loop's autocast (bf16 when asked)
        with full_precision(in_atlas.device):
            delta = delta.float()
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
                          "appearance transforms", cfg.progress, cfg.precision)

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
        load_module_state(model, state, directory)
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

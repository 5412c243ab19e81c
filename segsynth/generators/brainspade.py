"""brainSPADE (Fernandez et al. 2022): invent label maps with latent diffusion, paint images on them with SPADE.

Two generators, both built from MONAI's generative components, plus their combination:

``LabelGenerator``
    A KL autoencoder (MONAI ``AutoencoderKL``) over partial-volume (PV) maps, trained with L1 + KL + a
    least-squares PatchGAN term (``PatchDiscriminator`` + ``PatchAdversarialLoss``); a perceptual term only
    with a locally supplied network (a saved segsynth segmenter), off by default. Its decoder ends in a
    softmax, so every decoded map is a valid PV map. Then a latent diffusion model (``DiffusionModelUNet``,
    ε-prediction, DDPM training with ``DiffusionInferer`` on cached latents, sampling with DDIM or DDPM
    through ``LatentDiffusionInferer``), optionally conditioned by cross-attention on the slice position or
    on the presence of each class.
``ImageGenerator``
    MONAI ``SPADENet`` in VAE-GAN mode: a style encoder maps an image to a Gaussian style code, the SPADE
    decoder paints that style onto a PV map. Losses: hinge GAN with a ``MultiScalePatchDiscriminator``
    (2 scales, ``num_layers_d=2``) conditioned on the PV map, feature matching, KLD, a modality/dataset
    loss (a small classifier trained on the real images of each domain first, then frozen; BCE of its
    output on the generated images against the style image's domain), and a contrastive style loss
    (InfoNCE: the code of an image and of its random-affine copy are pulled together, codes of the other
    images in the batch pushed apart). Where cases are slices of volumes (``meta["volume_id"]``), style
    and content come from different slices of the same volume, so the encoder cannot pass anatomy through.
``BrainSpadeGenerator``
    Label generator + image generator: fully synthetic (image, label) pairs.

Sampling is reproducible per sample: sample ``i`` of a run uses ``seed_i`` for its initial latent noise,
its style choice and its style code, so a resumed run regenerates exactly what an uninterrupted one would
(DDIM with eta = 0 is deterministic; DDPM's per-step noise comes from the batch's seed, recorded as
``batch_seed``). ``write_synthetic_dataset`` streams samples to a dataset folder (flat memory, resumable).

Training is resumable: ``fit(..., checkpoint_dir=...)`` checkpoints every stage (autoencoder, diffusion model,
modality classifier, GAN) every ``checkpoint_every`` steps and at its end (``fit_checkpoint.FitCheckpoint``:
weights, optimisers, data generators, loss histories); a rerun skips finished stages, continues the
interrupted one and ends with the weights of an uninterrupted run. A checkpoint written with other options,
seed or data is ignored (with a warning).

Randomness never touches global state: data draws use ``torch.Generator`` objects, and MONAI code that
draws from the global generator (weight initialisation, DDPM steps) runs inside ``torch.random.fork_rng``
seeded from the caller's seed.

Methods for ``segsynth sweep``: ``spade`` (image generator on the training masks and augmented copies of
them) and ``brainspade`` (label generator + image generator); both train one segmenter on synthetic pairs
only (``mode="synthetic"``, the paper's S) or on real + synthetic pairs (``mode="mixed"``, H).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from segsynth.data.case import Case, DatasetInfo
from segsynth.data.partial_volume import labels_to_pv, pv_to_labels, renormalise_pv
from segsynth.data.transforms import RandomSpatial
from segsynth.errors import ConfigError, DataError
from segsynth.generators.base import Method, MethodContext
from segsynth.generators.fit_checkpoint import FitCheckpoint, fingerprint
from segsynth.utils.config import load_state, save_module
from segsynth.utils.device import resolve_device
from segsynth.utils.files import atomic_path, write_json
from segsynth.utils.seed import derive_seed, torch_generator

log = logging.getLogger(__name__)

CONDITIONS = (None, "slice_position", "class_presence")
SAMPLERS = ("ddim", "ddpm")


# ============================================================================================ helpers


@contextlib.contextmanager
def rng_scope(seed: int) -> Iterator[None]:
    """Run code that draws from torch's global generators with a fixed seed, restoring them afterwards."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) % (2**63 - 1))
        yield


def draw_seeds(n: int, generator: torch.Generator) -> list[int]:
    """``n`` per-sample seeds from a generator."""
    return [int(s) for s in torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()]


def domain_of(case: Case, default: str) -> str:
    """Which dataset (domain) an image comes from: ``meta["domain"]``, else its dataset folder, else default."""
    for key in ("domain", "dataset_root", "dataset"):
        v = case.meta.get(key)
        if v:
            return str(v)
    return default


def volume_of(case: Case) -> str:
    return str(case.meta.get("volume_id", case.case_id))


def assign_volumes(cases: Sequence[Case], pattern: str) -> list[Case]:
    """Group 2D slices stored as separate files into volumes by a regular expression on the case id.

    The first group of ``pattern`` is the volume id; an optional second group (digits) the slice index
    (``num_slices`` is then set per volume). Example: ``r"^(sub-\\d+)_ax(\\d+)$"`` for ``sub-0001_ax086``.
    Cases whose id does not match keep their own id as volume. Sets ``meta`` in place and returns the cases.
    """
    import re

    rx = re.compile(pattern)
    groups: dict[str, list[Case]] = {}
    for c in cases:
        m = rx.search(c.case_id)
        vol = m.group(1) if m else c.case_id
        c.meta["volume_id"] = vol
        if m and rx.groups >= 2 and m.group(2) is not None and m.group(2).isdigit():
            c.meta["slice_index"] = int(m.group(2))
        groups.setdefault(vol, []).append(c)
    for members in groups.values():
        idx = [c.meta["slice_index"] for c in members if "slice_index" in c.meta]
        if idx:
            lo, hi = min(idx), max(idx)
            for c in members:
                if "slice_index" in c.meta:
                    c.meta["slice_index"] = c.meta["slice_index"] - lo
                    c.meta["num_slices"] = hi - lo + 1
    return list(cases)


def _spatial_shape_of(cases: Sequence[Case], what: str) -> tuple[int, ...]:
    shapes = {c.spatial_shape for c in cases}
    if len(shapes) != 1:
        raise DataError(f"{what}: all cases must have one spatial shape to train a generator, found "
                        f"{sorted(shapes)[:4]} (set a working size: --size in 2D, --shape-3d in 3D)",
                        cases[0].meta.get("dataset_root"))
    return next(iter(shapes))


def _check_divisible(shape: Sequence[int], factor: int, what: str) -> None:
    if any(s % factor for s in shape):
        raise ConfigError(f"{what} needs every spatial size divisible by {factor}, got {tuple(shape)} "
                          f"(choose a working size that is a multiple of {factor})")


def _augment(batch: torch.Tensor, generator: torch.Generator, spatial: RandomSpatial) -> torch.Tensor:
    """Apply one random spatial transform per sample to (B, C, *S) (images and PV maps warp linearly)."""
    out = []
    for x in batch:
        params = spatial.draw(x.shape[1:], generator)
        out.append(spatial.apply(x, None, params)[0])
    return torch.stack(out)


def _default_spatial_aug(spatial_dims: int) -> RandomSpatial:
    return RandomSpatial(rotate_deg=10.0, scale=(0.9, 1.1), translate=0.05, elastic_alpha=0.01, p=0.7)


def _init_args(fn: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The constructor's own arguments from ``locals()``, JSON-friendly (tuples as lists)."""
    names = [p for p in inspect.signature(fn).parameters if p != "self"]
    out = {}
    for n in names:
        v = values[n]
        out[n] = list(v) if isinstance(v, tuple) else v
    return out


def _progress(total: int, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def _tail_mean(values: Sequence[float]) -> float:
    """Mean of the last tenth of a loss history (NaN when empty)."""
    tail = list(values)[-max(1, len(values) // 10):]
    return float(np.mean(tail)) if tail else float("nan")


def _fit_key(kind: str, config: dict[str, Any], not_fit: set[str], seed: int, *data: Any) -> str:
    """Fingerprint of what a fit's result depends on: the training options, the seed and the data."""
    return fingerprint(kind, {k: v for k, v in config.items() if k not in not_fit}, int(seed), *data)


class _StopForward(Exception):
    """Raised by a forward hook once every feature a loss needs has been computed."""


class SegmenterFeatureLoss(torch.nn.Module):
    """Perceptual loss from a *locally saved* segsynth segmenter (no download): L1 between its encoder features.

    MONAI's ``PerceptualLoss`` needs torchvision/lpips or an online torch.hub download, neither of which
    works offline; a segmenter trained on the same kind of images is a reasonable local feature network.
    Each channel of the inputs is fed separately as a 1-channel image (repeated to the segmenter's input
    channels), so it also applies to PV maps.

    Args:
        model_dir: folder written by ``segsynth.segment.model_io.save_segmenter``.
        layers: names of the sub-modules whose outputs are compared (default: the first encoder stages of
            a BasicUNet, or the first three top-level children otherwise).
    """

    def __init__(self, model_dir: str | Path, layers: Sequence[str] | None = None):
        super().__init__()
        from segsynth.segment.model_io import load_segmenter

        model, config = load_segmenter(model_dir, "cpu")
        self.net = model.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.in_channels = int(config["segmenter"]["in_channels"])
        names = dict(self.net.named_modules())
        if layers is None:
            layers = [n for n in ("conv_0", "down_1", "down_2") if n in names] or \
                [n for n, _ in self.net.named_children()][:3]
        missing = [n for n in layers if n not in names]
        if missing:
            raise ConfigError(f"perceptual model {model_dir} has no layers {missing}")
        self.layers = list(layers)
        self._feats: list[torch.Tensor] = []
        for n in self.layers:
            names[n].register_forward_hook(self._keep)

    def _keep(self, _module: torch.nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        self._feats.append(out)
        if len(self._feats) == len(self.layers):
            raise _StopForward  # the rest of the network is not needed

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._feats = []
        b, c = x.shape[:2]
        flat = x.reshape(b * c, 1, *x.shape[2:]).repeat(1, self.in_channels, *([1] * (x.ndim - 2)))
        divisor = int(getattr(self.net, "size_divisor", 1))
        if any(s % divisor for s in flat.shape[2:]):
            pads: list[int] = []
            for s in reversed(flat.shape[2:]):
                pads += [0, (-s) % divisor]
            flat = F.pad(flat, pads, mode="replicate")
        try:
            self.net(flat)
        except _StopForward:
            pass
        return list(self._feats)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self._features(x)
        with torch.no_grad():
            fy = self._features(y)
        return torch.stack([(a - b).abs().mean() for a, b in zip(fx, fy)]).mean()


# ============================================================================================ label generator


class LabelGenerator:
    """KL autoencoder over PV maps + latent diffusion model: invents new PV label maps.

    Args:
        spatial_dims: 2 or 3.
        num_classes: K, including background (None: inferred from the training masks).
        image_size: spatial size of the maps (None: taken from the training cases).
        pv_sigma: Gaussian smoothing (voxels) turning hard training labels into PV maps.
        ae_channels: AutoencoderKL channels per level (len - 1 downsamplings).
        ae_res_blocks: residual blocks per level.
        latent_channels: channels of the latent space.
        ae_attention: non-local attention in the autoencoder's bottleneck.
        norm_num_groups: group-norm groups (must divide every channel count).
        kl_weight: weight of the KL term.
        adv_weight: weight of the adversarial term (0 = off).
        adv_start: fraction of ``ae_steps`` after which the adversarial term starts.
        disc_channels, disc_layers: PatchDiscriminator width and depth.
        perceptual_model: folder of a saved segsynth segmenter used as a perceptual network (off when None).
        perceptual_weight: weight of the perceptual term (needs ``perceptual_model``).
        unet_channels, unet_attention, unet_res_blocks, num_head_channels: DiffusionModelUNet.
        num_train_timesteps, schedule, beta_start, beta_end: the noise schedule (MONAI schedulers).
        condition: None, "slice_position" (``slice_index / (num_slices - 1)`` from the case meta) or
            "class_presence" (one 0/1 value per foreground class).
        ae_steps, ldm_steps: optimisation steps of the two stages.
        ae_batch_size, ldm_batch_size, ae_lr, ldm_lr: batch sizes and learning rates.
        augment: random spatial transforms of the training PV maps.
        latent_copies: augmented copies of each training map whose latents are cached for the diffusion stage.
        sampler: "ddim" (default) or "ddpm".
        sampling_steps: DDIM steps (DDPM always runs ``num_train_timesteps``).
        sample_batch_size: maps generated at once.
        progress: progress bars.
    """

    name: ClassVar[str] = "brainspade-labels"
    #: options that do not change training (left out of the checkpoint fingerprint)
    sampling_options: ClassVar[frozenset[str]] = frozenset({"progress", "sampler", "sampling_steps",
                                                            "sample_batch_size"})

    def __init__(self, spatial_dims: int = 2, num_classes: int | None = None,
                 image_size: Sequence[int] | None = None, *, pv_sigma: float = 0.5,
                 ae_channels: Sequence[int] = (32, 64, 64), ae_res_blocks: int = 1, latent_channels: int = 3,
                 ae_attention: bool = False, norm_num_groups: int = 16, kl_weight: float = 1e-6,
                 adv_weight: float = 0.01, adv_start: float = 0.2, disc_channels: int = 32, disc_layers: int = 3,
                 perceptual_model: str | None = None, perceptual_weight: float = 0.0,
                 unet_channels: Sequence[int] = (32, 64, 64), unet_attention: Sequence[bool] = (False, True, True),
                 unet_res_blocks: int = 1, num_head_channels: int = 32, num_train_timesteps: int = 1000,
                 schedule: str = "scaled_linear_beta", beta_start: float = 0.0015, beta_end: float = 0.0195,
                 condition: str | None = None, ae_steps: int = 1500, ldm_steps: int = 2000, ae_batch_size: int = 16,
                 ldm_batch_size: int = 32, ae_lr: float = 2e-4, ldm_lr: float = 2e-4, augment: bool = True,
                 latent_copies: int = 8, sampler: str = "ddim", sampling_steps: int = 50,
                 sample_batch_size: int = 16, progress: bool = True):
        self.config = _init_args(LabelGenerator.__init__, locals())
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if condition not in CONDITIONS:
            raise ConfigError(f"condition must be one of {CONDITIONS}, got {condition!r}")
        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if perceptual_weight > 0 and not perceptual_model:
            raise ConfigError("perceptual_weight > 0 needs perceptual_model: the folder of a saved segmenter "
                              "(pretrained perceptual networks cannot be downloaded here)")
        if len(unet_attention) != len(unet_channels):
            raise ConfigError("unet_attention needs one flag per entry of unet_channels")
        if condition is not None and not any(unet_attention):
            raise ConfigError("a conditional diffusion model needs attention at one level at least "
                              "(conditioning is by cross-attention)")
        if any(c % norm_num_groups for c in list(ae_channels) + list(unet_channels)):
            raise ConfigError(f"norm_num_groups={norm_num_groups} must divide every channel count")
        self.autoencoder: torch.nn.Module | None = None
        self.unet: torch.nn.Module | None = None
        self.scale_factor = 1.0
        self.condition_bank: torch.Tensor | None = None
        self.device = torch.device("cpu")
        self.history: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ properties

    @property
    def num_classes(self) -> int:
        k = self.config["num_classes"]
        if k is None:
            raise ConfigError("num_classes is not known before fit")
        return int(k)

    @property
    def image_size(self) -> tuple[int, ...]:
        s = self.config["image_size"]
        if s is None:
            raise ConfigError("image_size is not known before fit")
        return tuple(int(v) for v in s)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config["ae_channels"]) - 1)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        f = self.downsample_factor
        return (int(self.config["latent_channels"]),) + tuple(s // f for s in self.image_size)

    @property
    def condition_dim(self) -> int:
        cond = self.config["condition"]
        if cond is None:
            return 0
        return 1 if cond == "slice_position" else self.num_classes - 1

    # ------------------------------------------------------------------------------------------ networks

    def _build(self, seed: int) -> None:
        from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

        c = self.config
        nd = c["spatial_dims"]
        k = self.num_classes
        _check_divisible(self.image_size, self.downsample_factor, "the label autoencoder")
        with rng_scope(derive_seed(seed, "label-init")):
            self.autoencoder = AutoencoderKL(
                spatial_dims=nd, in_channels=k, out_channels=k, num_res_blocks=c["ae_res_blocks"],
                channels=tuple(c["ae_channels"]), attention_levels=(False,) * len(c["ae_channels"]),
                latent_channels=c["latent_channels"], norm_num_groups=c["norm_num_groups"],
                with_encoder_nonlocal_attn=c["ae_attention"], with_decoder_nonlocal_attn=c["ae_attention"])
            n_cond = self.condition_dim
            self.unet = DiffusionModelUNet(
                spatial_dims=nd, in_channels=c["latent_channels"], out_channels=c["latent_channels"],
                num_res_blocks=c["unet_res_blocks"], channels=tuple(c["unet_channels"]),
                attention_levels=tuple(bool(a) for a in c["unet_attention"]), norm_num_groups=c["norm_num_groups"],
                num_head_channels=c["num_head_channels"], with_conditioning=n_cond > 0,
                cross_attention_dim=n_cond if n_cond > 0 else None)

    def _scheduler(self, sampler: str | None = None, steps: int | None = None) -> Any:
        from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

        c = self.config
        sampler = sampler or c["sampler"]
        kw = dict(num_train_timesteps=c["num_train_timesteps"], schedule=c["schedule"], beta_start=c["beta_start"],
                  beta_end=c["beta_end"], clip_sample=False)
        if sampler == "ddpm":
            sch = DDPMScheduler(**kw)
            sch.set_timesteps(c["num_train_timesteps"])
        elif sampler == "ddim":
            sch = DDIMScheduler(**kw)
            sch.set_timesteps(int(steps or c["sampling_steps"]))
        else:
            raise ConfigError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        return sch

    def condition_vector(self, case: Case, mask: np.ndarray | None = None) -> list[float]:
        """The conditioning values of a training case (empty when unconditional)."""
        cond = self.config["condition"]
        if cond is None:
            return []
        if cond == "slice_position":
            if "slice_index" not in case.meta or "num_slices" not in case.meta:
                raise DataError("condition 'slice_position' needs slices of volumes (meta slice_index and "
                                "num_slices); load 3D data with spatial_dims=2", case.case_id)
            n = max(1, int(case.meta["num_slices"]) - 1)
            return [float(case.meta["slice_index"]) / n]
        m = case.mask if mask is None else mask
        return [float((m == k).any()) for k in range(1, self.num_classes)]

    # ------------------------------------------------------------------------------------------ fit

    def fit(self, train: list[Case], *, val: list[Case] | None = None, unlabelled: list[Case] | None = None,
            device: torch.device | str = "cpu", seed: int = 0, checkpoint_dir: str | Path | None = None,
            checkpoint_every: int = 100) -> dict[str, Any]:
        """Train the autoencoder, then the diffusion model on its latents. Returns training statistics.

        With ``checkpoint_dir``, each stage is checkpointed there every ``checkpoint_every`` steps and at its
        end (``label_autoencoder.pt``, ``label_diffusion.pt``); a rerun with the same options, seed and data
        continues from there (finished stages are skipped) and ends with the same weights as an uninterrupted
        run. A checkpoint of another configuration is ignored (with a warning).
        """
        labelled = [c for c in train if c.mask is not None]
        if not labelled:
            raise DataError("the label generator needs labelled training cases")
        self.device = resolve_device(device)
        if self.config["num_classes"] is None:
            self.config["num_classes"] = int(max(int(c.mask.max()) for c in labelled)) + 1
        shape = _spatial_shape_of(labelled, "label generator")
        if self.config["image_size"] is None:
            self.config["image_size"] = list(shape)
        elif tuple(self.image_size) != shape:
            raise DataError(f"cases are {shape} but the label generator was set up for {self.image_size}")
        if len(shape) != self.config["spatial_dims"]:
            raise DataError(f"cases are {len(shape)}D but spatial_dims={self.config['spatial_dims']}")
        k = self.num_classes
        masks = torch.stack([torch.as_tensor(c.mask).long() for c in labelled])
        pvs = labels_to_pv(masks, k, sigma=self.config["pv_sigma"])
        conds = torch.tensor([self.condition_vector(c) for c in labelled], dtype=torch.float32)
        ckpt = FitCheckpoint(checkpoint_dir, _fit_key("LabelGenerator", self.config, set(self.sampling_options),
                                                      seed, masks, conds), checkpoint_every)
        self._build(seed)
        g = torch_generator(derive_seed(seed, "label-fit"))
        t0 = time.perf_counter()
        ae_stats = self._fit_autoencoder(pvs, g, seed, ckpt)
        t1 = time.perf_counter()
        ldm_stats = self._fit_diffusion(pvs, conds, labelled, g, ckpt)
        t2 = time.perf_counter()
        stats = {"ae": ae_stats, "ldm": ldm_stats, "ae_seconds": t1 - t0, "ldm_seconds": t2 - t1,
                 "n_train": len(labelled), "scale_factor": self.scale_factor}
        if val:
            stats["val_ae_l1"] = self.reconstruction_l1([c for c in val if c.mask is not None])
        self.history = stats
        return stats

    def _fit_autoencoder(self, pvs: torch.Tensor, g: torch.Generator, seed: int,
                         ckpt: FitCheckpoint | None = None) -> dict[str, float]:
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import PatchDiscriminator

        c = self.config
        dev = self.device
        ae = self.autoencoder.to(dev).train()
        with rng_scope(derive_seed(seed, "label-disc-init")):
            disc = PatchDiscriminator(spatial_dims=c["spatial_dims"], channels=c["disc_channels"],
                                      in_channels=self.num_classes, num_layers_d=c["disc_layers"]).to(dev)
        perceptual = SegmenterFeatureLoss(c["perceptual_model"]).to(dev) if c["perceptual_weight"] > 0 else None
        adv = PatchAdversarialLoss(criterion="least_squares")
        opt_g = torch.optim.Adam(ae.parameters(), lr=c["ae_lr"])
        opt_d = torch.optim.Adam(disc.parameters(), lr=c["ae_lr"])
        spatial = _default_spatial_aug(c["spatial_dims"])
        steps, bs = int(c["ae_steps"]), int(c["ae_batch_size"])
        adv_from = int(c["adv_start"] * steps)
        stage = (ckpt or FitCheckpoint(None)).stage(
            "label_autoencoder", modules={"autoencoder": ae, "discriminator": disc},
            optimizers={"autoencoder": opt_g, "discriminator": opt_d}, generators={"data": g})
        saved = stage.restore()
        last: dict[str, float] = saved.get("last", {})
        l1_hist: list[float] = saved.get("l1_hist", [])
        bar = _progress(steps, "label autoencoder", c["progress"], initial=stage.start)
        for step in range(stage.start, steps):
            idx = torch.randint(len(pvs), (bs,), generator=g)
            x = pvs[idx]
            if c["augment"]:
                x = _augment(x, g, spatial)
            x = x.to(dev)
            mu, sigma = ae.encode(x)
            eps = torch.randn(mu.shape, generator=g).to(dev)
            recon = torch.softmax(ae.decode(mu + sigma * eps), 1)
            l1 = (recon - x).abs().mean()
            kl = 0.5 * torch.sum(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1,
                                 dim=list(range(1, mu.ndim))).mean()
            loss = l1 + c["kl_weight"] * kl
            if perceptual is not None:
                loss = loss + c["perceptual_weight"] * perceptual(recon, x)
            use_adv = c["adv_weight"] > 0 and step >= adv_from
            if use_adv:
                g_adv = adv(disc(recon)[-1], target_is_real=True, for_discriminator=False)
                loss = loss + c["adv_weight"] * g_adv
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            last = {"l1": float(l1.detach()), "kl": float(kl.detach())}
            if use_adv:
                d_loss = 0.5 * (adv(disc(recon.detach())[-1], target_is_real=False, for_discriminator=True)
                                + adv(disc(x)[-1], target_is_real=True, for_discriminator=True))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                last.update(g_adv=float(g_adv.detach()), d_loss=float(d_loss.detach()))
            l1_hist.append(last["l1"])
            bar.update(1)
            bar.set_postfix(l1=f"{last['l1']:.4f}")
            stage.after_step(step + 1, steps, last=last, l1_hist=l1_hist)
        bar.close()
        ae.eval()
        return {**last, "l1_final_mean": _tail_mean(l1_hist), "steps": steps}

    @torch.no_grad()
    def _encode_bank(self, pvs: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latent mean/sigma of the training maps and of ``latent_copies`` augmented copies of each."""
        c = self.config
        spatial = _default_spatial_aug(c["spatial_dims"])
        sets = [pvs]
        for _ in range(int(c["latent_copies"]) if c["augment"] else 0):
            sets.append(_augment(pvs, g, spatial))
        all_pv = torch.cat(sets)
        mus, sigmas = [], []
        for chunk in torch.split(all_pv, 32):
            mu, sigma = self.autoencoder.encode(chunk.to(self.device))
            mus.append(mu.cpu())
            sigmas.append(sigma.cpu())
        return torch.cat(mus), torch.cat(sigmas), all_pv

    def _latent_bank(self, pvs: torch.Tensor, conds: torch.Tensor,
                     g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Latents (mu, sigma) the diffusion model trains on, their conditions; sets ``scale_factor``."""
        mu, sigma, all_pv = self._encode_bank(pvs, g)
        self.scale_factor = float(1.0 / mu.std().clamp_min(1e-6))
        if not self.condition_dim:
            return mu, sigma, None
        if self.config["condition"] == "class_presence":  # augmented copies may lose a class at the border
            labels = pv_to_labels(all_pv)
            return mu, sigma, torch.stack([(labels == k).flatten(1).any(1).float()
                                           for k in range(1, self.num_classes)], 1)
        return mu, sigma, conds.repeat(len(all_pv) // len(pvs), 1)

    def _fit_diffusion(self, pvs: torch.Tensor, conds: torch.Tensor, cases: list[Case],
                       g: torch.Generator, ckpt: FitCheckpoint | None = None) -> dict[str, float]:
        from monai.inferers import DiffusionInferer

        c = self.config
        dev = self.device
        self.condition_bank = conds.clone() if self.condition_dim else None
        unet = self.unet.to(dev).train()
        scheduler = self._scheduler("ddpm")
        inferer = DiffusionInferer(scheduler)
        opt = torch.optim.AdamW(unet.parameters(), lr=c["ldm_lr"])
        steps, bs = int(c["ldm_steps"]), int(c["ldm_batch_size"])
        stage = (ckpt or FitCheckpoint(None)).stage("label_diffusion", modules={"unet": unet},
                                                    optimizers={"unet": opt}, generators={"data": g})
        if stage.finished(steps):  # the latent bank is only needed to train: skip encoding it
            saved = stage.restore()
            self.scale_factor = float(saved["scale_factor"])
            unet.eval()
            return self._diffusion_stats(saved["losses"], steps, int(saved["n_latents"]))
        mu, sigma, all_conds = self._latent_bank(pvs, conds, g)  # draws from g before the saved state is restored
        saved = stage.restore()
        losses: list[float] = saved.get("losses", [])
        bar = _progress(steps, "label diffusion", c["progress"], initial=stage.start)
        for step in range(stage.start, steps):
            idx = torch.randint(len(mu), (bs,), generator=g)
            eps = torch.randn(mu[idx].shape, generator=g)
            z = ((mu[idx] + sigma[idx] * eps) * self.scale_factor).to(dev)
            noise = torch.randn(z.shape, generator=g).to(dev)
            t = torch.randint(0, c["num_train_timesteps"], (bs,), generator=g).to(dev)
            cond = all_conds[idx][:, None, :].to(dev) if all_conds is not None else None
            pred = inferer(inputs=z, diffusion_model=unet, noise=noise, timesteps=t, condition=cond)
            loss = F.mse_loss(pred.float(), noise.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(mse=f"{losses[-1]:.4f}")
            stage.after_step(step + 1, steps, losses=losses, scale_factor=self.scale_factor, n_latents=len(mu))
        bar.close()
        unet.eval()
        return self._diffusion_stats(losses, steps, len(mu))

    @staticmethod
    def _diffusion_stats(losses: list[float], steps: int, n_latents: int) -> dict[str, float]:
        return {"mse_final_mean": _tail_mean(losses), "steps": steps, "n_latents": n_latents}

    @torch.no_grad()
    def reconstruction_l1(self, cases: list[Case]) -> float:
        """Mean L1 between PV maps of ``cases`` and their autoencoder reconstructions (posterior mean)."""
        if not cases:
            return float("nan")
        masks = torch.stack([torch.as_tensor(c.mask).long() for c in cases])
        pvs = labels_to_pv(masks, self.num_classes, sigma=self.config["pv_sigma"])
        errs = []
        for chunk in torch.split(pvs, 16):
            x = chunk.to(self.device)
            recon = torch.softmax(self.autoencoder.reconstruct(x), 1)
            errs.append(float((recon - x).abs().mean()) * len(chunk))
        return sum(errs) / len(pvs)

    # ------------------------------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample_pv(self, seeds: Sequence[int], *, conditions: torch.Tensor | Sequence[Sequence[float]] | None = None,
                  sampler: str | None = None, steps: int | None = None) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """One PV map per seed, (n, K, *S) on the CPU, plus a provenance record per map.

        Args:
            seeds: per-sample seeds (initial latent noise and, when conditional and ``conditions`` is None,
                which training condition to reuse).
            conditions: (n, condition_dim) conditioning values; None draws them from the training cases.
            sampler: "ddim" or "ddpm" (default: the configured one).
            steps: DDIM steps (default: the configured ``sampling_steps``).
        """
        from monai.inferers import LatentDiffusionInferer

        if self.autoencoder is None or self.unet is None:
            raise ConfigError("the label generator is not trained (fit it or load a saved one)")
        seeds = [int(s) for s in seeds]
        sampler = sampler or self.config["sampler"]
        scheduler = self._scheduler(sampler, steps)
        n_steps = len(scheduler.timesteps)
        noise = torch.stack([torch.randn(self.latent_shape, generator=torch_generator(s)) for s in seeds])
        cond = None
        if self.condition_dim:
            if conditions is None:
                if self.condition_bank is None or not len(self.condition_bank):
                    raise ConfigError("no conditions given and none stored with the model")
                rows = [int(torch.randint(len(self.condition_bank), (1,),
                                          generator=torch_generator(derive_seed(s, "condition")))) for s in seeds]
                cond = self.condition_bank[rows]
            else:
                cond = torch.as_tensor(conditions, dtype=torch.float32).reshape(len(seeds), self.condition_dim)
            cond = cond[:, None, :]
        elif conditions is not None:
            raise ConfigError("this label generator is unconditional; do not pass conditions")
        inferer = LatentDiffusionInferer(scheduler, scale_factor=self.scale_factor)
        batch_seed = derive_seed("ddpm-steps", *seeds)
        with rng_scope(batch_seed):
            logits = inferer.sample(input_noise=noise.to(self.device), autoencoder_model=self.autoencoder,
                                    diffusion_model=self.unet, scheduler=scheduler,
                                    conditioning=None if cond is None else cond.to(self.device),
                                    mode="crossattn", verbose=False)
        pv = renormalise_pv(torch.softmax(logits.float(), 1)).cpu()
        records = []
        for i, s in enumerate(seeds):
            rec: dict[str, Any] = {"seed": s, "sampler": sampler, "steps": n_steps}
            if sampler == "ddpm":
                rec["batch_seed"] = batch_seed
            if cond is not None:
                rec["condition"] = [round(float(v), 6) for v in cond[i, 0]]
            records.append(rec)
        return pv, records

    def sample(self, n: int, *, generator: torch.Generator, masks: list[Any] | None = None) -> list[Case]:
        """``n`` new label maps as Cases: ``image`` = the PV map (K, *S), ``mask`` = its argmax.

        With ``masks`` (label maps), returns their PV maps instead (one per mask), for uniform handling.
        """
        out: list[Case] = []
        if masks is not None:
            for i, m in enumerate(masks):
                pv = labels_to_pv(torch.as_tensor(np.asarray(m)).long()[None], self.num_classes,
                                  sigma=self.config["pv_sigma"])[0]
                out.append(Case(f"mask{i:05d}", pv.numpy(), np.asarray(m).astype(np.int64),
                                {"method": self.name, "source_mask": f"given:{i}"}))
            return out
        seeds = draw_seeds(n, generator)
        bs = int(self.config["sample_batch_size"])
        for start in range(0, n, bs):
            pv, recs = self.sample_pv(seeds[start:start + bs])
            for j, (p, rec) in enumerate(zip(pv, recs)):
                out.append(Case(f"label{start + j:05d}", p.numpy(), pv_to_labels(p[None])[0].numpy(),
                                {"method": self.name, "source_mask": "label-generator", **rec}))
        return out

    # ------------------------------------------------------------------------------------------ save / load

    def _saved_config(self) -> dict[str, Any]:
        return {"class": "LabelGenerator", "init": self.config, "scale_factor": self.scale_factor,
                "condition_bank": None if self.condition_bank is None else self.condition_bank.tolist(),
                "history": self.history}

    def save(self, directory: str | Path) -> None:
        if self.autoencoder is None or self.unet is None:
            raise ConfigError("nothing to save: the label generator is not trained")
        cfg = self._saved_config()
        save_module(self.autoencoder, directory, cfg, name="label_autoencoder")
        save_module(self.unet, directory, cfg, name="label_diffusion")

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> LabelGenerator:
        ae_state, cfg = load_state(directory, "label_autoencoder")
        unet_state, _ = load_state(directory, "label_diffusion")
        if cfg.get("class") != "LabelGenerator":
            raise DataError("not a saved label generator (label_autoencoder.json has another class)", directory)
        obj = cls(**cfg["init"])
        obj._build(seed=0)
        try:
            obj.autoencoder.load_state_dict(ae_state)
            obj.unet.load_state_dict(unet_state)
        except RuntimeError as e:
            raise DataError(f"weights do not fit the saved configuration: {e}", directory) from e
        obj.scale_factor = float(cfg["scale_factor"])
        bank = cfg.get("condition_bank")
        obj.condition_bank = None if bank is None else torch.tensor(bank, dtype=torch.float32)
        obj.history = cfg.get("history", {})
        obj.device = resolve_device(device)
        obj.autoencoder.to(obj.device).eval()
        obj.unet.to(obj.device).eval()
        return obj


# ============================================================================================ image generator


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` should match row i of ``b`` and no other row (cosine similarity)."""
    a = F.normalize(a.flatten(1), dim=1)
    b = F.normalize(b.flatten(1), dim=1)
    logits = a @ b.t() / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def kld_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the code, averaged over the batch."""
    return (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)).mean()


class ImageGenerator:
    """SPADE VAE-GAN (MONAI ``SPADENet``): paints the style of an image onto a PV label map.

    Args:
        spatial_dims: 2 or 3.
        num_classes: K (None: from the training masks).
        in_channels: image channels (None: from the training images).
        image_size: spatial size (None: from the training cases); divisible by ``2 ** len(spade_channels)``.
        pv_sigma: smoothing (voxels) turning hard training labels into PV maps.
        spade_channels: encoder channels per level (the decoder mirrors them).
        z_dim: style code size.
        spade_hidden: hidden channels of the SPADE normalisation blocks.
        disc_channels, num_d, num_layers_d: MultiScalePatchDiscriminator (``num_layers_d=2``: with 3 it is
            far too large at 128² and fails at 64²).
        lambda_fm, lambda_kld, lambda_modality, lambda_contrastive: loss weights (0 turns a term off).
        temperature: InfoNCE temperature of the contrastive style loss.
        classifier_steps: steps of the modality/dataset classifier on real images (before the GAN).
        spade_steps, spade_batch_size, lr_g, lr_d: GAN optimisation (Adam, betas (0, 0.9), TTUR).
        augment: joint random spatial transforms of training images and PV maps.
        style_other_slice: take the style image from another slice of the same volume when possible.
        target_style_prob: fraction of each batch whose style comes from another domain's unlabelled
            images (when given); those fakes get the modality loss, not the discriminator.
        style_noise: std multiplier of the style code's posterior at sampling (0 = the posterior mean).
        sample_batch_size: images generated at once.
        progress: progress bars.
    """

    name: ClassVar[str] = "spade"
    #: options that do not change training (left out of the checkpoint fingerprint)
    sampling_options: ClassVar[frozenset[str]] = frozenset({"progress", "style_noise", "sample_batch_size"})

    def __init__(self, spatial_dims: int = 2, num_classes: int | None = None, in_channels: int | None = None,
                 image_size: Sequence[int] | None = None, *, pv_sigma: float = 0.5,
                 spade_channels: Sequence[int] = (16, 32, 64, 128), z_dim: int = 16, spade_hidden: int = 64,
                 disc_channels: int = 32, num_d: int = 2, num_layers_d: int = 2, lambda_fm: float = 10.0,
                 lambda_kld: float = 0.05, lambda_modality: float = 1.0, lambda_contrastive: float = 0.1,
                 temperature: float = 0.1, classifier_steps: int = 200, spade_steps: int = 1500,
                 spade_batch_size: int = 8, lr_g: float = 1e-4, lr_d: float = 4e-4, augment: bool = True,
                 style_other_slice: bool = True, target_style_prob: float = 0.5, style_noise: float = 1.0,
                 sample_batch_size: int = 16, progress: bool = True):
        self.config = _init_args(ImageGenerator.__init__, locals())
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if spade_batch_size < 2:
            raise ConfigError("spade_batch_size must be >= 2 (batch norm in the discriminator, contrastive loss)")
        if num_layers_d > 2:
            log.warning("num_layers_d=%d makes a very large multi-scale discriminator; 2 is advised", num_layers_d)
        self.net: torch.nn.Module | None = None
        self.classifier: torch.nn.Module | None = None
        self.domains: list[str] = []
        self.style_bank: dict[str, Any] = {}
        self.train_masks: list[np.ndarray] = []
        self.train_mask_ids: list[str] = []
        self.device = torch.device("cpu")
        self.history: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ networks

    @property
    def num_classes(self) -> int:
        if self.config["num_classes"] is None:
            raise ConfigError("num_classes is not known before fit")
        return int(self.config["num_classes"])

    @property
    def image_size(self) -> tuple[int, ...]:
        if self.config["image_size"] is None:
            raise ConfigError("image_size is not known before fit")
        return tuple(int(s) for s in self.config["image_size"])

    def _build(self, seed: int) -> None:
        from monai.networks.nets import SPADENet

        c = self.config
        _check_divisible(self.image_size, 2 ** len(c["spade_channels"]), "the SPADE image generator")
        with rng_scope(derive_seed(seed, "spade-init")):
            # SPADENet reverses (and extends) the channel list it is given: always pass a fresh list
            self.net = SPADENet(spatial_dims=c["spatial_dims"], in_channels=c["in_channels"],
                                out_channels=c["in_channels"], label_nc=self.num_classes,
                                input_shape=list(self.image_size), channels=[int(v) for v in c["spade_channels"]],
                                z_dim=c["z_dim"], is_vae=True, spade_intermediate_channels=c["spade_hidden"],
                                last_act=None)

    def _build_classifier(self, seed: int, n_domains: int) -> torch.nn.Module:
        from monai.networks.nets import Classifier

        with rng_scope(derive_seed(seed, "modality-classifier-init")):
            return Classifier(in_shape=(self.config["in_channels"], *self.image_size), classes=n_domains,
                              channels=(8, 16, 32), strides=(2, 2, 2), num_res_units=1)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Style code posterior (mu, logvar) of images (B, C, *S) already on the device."""
        return self.net.encoder(images)

    def decode(self, pv: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net.decoder(pv, z)

    # ------------------------------------------------------------------------------------------ fit

    def fit(self, train: list[Case], *, val: list[Case] | None = None, unlabelled: list[Case] | None = None,
            device: torch.device | str = "cpu", seed: int = 0, checkpoint_dir: str | Path | None = None,
            checkpoint_every: int = 100) -> dict[str, Any]:
        """Train the modality classifier (when there are >= 2 domains), then the SPADE VAE-GAN.

        With ``checkpoint_dir``, each stage is checkpointed there every ``checkpoint_every`` steps and at its
        end (``image_classifier.pt``, ``image_gan.pt``); a rerun with the same options, seed and data
        continues from there (finished stages are skipped) and ends with the same weights as an uninterrupted
        run. A checkpoint of another configuration is ignored (with a warning).
        """
        labelled = [c for c in train if c.mask is not None]
        if not labelled:
            raise DataError("the image generator needs labelled training cases")
        unlabelled = [c for c in (unlabelled or []) if c.spatial_shape == labelled[0].spatial_shape
                      and c.in_channels == labelled[0].in_channels]
        self.device = resolve_device(device)
        c = self.config
        if c["num_classes"] is None:
            c["num_classes"] = int(max(int(x.mask.max()) for x in labelled)) + 1
        if c["in_channels"] is None:
            c["in_channels"] = labelled[0].in_channels
        shape = _spatial_shape_of(labelled, "image generator")
        if c["image_size"] is None:
            c["image_size"] = list(shape)
        elif self.image_size != shape:
            raise DataError(f"cases are {shape} but the image generator was set up for {self.image_size}")
        images = torch.stack([torch.as_tensor(x.image, dtype=torch.float32) for x in labelled])
        masks = torch.stack([torch.as_tensor(x.mask).long() for x in labelled])
        pvs = labels_to_pv(masks, self.num_classes, sigma=c["pv_sigma"])
        self.train_masks = [np.asarray(x.mask) for x in labelled]
        self.train_mask_ids = [x.case_id for x in labelled]
        # style partners: other slices of the same volume
        groups: dict[str, list[int]] = {}
        for i, x in enumerate(labelled):
            groups.setdefault(volume_of(x), []).append(i)
        partners = [[j for j in groups[volume_of(x)] if j != i] or [i] for i, x in enumerate(labelled)]
        # domains
        source = domain_of(labelled[0], "train")
        self.domains = [source]
        for x in unlabelled:
            d = domain_of(x, "target")
            if d not in self.domains:
                self.domains.append(d)
        target = [x for x in unlabelled if domain_of(x, "target") != source]
        target_images = torch.stack([torch.as_tensor(x.image, dtype=torch.float32) for x in target]) \
            if target else None
        target_dom = torch.tensor([self.domains.index(domain_of(x, "target")) for x in target]) if target else None

        ckpt = FitCheckpoint(checkpoint_dir, _fit_key("ImageGenerator", c, set(self.sampling_options), seed, images,
                                                      masks, partners, self.domains, target_images, target_dom),
                             checkpoint_every)
        self._build(seed)
        g = torch_generator(derive_seed(seed, "spade-fit"))
        t0 = time.perf_counter()
        clf_stats: dict[str, Any] = {"used": False}
        if len(self.domains) >= 2 and c["lambda_modality"] > 0 and target_images is not None:
            clf_stats = self._fit_classifier(images, target_images, target_dom, g, seed, ckpt)
        elif c["lambda_modality"] > 0:
            log.info("modality loss off: the training images come from one domain only")
        t1 = time.perf_counter()
        gan_stats = self._fit_gan(images, pvs, partners, target_images, target_dom, g, ckpt)
        t2 = time.perf_counter()
        self._fill_style_bank(labelled, unlabelled)
        self.history = {"classifier": clf_stats, "gan": gan_stats, "classifier_seconds": t1 - t0,
                        "gan_seconds": t2 - t1, "domains": self.domains, "n_train": len(labelled),
                        "n_target": 0 if target_images is None else len(target_images)}
        return self.history

    def _fit_classifier(self, images: torch.Tensor, target_images: torch.Tensor, target_dom: torch.Tensor,
                        g: torch.Generator, seed: int, ckpt: FitCheckpoint | None = None) -> dict[str, Any]:
        c = self.config
        dev = self.device
        n_dom = len(self.domains)
        clf = self._build_classifier(seed, n_dom).to(dev).train()
        opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
        all_images = torch.cat([images, target_images])
        all_dom = torch.cat([torch.zeros(len(images), dtype=torch.long), target_dom])
        # balanced draws: half from the source domain, half from the others
        steps, bs = int(c["classifier_steps"]), max(2, int(c["spade_batch_size"]))
        spatial = _default_spatial_aug(c["spatial_dims"])
        stage = (ckpt or FitCheckpoint(None)).stage("image_classifier", modules={"classifier": clf},
                                                    optimizers={"classifier": opt}, generators={"data": g})
        accs: list[float] = stage.restore().get("accs", [])
        bar = _progress(steps, "modality classifier", c["progress"], initial=stage.start)
        for step in range(stage.start, steps):
            half = bs // 2
            i_src = torch.randint(len(images), (half,), generator=g)
            i_tgt = len(images) + torch.randint(len(target_images), (bs - half,), generator=g)
            idx = torch.cat([i_src, i_tgt])
            x = _augment(all_images[idx], g, spatial).to(dev)
            y = F.one_hot(all_dom[idx], n_dom).float().to(dev)
            logits = clf(x)
            loss = F.binary_cross_entropy_with_logits(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            accs.append(float((logits.argmax(1) == all_dom[idx].to(dev)).float().mean()))
            bar.update(1)
            stage.after_step(step + 1, steps, accs=accs)
        bar.close()
        clf.eval()
        for p in clf.parameters():
            p.requires_grad_(False)
        self.classifier = clf
        return {"used": True, "steps": steps, "train_accuracy": _tail_mean(accs)}

    def _fit_gan(self, images: torch.Tensor, pvs: torch.Tensor, partners: list[list[int]],
                 target_images: torch.Tensor | None, target_dom: torch.Tensor | None,
                 g: torch.Generator, ckpt: FitCheckpoint | None = None) -> dict[str, Any]:
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import MultiScalePatchDiscriminator

        c = self.config
        dev = self.device
        k, ch = self.num_classes, c["in_channels"]
        net = self.net.to(dev).train()
        with rng_scope(derive_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)), "spade-disc-init")):
            disc = MultiScalePatchDiscriminator(num_d=c["num_d"], num_layers_d=c["num_layers_d"],
                                                spatial_dims=c["spatial_dims"], channels=c["disc_channels"],
                                                in_channels=ch + k, out_channels=1,
                                                minimum_size_im=min(self.image_size)).to(dev)
        hinge = PatchAdversarialLoss(criterion="hinge")
        opt_g = torch.optim.Adam(net.parameters(), lr=c["lr_g"], betas=(0.0, 0.9))
        opt_d = torch.optim.Adam(disc.parameters(), lr=c["lr_d"], betas=(0.0, 0.9))
        spatial = _default_spatial_aug(c["spatial_dims"])
        affine = RandomSpatial(rotate_deg=15.0, scale=(0.9, 1.1), translate=0.08)
        steps, bs = int(c["spade_steps"]), int(c["spade_batch_size"])
        use_target = target_images is not None and c["target_style_prob"] > 0
        stage = (ckpt or FitCheckpoint(None)).stage(
            "image_gan", modules={"spade": net, "discriminator": disc},
            optimizers={"spade": opt_g, "discriminator": opt_d}, generators={"data": g})
        hist: list[dict[str, float]] = stage.restore().get("hist", [])  # restores g after its draw for disc init
        bar = _progress(steps, "SPADE image generator", c["progress"], initial=stage.start)
        for step in range(stage.start, steps):
            idx = torch.randint(len(images), (bs,), generator=g)
            style_idx = torch.tensor([partners[i][int(torch.randint(len(partners[i]), (1,), generator=g))]
                                      if c["style_other_slice"] else i for i in idx.tolist()])
            n_t = 0
            if use_target:
                n_t = int((torch.rand(bs, generator=g) < c["target_style_prob"]).sum())
                n_t = min(n_t, bs - 2)  # keep two pairs for the discriminator (batch norm needs > 1 sample)
            content = torch.cat([images[idx], pvs[idx]], 1)
            if c["augment"]:
                content = _augment(content, g, spatial)
            x_c, pv_c = content[:, :ch].to(dev), content[:, ch:].to(dev)
            x_s = images[style_idx]
            dom = torch.zeros(bs, dtype=torch.long)
            if n_t:
                t_idx = torch.randint(len(target_images), (n_t,), generator=g)
                x_s = torch.cat([x_s[: bs - n_t], target_images[t_idx]])
                dom[bs - n_t:] = target_dom[t_idx]
            x_s = x_s.to(dev)
            mu, logvar = net.encoder(x_s)
            eps = torch.randn(mu.shape, generator=g).to(dev)
            z = mu + torch.exp(0.5 * logvar) * eps
            fake = net.decoder(pv_c, z)
            src = slice(0, bs - n_t)
            # generator update
            out_fake, feat_fake = disc(torch.cat([fake[src], pv_c[src]], 1))
            with torch.no_grad():
                _, feat_real = disc(torch.cat([x_c[src], pv_c[src]], 1))
            g_adv = hinge(out_fake, target_is_real=True, for_discriminator=False)
            fm = torch.stack([F.l1_loss(a, b.detach()) for fa, fr in zip(feat_fake, feat_real)
                              for a, b in zip(fa, fr)]).mean() if c["lambda_fm"] > 0 else torch.zeros((), device=dev)
            kld = kld_loss(mu, logvar)
            loss = g_adv + c["lambda_fm"] * fm + c["lambda_kld"] * kld
            rec = {"g_adv": float(g_adv.detach()), "fm": float(fm.detach()), "kld": float(kld.detach())}
            if self.classifier is not None and c["lambda_modality"] > 0:
                target_onehot = F.one_hot(dom, len(self.domains)).float().to(dev)
                mod = F.binary_cross_entropy_with_logits(self.classifier(fake), target_onehot)
                loss = loss + c["lambda_modality"] * mod
                rec["modality"] = float(mod.detach())
            if c["lambda_contrastive"] > 0 and bs >= 2:
                x_aff = _augment(x_s.cpu(), g, affine).to(dev)
                mu_aff, _ = net.encoder(x_aff)
                con = info_nce(mu, mu_aff, c["temperature"])
                loss = loss + c["lambda_contrastive"] * con
                rec["contrastive"] = float(con.detach())
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            # discriminator update
            out_fake_d, _ = disc(torch.cat([fake[src].detach(), pv_c[src]], 1))
            out_real_d, _ = disc(torch.cat([x_c[src], pv_c[src]], 1))
            d_loss = hinge(out_fake_d, target_is_real=False, for_discriminator=True) + \
                hinge(out_real_d, target_is_real=True, for_discriminator=True)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            rec["d_loss"] = float(d_loss.detach())
            hist.append(rec)
            bar.update(1)
            bar.set_postfix(g=f"{rec['g_adv']:.3f}", d=f"{rec['d_loss']:.3f}")
            stage.after_step(step + 1, steps, hist=hist)
        bar.close()
        net.eval()
        tail = hist[-max(1, len(hist) // 10):]
        summary = {k2: float(np.mean([h[k2] for h in tail if k2 in h])) for k2 in (tail[0] if tail else {})}
        return {"steps": steps, "final": summary}

    @torch.no_grad()
    def _fill_style_bank(self, labelled: list[Case], unlabelled: list[Case]) -> None:
        """Style code posteriors of every training image (and unlabelled image), kept with the model."""
        cases = list(labelled) + list(unlabelled)
        source = domain_of(labelled[0], "train")
        mus, logvars = [], []
        for start in range(0, len(cases), 32):
            x = torch.stack([torch.as_tensor(cc.image, dtype=torch.float32) for cc in cases[start:start + 32]])
            mu, logvar = self.encode(x.to(self.device))
            mus.append(mu.cpu())
            logvars.append(logvar.cpu())
        self.style_bank = {
            "mu": torch.cat(mus), "logvar": torch.cat(logvars), "ids": [cc.case_id for cc in cases],
            "domains": [domain_of(cc, source if i < len(labelled) else "target") for i, cc in enumerate(cases)],
        }

    # ------------------------------------------------------------------------------------------ sampling

    def style_pool(self, domain: str | None = None) -> list[int]:
        """Indices of the style bank to draw from: one domain ("source", "target", or a domain name)."""
        if not self.style_bank:
            raise ConfigError("no style codes stored: fit the image generator or pass style images")
        doms = self.style_bank["domains"]
        source = self.domains[0] if self.domains else doms[0]
        if domain in (None, "source", "train"):
            pool = [i for i, d in enumerate(doms) if d == source]
        elif domain == "target":
            pool = [i for i, d in enumerate(doms) if d != source]
        elif domain == "any":
            pool = list(range(len(doms)))
        else:
            pool = [i for i, d in enumerate(doms) if d == domain]
        if not pool:
            raise ConfigError(f"no stored style codes of domain {domain!r} (domains: {sorted(set(doms))})")
        return pool

    @torch.no_grad()
    def style_codes_of(self, styles: Sequence[Case]) -> dict[str, Any]:
        """Encode style images (e.g. an unlabelled target folder) into a temporary style bank."""
        if not styles:
            raise DataError("no style images given")
        for s in styles:
            if s.spatial_shape != self.image_size or s.in_channels != self.config["in_channels"]:
                raise DataError(f"style image is {s.spatial_shape} with {s.in_channels} channel(s), the generator "
                                f"works on {self.image_size} with {self.config['in_channels']}", s.case_id)
        mus, logvars = [], []
        for start in range(0, len(styles), 32):
            x = torch.stack([torch.as_tensor(s.image, dtype=torch.float32) for s in styles[start:start + 32]])
            mu, logvar = self.encode(x.to(self.device))
            mus.append(mu.cpu())
            logvars.append(logvar.cpu())
        return {"mu": torch.cat(mus), "logvar": torch.cat(logvars), "ids": [s.case_id for s in styles],
                "domains": [domain_of(s, "given") for s in styles]}

    def _content_for_seed(self, seed: int, augment: bool) -> tuple[torch.Tensor, str, dict[str, Any] | None]:
        """A training mask (optionally randomly warped) as a PV map, chosen by ``seed``."""
        if not self.train_masks:
            raise ConfigError("no masks given and no training masks in memory (a loaded image generator needs "
                              "masks or a label generator)")
        g = torch_generator(derive_seed(seed, "content"))
        i = int(torch.randint(len(self.train_masks), (1,), generator=g))
        pv = labels_to_pv(torch.as_tensor(self.train_masks[i]).long()[None], self.num_classes,
                          sigma=self.config["pv_sigma"])[0]
        params = None
        if augment:
            spatial = RandomSpatial(rotate_deg=15.0, scale=(0.85, 1.15), translate=0.08, elastic_alpha=0.02, p=0.9)
            params = spatial.draw(pv.shape[1:], g)
            pv = renormalise_pv(spatial.apply(pv, None, params)[0][None])[0]
        return pv, self.train_mask_ids[i], params

    @torch.no_grad()
    def generate(self, pv: torch.Tensor, seeds: Sequence[int], *, styles: dict[str, Any] | None = None,
                 style_domain: str | None = None) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Images (n, C, *S) on the CPU for PV maps (n, K, *S), one per seed, with style records.

        Each seed picks a style code from ``styles`` (see ``style_codes_of``) or from the stored bank
        (filtered by ``style_domain``) and draws the code from its posterior (scaled by ``style_noise``).
        """
        if self.net is None:
            raise ConfigError("the image generator is not trained (fit it or load a saved one)")
        bank = styles if styles is not None else self.style_bank
        pool = list(range(len(bank["ids"]))) if styles is not None else self.style_pool(style_domain)
        zs, records = [], []
        for s in seeds:
            g = torch_generator(derive_seed(int(s), "style"))
            j = pool[int(torch.randint(len(pool), (1,), generator=g))]
            mu, logvar = bank["mu"][j], bank["logvar"][j]
            z = mu + self.config["style_noise"] * torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
            zs.append(z)
            records.append({"style_source": bank["ids"][j], "style_domain": bank["domains"][j]})
        z = torch.stack(zs).to(self.device)
        out = []
        for start in range(0, len(z), int(self.config["sample_batch_size"])):
            sl = slice(start, start + int(self.config["sample_batch_size"]))
            out.append(self.decode(pv[sl].to(self.device).float(), z[sl]).float().cpu())
        return torch.cat(out), records

    def sample_from_seeds(self, seeds: Sequence[int], *, pv: torch.Tensor | None = None,
                          source_masks: Sequence[str] | None = None, styles: dict[str, Any] | None = None,
                          style_domain: str | None = None, augment_masks: bool = True) -> list[Case]:
        """One pair per seed: given PV maps, or training masks (warped when ``augment_masks``)."""
        seeds = [int(s) for s in seeds]
        contents: list[dict[str, Any]] = []
        if pv is None:
            maps = []
            for s in seeds:
                p, mid, params = self._content_for_seed(s, augment_masks)
                maps.append(p)
                contents.append({"source_mask": mid, "mask_augmented": params is not None})
            pv = torch.stack(maps)
        else:
            names = list(source_masks) if source_masks is not None else ["given"] * len(seeds)
            contents = [{"source_mask": n} for n in names]
        images, recs = self.generate(pv, seeds, styles=styles, style_domain=style_domain)
        labels = pv_to_labels(pv)
        out = []
        for i, s in enumerate(seeds):
            meta = {"method": self.name, "seed": s, **contents[i], **recs[i]}
            out.append(Case(f"spade_{s}", images[i].numpy().astype(np.float32), labels[i].numpy().astype(np.int64),
                            meta))
        return out

    def sample(self, n: int, *, generator: torch.Generator, masks: list[Any] | None = None,
               styles: Sequence[Case] | None = None, style_domain: str | None = None,
               augment_masks: bool = True) -> list[Case]:
        """``n`` pairs on training masks (warped), or one per given mask (label maps or PV maps (K, *S))."""
        style_bank = self.style_codes_of(styles) if styles else None
        if masks is None:
            return self.sample_from_seeds(draw_seeds(n, generator), styles=style_bank, style_domain=style_domain,
                                          augment_masks=augment_masks)
        pv = torch.stack([self.as_pv(m) for m in masks])
        return self.sample_from_seeds(draw_seeds(len(masks), generator), pv=pv,
                                      source_masks=[f"given:{i}" for i in range(len(masks))], styles=style_bank,
                                      style_domain=style_domain)

    def as_pv(self, m: Any) -> torch.Tensor:
        """A label map (*S) int or a PV map (K, *S) float -> PV map tensor (K, *S)."""
        a = np.asarray(m)
        if np.issubdtype(a.dtype, np.floating) and a.ndim == len(self.image_size) + 1:
            return renormalise_pv(torch.as_tensor(a, dtype=torch.float32)[None])[0]
        return labels_to_pv(torch.as_tensor(a).long()[None], self.num_classes, sigma=self.config["pv_sigma"])[0]

    # ------------------------------------------------------------------------------------------ save / load

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        if self.net is None:
            raise ConfigError("nothing to save: the image generator is not trained")
        directory = Path(directory)
        cfg = {"class": "ImageGenerator", "init": self.config, "domains": self.domains, "history": self.history,
               "style_ids": self.style_bank.get("ids", []), "style_domains": self.style_bank.get("domains", []),
               "has_classifier": self.classifier is not None}
        save_module(self.net, directory, cfg, name="spade")
        if self.classifier is not None:
            save_module(self.classifier, directory, {"n_domains": len(self.domains)}, name="modality_classifier")
        if self.style_bank:
            with atomic_path(directory / "style_bank.safetensors") as tmp:
                save_file({"mu": self.style_bank["mu"].contiguous(), "logvar": self.style_bank["logvar"].contiguous()},
                          str(tmp))

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> ImageGenerator:
        from safetensors.torch import load_file

        directory = Path(directory)
        state, cfg = load_state(directory, "spade")
        if cfg.get("class") != "ImageGenerator":
            raise DataError("not a saved image generator (spade.json has another class)", directory)
        obj = cls(**cfg["init"])
        obj._build(seed=0)
        try:
            obj.net.load_state_dict(state)
        except RuntimeError as e:
            raise DataError(f"weights do not fit the saved configuration: {e}", directory) from e
        obj.domains = list(cfg.get("domains", []))
        obj.history = cfg.get("history", {})
        obj.device = resolve_device(device)
        obj.net.to(obj.device).eval()
        if cfg.get("has_classifier"):
            cstate, ccfg = load_state(directory, "modality_classifier")
            obj.classifier = obj._build_classifier(0, int(ccfg["n_domains"]))
            obj.classifier.load_state_dict(cstate)
            obj.classifier.to(obj.device).eval()
        bank_path = directory / "style_bank.safetensors"
        if bank_path.exists():
            t = load_file(str(bank_path))
            obj.style_bank = {"mu": t["mu"], "logvar": t["logvar"], "ids": list(cfg["style_ids"]),
                              "domains": list(cfg["style_domains"])}
        return obj


# ============================================================================================ brainSPADE


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route flat options to the label and the image generator (shared names go to both)."""
    label_names = set(inspect.signature(LabelGenerator.__init__).parameters) - {"self"}
    image_names = set(inspect.signature(ImageGenerator.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - label_names - image_names)
    if unknown:
        raise ConfigError(f"unknown brainSPADE generator options: {unknown}")
    label = {k: v for k, v in options.items() if k in label_names}
    image = {k: v for k, v in options.items() if k in image_names}
    return label, image


class BrainSpadeGenerator:
    """Label generator + image generator: fully synthetic (image, label) pairs.

    Options are those of ``LabelGenerator`` and ``ImageGenerator`` (flat; shared names such as
    ``spatial_dims``, ``num_classes``, ``pv_sigma`` go to both).
    """

    name: ClassVar[str] = "brainspade"

    def __init__(self, **options: Any):
        label_opts, image_opts = _split_options(options)
        self.options = dict(options)
        self.labels = LabelGenerator(**label_opts)
        self.images = ImageGenerator(**image_opts)

    @classmethod
    def from_parts(cls, labels: LabelGenerator, images: ImageGenerator) -> BrainSpadeGenerator:
        obj = cls.__new__(cls)
        obj.options = {}
        obj.labels, obj.images = labels, images
        return obj

    def fit(self, train: list[Case], *, val: list[Case] | None = None, unlabelled: list[Case] | None = None,
            device: torch.device | str = "cpu", seed: int = 0, checkpoint_dir: str | Path | None = None,
            checkpoint_every: int = 100) -> dict[str, Any]:
        """Fit the label generator, then the image generator (both resumable with ``checkpoint_dir``)."""
        stats_l = self.labels.fit(train, val=val, unlabelled=unlabelled, device=device, seed=derive_seed(seed, "L"),
                                  checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every)
        stats_i = self.images.fit(train, val=val, unlabelled=unlabelled, device=device, seed=derive_seed(seed, "I"),
                                  checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every)
        return {"labels": stats_l, "images": stats_i}

    def sample_from_seeds(self, seeds: Sequence[int], *, masks: Sequence[Any] | None = None,
                          mask_ids: Sequence[str] | None = None, conditions: Any = None,
                          styles: dict[str, Any] | None = None, style_domain: str | None = None,
                          sampler: str | None = None, steps: int | None = None) -> list[Case]:
        """One pair per seed: labels from the label generator (or ``masks``), image painted by SPADE."""
        seeds = [int(s) for s in seeds]
        if masks is not None:
            pv = torch.stack([self.images.as_pv(m) for m in masks])
            label_recs = [{"source_mask": mid} for mid in (mask_ids or ["given"] * len(seeds))]
        else:
            pv, label_recs = self.labels.sample_pv(seeds, conditions=conditions, sampler=sampler, steps=steps)
            label_recs = [{"source_mask": "label-generator", **r} for r in label_recs]
        images, style_recs = self.images.generate(pv, seeds, styles=styles, style_domain=style_domain)
        labels = pv_to_labels(pv)
        out = []
        for i, s in enumerate(seeds):
            meta = {"method": self.name, **label_recs[i], **style_recs[i], "seed": s}
            out.append(Case(f"brainspade_{s}", images[i].numpy().astype(np.float32),
                            labels[i].numpy().astype(np.int64), meta))
        return out

    def sample(self, n: int, *, generator: torch.Generator, masks: list[Any] | None = None,
               styles: Sequence[Case] | None = None, style_domain: str | None = None,
               sampler: str | None = None, steps: int | None = None) -> list[Case]:
        style_bank = self.images.style_codes_of(styles) if styles else None
        if masks is not None:
            return self.sample_from_seeds(draw_seeds(len(masks), generator), masks=masks,
                                          mask_ids=[f"given:{i}" for i in range(len(masks))], styles=style_bank,
                                          style_domain=style_domain)
        seeds = draw_seeds(n, generator)
        bs = int(self.labels.config["sample_batch_size"])
        out: list[Case] = []
        for start in range(0, n, bs):
            out.extend(self.sample_from_seeds(seeds[start:start + bs], styles=style_bank, style_domain=style_domain,
                                              sampler=sampler, steps=steps))
        return out

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.labels.save(directory / "labels")
        self.images.save(directory / "images")
        write_json(directory / "brainspade.json", {"class": "BrainSpadeGenerator", "options": self.options})

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> BrainSpadeGenerator:
        directory = Path(directory)
        if not (directory / "brainspade.json").exists():
            raise DataError("not a saved brainSPADE generator (no brainspade.json)", directory)
        obj = cls.from_parts(LabelGenerator.load(directory / "labels", device),
                             ImageGenerator.load(directory / "images", device))
        import json

        obj.options = json.loads((directory / "brainspade.json").read_text()).get("options", {})
        return obj


# ============================================================================================ streaming to disk


def write_synthetic_dataset(generator: BrainSpadeGenerator | ImageGenerator, out_dir: str | Path, n: int, *,
                            info: DatasetInfo, seed: int = 0, batch_size: int = 16,
                            masks: Sequence[Any] | None = None, mask_ids: Sequence[str] | None = None,
                            styles: Sequence[Case] | None = None, style_domain: str | None = None,
                            sampler: str | None = None, steps: int | None = None, model: str | None = None,
                            fmt: str = "auto", overwrite: bool = False, progress: bool = True) -> Path:
    """Stream ``n`` synthetic pairs into a dataset folder; a killed run resumes where it stopped.

    Sample ``i`` is named ``syn{i:06d}`` and made from seed ``derive_seed(seed, "sample", i)``, so the
    resumed samples are the ones an uninterrupted run would have written. Only one batch is in memory.
    With ``masks``, sample ``i`` uses ``masks[i % len(masks)]``. Each case's provenance (seed, model, style
    source, sampler, source mask) lands in ``provenance.jsonl`` and the dataset's own ``dataset.json``.
    """
    from segsynth.data.writer import DatasetWriter

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        if (out_dir / "dataset.json").exists():
            log.info("%s is complete already", out_dir)
            return out_dir
    style_bank = None
    if styles:
        img_gen = generator.images if isinstance(generator, BrainSpadeGenerator) else generator
        style_bank = img_gen.style_codes_of(styles)
    kind = "brainspade" if isinstance(generator, BrainSpadeGenerator) else "spade"
    provenance = {"method": kind, "model": model, "seed": seed, "n": n, "sampler": sampler, "steps": steps,
                  "style_domain": style_domain, "style_images": [s.case_id for s in styles] if styles else None,
                  "masks": len(masks) if masks is not None else None}
    with DatasetWriter(out_dir, info, fmt, provenance, name=f"{info.name} synthetic ({kind})",
                       overwrite=overwrite) as writer:
        todo = [i for i in range(n) if not writer.has(f"syn{i:06d}")]
        bar = _progress(len(todo), f"sampling {kind}", progress)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            seeds = [derive_seed(seed, "sample", i) for i in chunk]
            chunk_masks = None if masks is None else [masks[i % len(masks)] for i in chunk]
            chunk_ids = None if masks is None else [
                (mask_ids[i % len(masks)] if mask_ids is not None else f"given:{i % len(masks)}") for i in chunk]
            if isinstance(generator, BrainSpadeGenerator):
                cases = generator.sample_from_seeds(seeds, masks=chunk_masks, mask_ids=chunk_ids, styles=style_bank,
                                                    style_domain=style_domain, sampler=sampler, steps=steps)
            else:
                pv = None if chunk_masks is None else torch.stack([generator.as_pv(m) for m in chunk_masks])
                cases = generator.sample_from_seeds(seeds, pv=pv, source_masks=chunk_ids, styles=style_bank,
                                                    style_domain=style_domain)
            for i, case in zip(chunk, cases):
                case.case_id = f"syn{i:06d}"
                case.meta.update(index=i, model=model)
                writer.add(case)
            bar.update(len(chunk))
        bar.close()
    return out_dir


# ============================================================================================ sweep methods


_METHOD_OPTIONS = {
    "n_synthetic": 500,        # synthetic pairs sampled for the segmenter
    "mode": "mixed",           # "synthetic" (S: synthetic only) or "mixed" (H: real + synthetic)
    "real_weight": 0.5,        # share of real pairs in each batch in "mixed" mode
    "style": "source",         # style codes: "source" (training images), "target" (other-domain unlabelled), "any"
    "augment_real": False,     # classical augmentation of the real pairs in "mixed" mode
    "reuse": True,             # reuse a generator saved in the run folder (resumed sweeps)
    "sampler": None,           # brainspade: "ddim" / "ddpm" (default: the generator's)
    "sampling_steps": None,    # brainspade: DDIM steps at sampling
}


class _SyntheticPairsMethod(Method):
    """Shared run(): fit (or reload) a generator, sample pairs, train one segmenter on them (+ real)."""

    generator_cls: ClassVar[type] = ImageGenerator

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.method_options = {k: options.get(k, v) for k, v in _METHOD_OPTIONS.items()}
        gen_opts = {k: v for k, v in options.items() if k not in _METHOD_OPTIONS}
        if self.method_options["mode"] not in ("synthetic", "mixed"):
            raise ConfigError(f"{self.name}.mode must be 'synthetic' or 'mixed', not {self.method_options['mode']!r}")
        if self.method_options["style"] not in ("source", "target", "any"):
            raise ConfigError(f"{self.name}.style must be 'source', 'target' or 'any'")
        if not 0.0 <= float(self.method_options["real_weight"]) < 1.0:
            raise ConfigError(f"{self.name}.real_weight must be in [0, 1)")
        names = self._generator_option_names()
        unknown = sorted(set(gen_opts) - names)
        if unknown:
            raise ConfigError(f"unknown options for method {self.name!r}: {unknown}; known: "
                              f"{sorted(set(_METHOD_OPTIONS) | names)}")
        self.generator_options = gen_opts

    def _generator_option_names(self) -> set[str]:
        return set(inspect.signature(ImageGenerator.__init__).parameters) - {"self"}

    def _make_generator(self, ctx: MethodContext) -> Any:
        opts = {"spatial_dims": ctx.info.spatial_dims, "num_classes": ctx.info.num_classes,
                "progress": bool(ctx.train_config.progress) if ctx.train_config else True,
                **self.generator_options}
        return self.generator_cls(**opts)

    def fitted_generator(self, ctx: MethodContext) -> Any:
        """The generator of this run: reloaded from ``workdir/generator`` when saved there, else fitted.

        With ``ctx.workdir`` the fit checkpoints to ``workdir/generator_checkpoint`` (a killed run resumes
        there); that folder is removed once the fitted generator is saved.
        """
        gen_dir = ctx.workdir / "generator" if ctx.workdir else None
        ckpt_dir = ctx.workdir / "generator_checkpoint" if ctx.workdir else None
        marker = gen_dir / "fit_stats.json" if gen_dir else None
        if self.method_options["reuse"] and marker is not None and marker.exists():
            log.info("%s: reusing the generator saved in %s", self.name, gen_dir)
            gen = self.generator_cls.load(gen_dir, ctx.device)
            if isinstance(gen, ImageGenerator):
                gen.train_masks = [np.asarray(c.mask) for c in ctx.train]
                gen.train_mask_ids = [c.case_id for c in ctx.train]
            return gen
        gen = self._make_generator(ctx)
        stats = gen.fit(ctx.train, val=ctx.val, unlabelled=ctx.unlabelled, device=ctx.device, seed=ctx.seed,
                        checkpoint_dir=ckpt_dir)
        if gen_dir is not None:
            gen.save(gen_dir)
            write_json(marker, stats)
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # superseded by the saved generator
        return gen

    def synthetic_cases(self, gen: Any, ctx: MethodContext) -> list[Case]:
        raise NotImplementedError

    def training_source(self, ctx: MethodContext) -> Any:
        from segsynth.data.transforms import classical_augmentation
        from segsynth.segment.sources import CaseSource, MixedSource

        gen = self.fitted_generator(ctx)
        synth = self.synthetic_cases(gen, ctx)
        patch = ctx.train_config.patch_size if ctx.train_config else None
        k = ctx.info.num_classes
        syn_source = CaseSource(synth, patch_size=patch, num_classes=k)
        if self.method_options["mode"] == "synthetic":
            return syn_source
        aug = classical_augmentation("combined", ctx.info.spatial_dims) if self.method_options["augment_real"] else None
        real = CaseSource(ctx.train, transform=aug, patch_size=patch, num_classes=k)
        w = float(self.method_options["real_weight"])
        return MixedSource([(real, w), (syn_source, 1.0 - w)])


class SpadeMethod(_SyntheticPairsMethod):
    """SPADE image generator on the training masks and warped copies of them (style from the training images)."""

    name: ClassVar[str] = "spade"
    description: ClassVar[str] = "SPADE VAE-GAN painting images on (augmented) training masks"
    generator_cls: ClassVar[type] = ImageGenerator

    def synthetic_cases(self, gen: ImageGenerator, ctx: MethodContext) -> list[Case]:
        g = torch_generator(derive_seed(ctx.seed, "spade-sample"))
        return gen.sample(int(self.method_options["n_synthetic"]), generator=g,
                          style_domain=self.method_options["style"], augment_masks=True)


class BrainSpadeMethod(_SyntheticPairsMethod):
    """Label diffusion + SPADE: fully synthetic pairs (brainSPADE)."""

    name: ClassVar[str] = "brainspade"
    description: ClassVar[str] = "brainSPADE: latent-diffusion label maps + SPADE images (fully synthetic pairs)"
    generator_cls: ClassVar[type] = BrainSpadeGenerator

    def _generator_option_names(self) -> set[str]:
        return ((set(inspect.signature(LabelGenerator.__init__).parameters)
                 | set(inspect.signature(ImageGenerator.__init__).parameters)) - {"self"})

    def synthetic_cases(self, gen: BrainSpadeGenerator, ctx: MethodContext) -> list[Case]:
        g = torch_generator(derive_seed(ctx.seed, "brainspade-sample"))
        return gen.sample(int(self.method_options["n_synthetic"]), generator=g,
                          style_domain=self.method_options["style"], sampler=self.method_options["sampler"],
                          steps=self.method_options["sampling_steps"])


def sampling_speed(gen: BrainSpadeGenerator, n: int, *, sampler: str, steps: int | None = None,
                   batch_size: int = 16, seed: int = 0) -> dict[str, float]:
    """Pairs per second of ``gen`` with one sampler setting (label diffusion + decode + SPADE)."""
    t0 = time.perf_counter()
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        gen.sample_from_seeds([derive_seed(seed, "speed", done + j) for j in range(b)], sampler=sampler, steps=steps)
        done += b
    sec = time.perf_counter() - t0
    return {"sampler": sampler, "steps": steps if sampler == "ddim" else gen.labels.config["num_train_timesteps"],
            "n": n, "seconds": sec, "pairs_per_s": n / sec if sec > 0 else math.inf}

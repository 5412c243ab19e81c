"""brainSPADE's label generator: KL autoencoder over PV maps + latent diffusion (fit, sample, save/load)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from segsynth.data.case import Case
from segsynth.data.partial_volume import labels_to_pv, pv_to_labels, renormalise_pv
from segsynth.errors import ConfigError, DataError
from segsynth.generators.brainspade.helpers import (
    CONDITIONS,
    DPM_DEFAULT_STEPS,
    SAMPLERS,
    _augment,
    _check_divisible,
    _default_spatial_aug,
    _fit_key,
    _init_args,
    _spatial_shape_of,
    as_layout,
    draw_seeds,
    load_weights,
    rng_scope,
    sampling_layout,
)
from segsynth.generators.brainspade.losses import SegmenterFeatureLoss, gaussian_kl
from segsynth.generators.fit_checkpoint import FitCheckpoint
from segsynth.generators.fit_loop import FitLoop, optimizer_step, tail_mean
from segsynth.utils.config import load_state, save_module
from segsynth.utils.device import resolve_device
from segsynth.utils.precision import check_precision
from segsynth.utils.seed import derive_seed, torch_generator


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
        sampler: "ddim" (default), "ddpm" or "dpm" (DPM-Solver++(2M), ``segsynth.generators.brainspade.samplers``:
            the DDIM quality in 10-20 steps).
        sampling_steps: DDIM steps (DDPM always runs ``num_train_timesteps``; "dpm" runs ``DPM_DEFAULT_STEPS``
            unless ``steps`` is given when sampling).
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
                 sample_batch_size: int = 16, progress: bool = True, precision: str = "fp32"):
        self.config = _init_args(LabelGenerator.__init__, locals())
        check_precision(precision, "precision")
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
        elif sampler == "dpm":
            from segsynth.generators.brainspade.samplers import DPMSolverMultistepScheduler

            sch = DPMSolverMultistepScheduler(**kw)
            sch.set_timesteps(int(steps or DPM_DEFAULT_STEPS))
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
        loop = FitLoop("label autoencoder", steps, progress=c["progress"], stage=stage, device=dev,
                       precision=c["precision"])
        for step in loop:
            idx = torch.randint(len(pvs), (bs,), generator=g)
            x = pvs[idx]
            if c["augment"]:
                x = _augment(x, g, spatial)
            x = x.to(dev)
            with loop.autocast():
                mu, sigma = ae.encode(x)
                eps = torch.randn(mu.shape, generator=g).to(dev)
                recon = torch.softmax(ae.decode(mu + sigma * eps), 1)
                l1 = (recon - x).abs().mean()
                kl = gaussian_kl(mu, sigma)
                loss = l1 + c["kl_weight"] * kl
                if perceptual is not None:
                    loss = loss + c["perceptual_weight"] * perceptual(recon, x)
                use_adv = c["adv_weight"] > 0 and step >= adv_from
                if use_adv:
                    g_adv = adv(disc(recon)[-1], target_is_real=True, for_discriminator=False)
                    loss = loss + c["adv_weight"] * g_adv
            optimizer_step(opt_g, loss)
            last = {"l1": float(l1.detach()), "kl": float(kl.detach())}
            if use_adv:
                with loop.autocast():
                    d_loss = 0.5 * (adv(disc(recon.detach())[-1], target_is_real=False, for_discriminator=True)
                                    + adv(disc(x)[-1], target_is_real=True, for_discriminator=True))
                optimizer_step(opt_d, d_loss)
                last.update(g_adv=float(g_adv.detach()), d_loss=float(d_loss.detach()))
            l1_hist.append(last["l1"])
            loop.done(step, {"l1": f"{last['l1']:.4f}"}, last=last, l1_hist=l1_hist)
        ae.eval()
        return {**last, "l1_final_mean": tail_mean(l1_hist), "steps": steps}

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
        loop = FitLoop("label diffusion", steps, progress=c["progress"], stage=stage, device=dev,
                       precision=c["precision"])
        for step in loop:
            idx = torch.randint(len(mu), (bs,), generator=g)
            eps = torch.randn(mu[idx].shape, generator=g)
            z = ((mu[idx] + sigma[idx] * eps) * self.scale_factor).to(dev)
            noise = torch.randn(z.shape, generator=g).to(dev)
            t = torch.randint(0, c["num_train_timesteps"], (bs,), generator=g).to(dev)
            cond = all_conds[idx][:, None, :].to(dev) if all_conds is not None else None
            with loop.autocast():
                pred = inferer(inputs=z, diffusion_model=unet, noise=noise, timesteps=t, condition=cond)
                loss = F.mse_loss(pred.float(), noise.float())
            optimizer_step(opt, loss)
            losses.append(float(loss.detach()))
            loop.done(step, {"mse": f"{losses[-1]:.4f}"}, losses=losses, scale_factor=self.scale_factor,
                      n_latents=len(mu))
        unet.eval()
        return self._diffusion_stats(losses, steps, len(mu))

    @staticmethod
    def _diffusion_stats(losses: list[float], steps: int, n_latents: int) -> dict[str, float]:
        return {"mse_final_mean": tail_mean(losses), "steps": steps, "n_latents": n_latents}

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
        with rng_scope(batch_seed), sampling_layout(self.device, self.config["spatial_dims"], self.autoencoder,
                                                    self.unet) as fast:
            logits = inferer.sample(input_noise=as_layout(noise.to(self.device), fast),
                                    autoencoder_model=self.autoencoder, diffusion_model=self.unet,
                                    scheduler=scheduler, conditioning=None if cond is None else cond.to(self.device),
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
        load_weights(directory, (obj.autoencoder, ae_state), (obj.unet, unet_state))
        obj.scale_factor = float(cfg["scale_factor"])
        bank = cfg.get("condition_bank")
        obj.condition_bank = None if bank is None else torch.tensor(bank, dtype=torch.float32)
        obj.history = cfg.get("history", {})
        obj.device = resolve_device(device)
        obj.autoencoder.to(obj.device).eval()
        obj.unet.to(obj.device).eval()
        return obj


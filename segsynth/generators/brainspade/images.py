"""brainSPADE's image generator: SPADE VAE-GAN with modality and contrastive losses (fit, sample, save/load)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from segsynth.data.case import Case
from segsynth.data.partial_volume import labels_to_pv, pv_to_labels, renormalise_pv
from segsynth.data.transforms import RandomSpatial
from segsynth.errors import ConfigError, DataError
from segsynth.generators.brainspade.helpers import (
    _augment,
    _check_divisible,
    _default_spatial_aug,
    _fit_key,
    _init_args,
    _spatial_shape_of,
    as_layout,
    domain_of,
    domains_and_targets,
    draw_seeds,
    load_weights,
    rng_scope,
    sampling_layout,
    sampling_precision,
    style_partners,
)
from segsynth.generators.brainspade.losses import feature_matching_loss, info_nce, kld_loss, modality_loss
from segsynth.generators.fit_checkpoint import FitCheckpoint
from segsynth.generators.fit_loop import FitLoop, optimizer_step, tail_mean
from segsynth.generators.seg_term import SegmentationTerm, seg_term_features
from segsynth.utils.config import load_state, save_module
from segsynth.utils.device import resolve_device
from segsynth.utils.files import atomic_path
from segsynth.utils.precision import check_precision
from segsynth.utils.seed import derive_seed, torch_generator

log = logging.getLogger(__name__)

#: decoder up-sampling: the option's value -> torch's interpolation mode per spatial dims
UPSAMPLING_MODES = {"nearest": {2: "nearest", 3: "nearest"}, "linear": {2: "bilinear", 3: "trilinear"}}

#: options of the segmentation term (left out of the checkpoint fingerprint while the term is off)
SEG_OPTIONS = ("lambda_seg", "seg_steps", "seg_cotrain", "seg_model")


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
        lambda_seg: weight of the segmentation term (``segsynth.generators.seg_term``): a U-Net trained on the
            real pairs segments each generated image, Dice + CE against the PV map's labels joins the generator
            loss (0 = off, as in brainSPADE). ``SegmenterFeatureLoss`` (the label autoencoder's perceptual term)
            compares features; this term asks the image to *show* its label map.
        seg_steps: training steps of that U-Net (classical augmentation) before the GAN.
        seg_cotrain: keep training it on augmented real pairs, one step per GAN step, instead of freezing it.
        seg_model: folder of a saved segsynth segmenter to use instead (e.g. the ``augment`` model of the split).
        upsampling: how the decoder doubles its feature maps between SPADE blocks: ``"nearest"`` (MONAI's
            default, brainSPADE's) or ``"linear"`` (bilinear in 2D, trilinear in 3D). Nearest copies each cell
            of the coarse maps into a block; on Kvasir at 64² (1,000 steps) its images show a 2-pixel structure
            and, in one split of three, 4-16 pixel blocks (``segsynth.evaluate.quality.grid_energy``). Linear
            draws less of the 2-pixel structure but is smoother than real images across the coarse cells' lines,
            and its pairs trained a worse segmenter there (−1.8 Dice; benchmarks/README.md), so nearest stays.
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
                 sample_batch_size: int = 16, progress: bool = True, lambda_seg: float = 0.0, seg_steps: int = 200,
                 seg_cotrain: bool = False, seg_model: str | None = None, precision: str = "fp32",
                 upsampling: str = "nearest"):
        self.config = _init_args(ImageGenerator.__init__, locals())
        check_precision(precision, "precision")
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if upsampling not in UPSAMPLING_MODES:
            raise ConfigError(f"upsampling must be one of {sorted(UPSAMPLING_MODES)}, not {upsampling!r}")
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
        self.seg_term: SegmentationTerm | None = None

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
                                last_act=None,
                                upsampling_mode=UPSAMPLING_MODES[c["upsampling"]][c["spatial_dims"]])

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

        ``checkpoint_dir`` / ``checkpoint_every``: resumable stages as in ``LabelGenerator.fit``, in the files
        ``image_classifier.pt`` and ``image_gan.pt``.
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
        partners = style_partners(labelled)
        self.domains, target = domains_and_targets(labelled, unlabelled)
        target_images = torch.stack([torch.as_tensor(x.image, dtype=torch.float32) for x in target]) \
            if target else None
        target_dom = torch.tensor([self.domains.index(domain_of(x, "target")) for x in target]) if target else None

        seg_off = set() if c["lambda_seg"] > 0 else set(SEG_OPTIONS)  # keeps older checkpoints valid
        seg_off |= {"upsampling"} if c["upsampling"] == "nearest" else set()  # so does the default up-sampling
        ckpt = FitCheckpoint(checkpoint_dir, _fit_key("ImageGenerator", c, set(self.sampling_options) | seg_off, seed,
                                                      images, masks, partners, self.domains, target_images,
                                                      target_dom), checkpoint_every)
        self._build(seed)
        g = torch_generator(derive_seed(seed, "spade-fit"))
        t0 = time.perf_counter()
        clf_stats: dict[str, Any] = {"used": False}
        if len(self.domains) >= 2 and c["lambda_modality"] > 0 and target_images is not None:
            clf_stats = self._fit_classifier(images, target_images, target_dom, g, seed, ckpt)
        elif c["lambda_modality"] > 0:
            log.info("modality loss off: the training images come from one domain only")
        self.seg_term = self._make_seg_term(labelled, seed)
        t1 = time.perf_counter()
        gan_stats = self._fit_gan(images, pvs, partners, target_images, target_dom, g, ckpt)
        t2 = time.perf_counter()
        self._fill_style_bank(labelled, unlabelled)
        self.history = {"classifier": clf_stats, "gan": gan_stats, "classifier_seconds": t1 - t0,
                        "gan_seconds": t2 - t1, "domains": self.domains, "n_train": len(labelled),
                        "n_target": 0 if target_images is None else len(target_images),
                        "seg_term": self.seg_term.history if self.seg_term is not None else None}
        return self.history

    def _make_seg_term(self, labelled: list[Case], seed: int) -> SegmentationTerm | None:
        """The segmentation term's segmenter (trained here on the real pairs, or loaded), or None when off."""
        c = self.config
        if c["lambda_seg"] <= 0:
            return None
        if c["seg_model"]:
            return SegmentationTerm.from_saved(c["seg_model"], c["lambda_seg"], self.device)
        return SegmentationTerm.trained_on(labelled, self.num_classes, weight=c["lambda_seg"], steps=c["seg_steps"],
                                           cotrain=c["seg_cotrain"], batch_size=int(c["spade_batch_size"]),
                                           seed=derive_seed(seed, "spade-seg-term"), device=self.device,
                                           features=seg_term_features(int(c["spade_channels"][0])))

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
        loop = FitLoop("modality classifier", steps, progress=c["progress"], stage=stage, device=dev,
                       precision=c["precision"])
        for step in loop:
            half = bs // 2
            i_src = torch.randint(len(images), (half,), generator=g)
            i_tgt = len(images) + torch.randint(len(target_images), (bs - half,), generator=g)
            idx = torch.cat([i_src, i_tgt])
            x = _augment(all_images[idx], g, spatial).to(dev)
            y = F.one_hot(all_dom[idx], n_dom).float().to(dev)
            with loop.autocast():
                logits = clf(x)
                loss = F.binary_cross_entropy_with_logits(logits, y)
            optimizer_step(opt, loss)
            accs.append(float((logits.argmax(1) == all_dom[idx].to(dev)).float().mean()))
            loop.done(step, None, accs=accs)
        clf.eval()
        for p in clf.parameters():
            p.requires_grad_(False)
        self.classifier = clf
        return {"used": True, "steps": steps, "train_accuracy": tail_mean(accs)}

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
        term = self.seg_term
        cot = term is not None and term.opt is not None  # a co-trained segmenter is checkpointed with the GAN
        stage = (ckpt or FitCheckpoint(None)).stage(
            "image_gan", modules={"spade": net, "discriminator": disc, **({"seg_term": term.model} if cot else {})},
            optimizers={"spade": opt_g, "discriminator": opt_d, **({"seg_term": term.opt} if cot else {})},
            generators={"data": g, **({"seg_term": term.rng} if cot else {})})
        hist: list[dict[str, float]] = stage.restore().get("hist", [])  # restores g after its draw for disc init
        loop = FitLoop("SPADE image generator", steps, progress=c["progress"], stage=stage, device=dev,
                       precision=c["precision"])
        for step in loop:
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
            with loop.autocast():
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
                fm = feature_matching_loss(feat_fake, feat_real) if c["lambda_fm"] > 0 else torch.zeros((), device=dev)
                kld = kld_loss(mu, logvar)
                loss = g_adv + c["lambda_fm"] * fm + c["lambda_kld"] * kld
                rec = {"g_adv": float(g_adv.detach()), "fm": float(fm.detach()), "kld": float(kld.detach())}
                if self.classifier is not None and c["lambda_modality"] > 0:
                    mod = modality_loss(self.classifier, fake, dom, len(self.domains))
                    loss = loss + c["lambda_modality"] * mod
                    rec["modality"] = float(mod.detach())
                if c["lambda_contrastive"] > 0 and bs >= 2:
                    x_aff = _augment(x_s.cpu(), g, affine).to(dev)
                    mu_aff, _ = net.encoder(x_aff)
                    con = info_nce(mu, mu_aff, c["temperature"])
                    loss = loss + c["lambda_contrastive"] * con
                    rec["contrastive"] = float(con.detach())
                if term is not None:  # every fake, target-styled ones too, must show its label map
                    seg = term.loss(fake, pv_to_labels(pv_c))
                    loss = loss + term.weight * seg
                    rec["seg"] = float(seg.detach())
            optimizer_step(opt_g, loss)
            if term is not None:
                term.cotrain_step()  # no-op unless seg_cotrain (real pairs only)
            # discriminator update
            with loop.autocast():
                out_fake_d, _ = disc(torch.cat([fake[src].detach(), pv_c[src]], 1))
                out_real_d, _ = disc(torch.cat([x_c[src], pv_c[src]], 1))
                d_loss = hinge(out_fake_d, target_is_real=False, for_discriminator=True) + \
                    hinge(out_real_d, target_is_real=True, for_discriminator=True)
            optimizer_step(opt_d, d_loss)
            rec["d_loss"] = float(d_loss.detach())
            hist.append(rec)
            loop.done(step, {"g": f"{rec['g_adv']:.3f}", "d": f"{rec['d_loss']:.3f}"}, hist=hist)
        net.eval()
        tail = hist[-max(1, len(hist) // 10):]
        summary = {k2: float(np.mean([h[k2] for h in tail if k2 in h])) for k2 in (tail[0] if tail else {})}
        return {"steps": steps, "final": summary}

    @torch.no_grad()
    def _fill_style_bank(self, labelled: list[Case], unlabelled: list[Case]) -> None:
        """Style code posteriors of every training image (and unlabelled image), kept with the model."""
        cases = list(labelled) + list(unlabelled)
        source = domain_of(labelled[0], "train")
        mu, logvar = self._encode_cases(cases)
        self.style_bank = {
            "mu": mu, "logvar": logvar, "ids": [cc.case_id for cc in cases],
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
        mu, logvar = self._encode_cases(styles)
        return {"mu": mu, "logvar": logvar, "ids": [s.case_id for s in styles],
                "domains": [domain_of(s, "given") for s in styles]}

    @torch.no_grad()
    def _encode_cases(self, cases: Sequence[Case], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Style code posteriors (mu, logvar) of the cases' images, in batches, on the CPU."""
        mus, logvars = [], []
        for start in range(0, len(cases), batch_size):
            x = torch.stack([torch.as_tensor(c.image, dtype=torch.float32) for c in cases[start:start + batch_size]])
            mu, logvar = self.encode(x.to(self.device))
            mus.append(mu.cpu())
            logvars.append(logvar.cpu())
        return torch.cat(mus), torch.cat(logvars)

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
        with sampling_layout(self.device, self.config["spatial_dims"], self.net) as fast:
            for start in range(0, len(z), int(self.config["sample_batch_size"])):
                sl = slice(start, start + int(self.config["sample_batch_size"]))
                image = self.decode(as_layout(pv[sl].to(self.device).float(), fast), z[sl])
                out.append(image.float().cpu().contiguous())
        return torch.cat(out), records

    def sample_from_seeds(self, seeds: Sequence[int], *, pv: torch.Tensor | None = None,
                          source_masks: Sequence[str] | None = None, styles: dict[str, Any] | None = None,
                          style_domain: str | None = None, augment_masks: bool = True,
                          precision: str = "fp32") -> list[Case]:
        """One pair per seed: given PV maps, or training masks (warped when ``augment_masks``).

        ``precision``: fp32, bf16 or auto (``helpers.sampling_precision``)."""
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
        with sampling_precision(self.device, precision):
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
               augment_masks: bool = True, precision: str = "fp32") -> list[Case]:
        """``n`` pairs on training masks (warped), or one per given mask (label maps or PV maps (K, *S))."""
        style_bank = self.style_codes_of(styles) if styles else None
        if masks is None:
            return self.sample_from_seeds(draw_seeds(n, generator), styles=style_bank, style_domain=style_domain,
                                          augment_masks=augment_masks, precision=precision)
        pv = torch.stack([self.as_pv(m) for m in masks])
        return self.sample_from_seeds(draw_seeds(len(masks), generator), pv=pv,
                                      source_masks=[f"given:{i}" for i in range(len(masks))], styles=style_bank,
                                      style_domain=style_domain, precision=precision)

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
        load_weights(directory, (obj.net, state))
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

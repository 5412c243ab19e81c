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

Layout: ``helpers`` (seeds, domains, volumes, shapes), ``losses`` (perceptual feature loss, InfoNCE, KLD),
``labels`` (``LabelGenerator``), ``images`` (``ImageGenerator``), ``pipeline`` (``BrainSpadeGenerator``,
``write_synthetic_dataset``, ``sampling_speed``), ``methods`` (the sweep methods). The training loops share
``segsynth.generators.fit_loop`` (steps from a checkpoint, progress bar, timing, autocast).
"""

from segsynth.generators.brainspade.helpers import (
    CONDITIONS,
    SAMPLERS,
    assign_volumes,
    domain_of,
    draw_seeds,
    rng_scope,
    volume_of,
)
from segsynth.generators.brainspade.images import ImageGenerator
from segsynth.generators.brainspade.labels import LabelGenerator
from segsynth.generators.brainspade.losses import (
    SegmenterFeatureLoss,
    feature_matching_loss,
    gaussian_kl,
    info_nce,
    kld_loss,
    modality_loss,
)
from segsynth.generators.brainspade.methods import BrainSpadeMethod, SpadeMethod
from segsynth.generators.brainspade.pipeline import (
    BrainSpadeGenerator,
    sampling_speed,
    write_synthetic_dataset,
)

__all__ = ["BrainSpadeGenerator", "BrainSpadeMethod", "CONDITIONS", "ImageGenerator", "LabelGenerator",
           "SAMPLERS", "SegmenterFeatureLoss", "SpadeMethod", "assign_volumes", "domain_of", "draw_seeds",
           "feature_matching_loss", "gaussian_kl", "info_nce", "kld_loss", "modality_loss", "rng_scope",
           "sampling_speed", "volume_of", "write_synthetic_dataset"]

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
  through the segmenter's dependence on the generated images (``segsynth.generators.genseg.hypergradient``:
  DARTS one-step unrolling, finite differences by default, exact double backward on request).

The ``separate`` ablation (the paper's key comparison) is the same generator trained without segmentation
feedback: stage I only, for as many GAN updates as GenSeg's generator gets in total (pre-training plus the
updates inside the loop), then frozen and used to generate data for the segmenter.

After a GenSeg run the searched generator is derived (strongest operation per cell), briefly re-trained
(stage I, ``derive_steps``; the derived network computes something else than the mixture it came from) and
saved with its genotype; ``segsynth synthesize`` writes datasets from it.

Layout: ``options`` (``GenSegOptions``), ``sources`` (``AugmentedMasks``, ``GeneratedSource``), ``generator``
(``GenSegGenerator``), ``gan`` (``GanTrainer``, stage I), ``hypergradient`` (stage III's hypergradient), ``hook``
(``GenSegHook``, stages I and III in the segmenter's loop), ``driver`` (``train_genseg``), ``methods`` (the sweep
methods), ``helpers`` (rank, gradient averaging under torchrun), ``protocol`` (what ``gan`` and ``sources`` use of the
generator, so they need not import ``generator``, which imports them).
"""

from segsynth.generators.genseg.driver import train_genseg
from segsynth.generators.genseg.gan import GanTrainer
from segsynth.generators.genseg.generator import GenSegGenerator
from segsynth.generators.genseg.hook import GenSegHook
from segsynth.generators.genseg.hypergradient import (
    HYPERGRADIENT_MODES,
    UnrolledProblem,
    architecture_hypergradient,
)
from segsynth.generators.genseg.methods import (
    GenSegAugMethod,
    GenSegFrozenMethod,
    GenSegMethod,
    SeparateAugMethod,
    SeparateMethod,
)
from segsynth.generators.genseg.options import GENSEG_CONFIG, GenSegOptions
from segsynth.generators.genseg.sources import AugmentedMasks, GeneratedSource

__all__ = ["AugmentedMasks", "GENSEG_CONFIG", "GanTrainer", "GenSegAugMethod", "GenSegFrozenMethod",
           "GenSegGenerator", "GenSegHook", "GenSegMethod", "GenSegOptions", "GeneratedSource",
           "HYPERGRADIENT_MODES", "SeparateAugMethod", "SeparateMethod", "UnrolledProblem", "architecture_hypergradient",
           "train_genseg"]

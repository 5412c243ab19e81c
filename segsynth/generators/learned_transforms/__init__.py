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

Layout: ``helpers`` (conform, centre crop/pad), ``randaug`` (``RandAug``, ``RandAugSource``), ``model``
(``TransformFitConfig``, ``TransformBank``, ``LearnedTransforms``), ``sources`` (``LearnedSource``), ``sas``
(``AtlasSegmenter``), ``methods`` (the sweep methods), ``synthesis`` (``write_synthetic``).
"""

from segsynth.generators.learned_transforms.helpers import center_fit, conform
from segsynth.generators.learned_transforms.methods import (
    LearnedMethod,
    LearnedRandAugMethod,
    RandAugMethod,
    SASAugMethod,
    SASMethod,
)
from segsynth.generators.learned_transforms.model import LearnedTransforms, TransformBank, TransformFitConfig
from segsynth.generators.learned_transforms.randaug import RandAug, RandAugSource
from segsynth.generators.learned_transforms.sas import AtlasSegmenter
from segsynth.generators.learned_transforms.sources import LearnedSource
from segsynth.generators.learned_transforms.synthesis import SynthesisRecord, write_synthetic

__all__ = ["AtlasSegmenter", "LearnedMethod", "LearnedRandAugMethod", "LearnedSource", "LearnedTransforms",
           "RandAug", "RandAugMethod", "RandAugSource", "SASAugMethod", "SASMethod", "SynthesisRecord",
           "TransformBank", "TransformFitConfig", "center_fit", "conform", "write_synthetic"]

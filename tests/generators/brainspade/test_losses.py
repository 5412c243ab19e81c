"""brainSPADE's losses: the perceptual term with a locally saved segmenter."""

from __future__ import annotations

import numpy as np

from segsynth.generators.brainspade import (
    LabelGenerator,
)
from tests.generators.brainspade.helpers import INFO, LABEL_OPTS, K, _cases


def test_perceptual_term_with_a_locally_saved_segmenter(tmp_path):
    from segsynth.nets.segmenters import build_segmenter
    from segsynth.segment.model_io import save_segmenter

    seg = build_segmenter("unet", 2, 1, K, features=(4, 4, 8, 8, 8, 4))
    save_segmenter(seg, tmp_path / "seg", INFO, segmenter_kwargs={"features": [4, 4, 8, 8, 8, 4]})
    gen = LabelGenerator(**{**LABEL_OPTS, "perceptual_model": str(tmp_path / "seg"), "perceptual_weight": 0.1})
    stats = gen.fit(_cases(2, (16, 16)), seed=0)
    assert np.isfinite(stats["ae"]["l1"])

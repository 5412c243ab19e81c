"""brainSPADE's SPADE image generator with the segmentation term (generated images must show their label maps)."""

import numpy as np
import torch

from segsynth.generators.brainspade import ImageGenerator
from segsynth.generators.seg_term import seg_term_features
from segsynth.segment.model_io import save_segmenter
from tests.generators.brainspade.helpers import IMAGE_OPTS, INFO, K, _cases

SEG = {"lambda_seg": 2.0, "seg_steps": 3, "spade_steps": 3}


def test_spade_with_seg_term_trains_reaches_the_generator_and_saves_loads(tmp_path):
    cases = _cases(4)
    gen = ImageGenerator(**{**IMAGE_OPTS, **SEG})
    stats = gen.fit(cases, seed=0)
    assert "seg" in stats["gan"]["final"] and stats["seg_term"]["steps"] == 3
    # the term's gradient reaches the SPADE decoder
    pv = torch.stack([gen.as_pv(c.mask) for c in cases[:2]])
    fake = gen.decode(pv, torch.zeros(2, IMAGE_OPTS["z_dim"]))
    gen.seg_term.loss(fake, pv.argmax(1)).backward()
    assert sum(float(p.grad.abs().sum()) for p in gen.net.decoder.parameters() if p.grad is not None) > 0
    gen.net.zero_grad()
    gen.save(tmp_path / "img")
    back = ImageGenerator.load(tmp_path / "img")
    assert back.config["lambda_seg"] == 2.0
    a, b = gen.sample_from_seeds([5], pv=pv[:1]), back.sample_from_seeds([5], pv=pv[:1])
    np.testing.assert_allclose(a[0].image, b[0].image, atol=1e-5)
    # a saved segmenter (e.g. the ``augment`` model of the split) can serve as the term's segmenter
    save_segmenter(gen.seg_term.model, tmp_path / "seg", INFO, segmenter_kwargs={"features": seg_term_features(8)})
    other = ImageGenerator(**{**IMAGE_OPTS, **SEG, "seg_model": str(tmp_path / "seg")})
    assert "seg" in other.fit(cases, seed=0)["gan"]["final"] and other.seg_term.history == {}


def test_seg_term_off_by_default_keeps_the_old_losses():
    gen = ImageGenerator(**IMAGE_OPTS)
    stats = gen.fit(_cases(4), seed=0)
    assert gen.config["lambda_seg"] == 0.0 and gen.seg_term is None and "seg" not in stats["gan"]["final"]
    assert K == gen.num_classes

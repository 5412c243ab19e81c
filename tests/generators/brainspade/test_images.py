"""brainSPADE's image generator on tiny inputs: all losses, their gradients, sampling, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segsynth.errors import ConfigError
from segsynth.generators.brainspade import (
    ImageGenerator,
    info_nce,
)
from tests.generators.brainspade.helpers import IMAGE_OPTS, _cases, _target


def test_image_generator_trains_with_all_losses(fitted):
    _, _, images, _, stats = fitted
    assert stats["domains"] == ["train", "target-site"] and stats["classifier"]["used"]
    final = stats["gan"]["final"]
    for key in ("g_adv", "fm", "kld", "modality", "contrastive", "d_loss"):
        assert key in final and np.isfinite(final[key])
    assert len(images.style_bank["ids"]) == 6
    assert images.style_pool("target") == [4, 5]


def test_modality_and_contrastive_gradients_reach_the_generator(fitted):
    cases, _, images, _, _ = fitted
    net = images.net
    x = torch.as_tensor(np.stack([c.image for c in cases]))
    pv = torch.stack([images.as_pv(c.mask) for c in cases])
    net.zero_grad()
    mu, logvar = net.encoder(x)
    fake = net.decoder(pv, mu)
    target = torch.nn.functional.one_hot(torch.ones(len(x), dtype=torch.long), 2).float()
    torch.nn.functional.binary_cross_entropy_with_logits(images.classifier(fake), target).backward()
    dec_grad = sum(float(p.grad.abs().sum()) for p in net.decoder.parameters() if p.grad is not None)
    assert dec_grad > 0
    net.zero_grad()
    mu, _ = net.encoder(x)
    mu2, _ = net.encoder(x.flip(-1))
    info_nce(mu, mu2, 0.1).backward()
    enc_grad = sum(float(p.grad.abs().sum()) for p in net.encoder.parameters() if p.grad is not None)
    assert enc_grad > 0
    net.zero_grad()


def test_image_generator_sampling_and_save_load(fitted, tmp_path):
    cases, _, images, _, _ = fitted
    out = images.sample(3, generator=torch.Generator().manual_seed(1))
    assert len(out) == 3
    for c in out:
        assert c.image.shape == (1, 32, 32) and np.isfinite(c.image).all()
        assert c.meta["source_mask"] in {x.case_id for x in cases} and c.meta["style_domain"] == "train"
    tgt = images.sample(2, generator=torch.Generator().manual_seed(1), masks=[cases[0].mask, cases[1].mask],
                        style_domain="target")
    assert [c.meta["style_domain"] for c in tgt] == ["target-site"] * 2
    assert np.array_equal(tgt[0].mask, cases[0].mask)
    images.save(tmp_path / "img")
    loaded = ImageGenerator.load(tmp_path / "img")
    seeds = [11, 12]
    pv = torch.stack([images.as_pv(c.mask) for c in cases[:2]])
    a = images.sample_from_seeds(seeds, pv=pv)
    b = loaded.sample_from_seeds(seeds, pv=pv)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.image, y.image, atol=1e-5)
        assert x.meta["style_source"] == y.meta["style_source"]
    # style images from an unlabelled folder at sampling time
    styled = loaded.sample(1, generator=torch.Generator().manual_seed(0), masks=[cases[0].mask], styles=_target(1))
    assert styled[0].meta["style_source"] == "t0"


def test_linear_upsampling_reaches_the_decoder_and_survives_save_load(tmp_path):
    cases = _cases()
    gen = ImageGenerator(**IMAGE_OPTS, upsampling="linear")
    gen.fit(cases, seed=0)
    assert gen.net.decoder.upsampling.mode == "bilinear"
    gen.save(tmp_path / "img")
    loaded = ImageGenerator.load(tmp_path / "img")
    assert loaded.config["upsampling"] == "linear" and loaded.net.decoder.upsampling.mode == "bilinear"
    pv = torch.stack([gen.as_pv(c.mask) for c in cases[:2]])
    for x, y in zip(gen.sample_from_seeds([3, 4], pv=pv), loaded.sample_from_seeds([3, 4], pv=pv)):
        np.testing.assert_allclose(x.image, y.image, atol=1e-5)
    # in 3D the same option is trilinear; the decoder renders a whole volume with it
    vol = ImageGenerator(**{**IMAGE_OPTS, "spatial_dims": 3, "in_channels": 1, "image_size": (8, 8, 8)},
                         upsampling="linear")
    vol._build(seed=0)
    assert vol.net.decoder.upsampling.mode == "trilinear"
    out = vol.decode(torch.full((1, 3, 8, 8, 8), 1 / 3), torch.zeros(1, 4))
    assert out.shape == (1, 1, 8, 8, 8) and torch.isfinite(out).all()


def test_unknown_upsampling_is_refused():
    with pytest.raises(ConfigError, match="upsampling"):
        ImageGenerator(upsampling="cubic")


def test_nearest_upsampling_leaves_the_fit_fingerprint_as_before(monkeypatch):
    """Checkpoints written before the option existed resume: with the default (nearest) the option is left out of
    the fit's fingerprint, so its key equals that of a configuration without it; linear changes the key."""
    import segsynth.generators.brainspade.images as images_module

    keys = {}
    real_key = images_module._fit_key

    def spy(kind, config, not_fit, seed, *data):
        before = {k: v for k, v in config.items() if k != "upsampling"}
        keys[config["upsampling"]] = (real_key(kind, config, not_fit, seed, *data),
                                      real_key(kind, before, not_fit, seed, *data))
        return keys[config["upsampling"]][0]

    monkeypatch.setattr(images_module, "_fit_key", spy)
    for mode in ("nearest", "linear"):
        ImageGenerator(**IMAGE_OPTS, upsampling=mode).fit(_cases(), seed=0)
    assert keys["nearest"][0] == keys["nearest"][1]
    assert keys["linear"][0] != keys["linear"][1] and keys["linear"][0] != keys["nearest"][0]

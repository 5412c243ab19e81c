"""brainSPADE sampling under bf16 autocast: bf16 convolutions, fp32 pairs close to the fp32 ones, provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segsynth.data.partial_volume import is_valid_pv
from segsynth.errors import ConfigError
from segsynth.generators.brainspade import BrainSpadeGenerator, write_synthetic_dataset
from segsynth.generators.brainspade.helpers import sampling_precision
from tests.conftest import conv_output_dtypes
from tests.generators.brainspade.helpers import INFO, K


def test_bf16_sampling_runs_the_networks_in_bf16_and_returns_fp32_pairs_near_fp32(fitted):
    _, labels, images, _, _ = fitted
    gen = BrainSpadeGenerator.from_parts(labels, images)
    ref = gen.sample_from_seeds([7, 8], sampler="dpm", steps=3)
    seen = conv_output_dtypes(labels.autoencoder, labels.unet, images.net)
    low = gen.sample_from_seeds([7, 8], sampler="dpm", steps=3, precision="bf16")
    assert torch.bfloat16 in seen and torch.is_autocast_enabled("cpu") is False  # switched off again after
    for a, b in zip(ref, low):
        assert b.image.dtype == np.float32 and np.isfinite(b.image).all()
        assert set(np.unique(b.mask)) <= set(range(K))
        # bf16 keeps ~3 significant digits; one network step apart these tiny nets give close pictures
        assert np.abs(a.image - b.image).mean() < 0.1 * (np.abs(a.image).mean() + 1e-6) + 0.05
    pv, _ = labels.sample_pv([7], sampler="dpm", steps=3)
    with sampling_precision(labels.device, "bf16"):
        pv_low, _ = labels.sample_pv([7], sampler="dpm", steps=3)
    assert pv_low.dtype == torch.float32 and is_valid_pv(pv_low)


def test_fp32_sampling_is_untouched_and_bad_precision_is_a_config_error(fitted):
    _, labels, images, _, _ = fitted
    seen = conv_output_dtypes(images.net)
    gen = BrainSpadeGenerator.from_parts(labels, images)
    gen.sample_from_seeds([1], sampler="dpm", steps=2, precision="fp32")
    assert set(seen) == {torch.float32}
    with pytest.raises(ConfigError, match="--precision 'fp16'"):
        gen.sample_from_seeds([1], sampler="dpm", steps=2, precision="fp16")


def test_a_written_dataset_records_its_sampling_precision(fitted, tmp_path):
    _, labels, images, _, _ = fitted
    out = write_synthetic_dataset(BrainSpadeGenerator.from_parts(labels, images), tmp_path / "syn", 3, info=INFO,
                                  batch_size=2, sampler="dpm", steps=2, precision="bf16", progress=False)
    prov = [json.loads(line) for line in (out / "provenance.jsonl").read_text().splitlines()]
    assert len(prov) == 3 and "bf16" in json.dumps(json.loads((out / "dataset.json").read_text()))


def test_networks_train_under_bf16_when_asked_and_fp32_fit_keys_are_unchanged(monkeypatch):
    from segsynth.generators.brainspade import ImageGenerator, LabelGenerator
    from segsynth.generators.brainspade.helpers import _fit_key
    from tests.generators.brainspade.helpers import IMAGE_OPTS, LABEL_OPTS, _cases

    cases = _cases()
    images = ImageGenerator(**IMAGE_OPTS, precision="bf16")
    seen: list[torch.dtype] = []
    real_conv = torch.nn.Conv2d.forward

    def spy(self, x):
        out = real_conv(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", spy)
    images.fit(cases, seed=0)
    labels = LabelGenerator(**LABEL_OPTS, precision="bf16")
    labels.fit(cases, seed=0)
    monkeypatch.undo()
    assert torch.bfloat16 in seen
    for net in (images.net, labels.autoencoder, labels.unet):
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in net.parameters())
    # fp32 (the default) leaves the fingerprint of a fit as it was before the option existed
    cfg = dict(ImageGenerator(**IMAGE_OPTS).config)
    old = {k: v for k, v in cfg.items() if k != "precision"}
    assert _fit_key("ImageGenerator", cfg, set(), 0) == _fit_key("ImageGenerator", old, set(), 0)
    assert _fit_key("ImageGenerator", {**cfg, "precision": "bf16"}, set(), 0) != _fit_key("ImageGenerator", old,
                                                                                          set(), 0)
    with pytest.raises(ConfigError, match="precision 'half'"):
        ImageGenerator(**IMAGE_OPTS, precision="half")


def test_a_method_run_fits_and_samples_in_the_runs_precision(tmp_path):
    from segsynth.generators import get_method
    from segsynth.generators.base import MethodContext
    from segsynth.generators.brainspade import ImageGenerator
    from segsynth.segment.train import TrainConfig
    from tests.generators.brainspade.helpers import IMAGE_OPTS, _cases

    cases = _cases(4)
    opts = {"n_synthetic": 4, "mode": "mixed", **{k: v for k, v in IMAGE_OPTS.items() if k != "num_classes"}}
    ctx = MethodContext(info=INFO, train=cases[:3], val=cases[3:], segmenter="unet",
                        segmenter_kwargs={"features": (4, 4, 8, 8, 8, 4)},
                        train_config=TrainConfig(steps=2, batch_size=2, val_every=2, progress=False,
                                                 precision="bf16"),
                        workdir=tmp_path / "run", options=opts)
    result = get_method("spade", **opts).run(ctx)
    assert result.precision == "bf16"
    saved = ImageGenerator.load(tmp_path / "run" / "generator")
    assert saved.config["precision"] == "bf16"
    # a method option overrides the run's precision for the generator
    method = get_method("spade", **opts, precision="fp32")
    assert method._make_generator(ctx).config["precision"] == "fp32"

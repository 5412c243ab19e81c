"""brainSPADE's sweep methods: registry, options, one tiny training."""

from __future__ import annotations

import pytest
import torch

from segsynth.errors import ConfigError
from segsynth.generators import METHODS, get_method
from segsynth.generators.base import MethodContext, SyntheticGenerator
from segsynth.generators.brainspade import (
    BrainSpadeGenerator,
    ImageGenerator,
    LabelGenerator,
)
from tests.generators.brainspade.helpers import IMAGE_OPTS, INFO, LABEL_OPTS, K, _cases


def test_protocol_and_registry():
    for cls in (LabelGenerator, ImageGenerator, BrainSpadeGenerator):
        assert isinstance(cls.__new__(cls), SyntheticGenerator)
    assert "spade" in METHODS and "brainspade" in METHODS
    assert get_method("brainspade", n_synthetic=3, ae_steps=1).name == "brainspade"
    with pytest.raises(ConfigError):
        get_method("spade", ae_steps=1)  # a label-generator option is not a SPADE option
    with pytest.raises(ConfigError):
        get_method("brainspade", mode="both")
    with pytest.raises(ConfigError):
        LabelGenerator(perceptual_weight=1.0)  # perceptual needs local weights


@pytest.mark.parametrize("name", ["spade", "brainspade"])
def test_methods_run_one_tiny_training(name, tmp_path):
    from segsynth.segment.train import TrainConfig

    cases = _cases(4)
    opts = {"n_synthetic": 4, "mode": "mixed", **{k: v for k, v in IMAGE_OPTS.items() if k != "num_classes"}}
    if name == "brainspade":
        opts.update({k: v for k, v in LABEL_OPTS.items() if k != "num_classes"})
    method = get_method(name, **opts)
    ctx = MethodContext(info=INFO, train=cases[:3], val=cases[3:], segmenter="unet",
                        segmenter_kwargs={"features": (4, 4, 8, 8, 8, 4)},
                        train_config=TrainConfig(steps=2, batch_size=2, val_every=2, progress=False),
                        workdir=tmp_path / "run", options=opts)
    result = method.run(ctx)
    logits = result.model(torch.as_tensor(cases[0].image)[None])
    assert logits.shape == (1, K, 32, 32)
    assert (tmp_path / "run" / "generator" / "fit_stats.json").exists()
    assert not (tmp_path / "run" / "generator_checkpoint").exists()  # superseded by the saved generator
    # a rerun reuses the saved generator
    again = get_method(name, **opts).fitted_generator(ctx)
    assert again is not None

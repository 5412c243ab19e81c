"""Learned-transforms sweep methods: one shared fit, option and data errors."""

from __future__ import annotations

import pytest
import torch

from segsynth.errors import ConfigError, DataError
from segsynth.generators import get_method
from segsynth.generators.learned_transforms import (
    LearnedTransforms,
)
from segsynth.utils.seed import torch_generator
from tests.generators.learned_transforms.helpers import FAST_OPTS, SMALL, _cases, _ctx


def test_methods_run_and_share_one_fit(tmp_path):
    cases = _cases(n=5)
    sas = get_method("sas", **FAST_OPTS).run(_ctx(tmp_path, cases))
    assert 0.0 <= sas.best_val_dice <= 1.0
    with torch.no_grad():
        assert sas.model(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    cache = list((tmp_path / "runs" / "_learned_transforms").iterdir())
    assert len(cache) == 1 and (cache[0] / "bank.safetensors").exists()
    stamp = (cache[0] / "transforms.safetensors").stat().st_mtime_ns
    for name in ("learned", "learned_randaug", "sas_aug"):
        res = get_method(name, **FAST_OPTS).run(_ctx(tmp_path, cases))
        assert res.steps == 2
        with torch.no_grad():
            assert res.model(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    assert (cache[0] / "transforms.safetensors").stat().st_mtime_ns == stamp  # reused, not refitted
    src = get_method("learned_randaug", mix="compose", **FAST_OPTS).training_source(_ctx(tmp_path, cases))
    x, y = src.draw(2, torch_generator(0))
    assert x.shape == (2, 1, 32, 32)
    ra = get_method("randaug").training_source(_ctx(tmp_path, cases))
    assert ra.draw(2, torch_generator(0))[1].shape == (2, 32, 32)


def test_method_option_and_data_errors(tmp_path):
    with pytest.raises(ConfigError):
        get_method("learned", reg_stpes=3)
    with pytest.raises(ConfigError):
        get_method("randaug", reg_steps=3)
    cases = _cases(n=2)
    ctx = _ctx(tmp_path, cases)
    ctx.unlabelled = []
    with pytest.raises(DataError):
        get_method("sas", **FAST_OPTS).run(ctx)
    with pytest.raises(ConfigError):
        LearnedTransforms(2, 1, 2, (8, 8), inverse="both")
    t = LearnedTransforms.for_atlas(cases[0], 3, **SMALL)
    with pytest.raises(ConfigError):
        t.sample(1, generator=torch_generator(0))  # nothing encoded yet

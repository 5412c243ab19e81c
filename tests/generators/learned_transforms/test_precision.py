"""Learned transforms under bf16 autocast: the networks' forwards in bf16; integration, warps, losses in fp32."""

import dataclasses

import pytest
import torch

from segsynth.errors import ConfigError
from segsynth.generators import get_method
from segsynth.generators.learned_transforms import LearnedTransforms, TransformFitConfig
from tests.conftest import conv_output_dtypes
from tests.generators.learned_transforms.helpers import FAST, FAST_OPTS, SMALL, _cases, _ctx


def test_bf16_fit_runs_the_networks_in_bf16_and_keeps_fp32_weights_fields_and_losses():
    cases = _cases()
    t = LearnedTransforms.for_atlas(cases[0], 3, seed=0, **SMALL)
    reg_seen, app_seen = conv_output_dtypes(t.forward_net), conv_output_dtypes(t.appearance_net)
    before = {k: v.clone() for k, v in t.state_dict().items()}
    stats = t.fit([cases[0]], unlabelled=cases[1:], seed=0, config=dataclasses.replace(FAST, precision="bf16"))
    assert torch.bfloat16 in reg_seen and torch.bfloat16 in app_seen  # the fits ran under autocast
    assert all(p.dtype == torch.float32 for p in t.parameters())
    assert any(not torch.equal(before[k], v) for k, v in t.state_dict().items())
    for stage in ("spatial", "appearance"):
        assert all(torch.isfinite(torch.tensor(v)) for v in stats[stage]["losses"])
    # the bank (computed after the fit, outside autocast) is fp32 and finite
    assert t.bank is not None and t.bank.ddf.dtype == torch.float32 and torch.isfinite(t.bank.ddf).all()
    # and the spatial loss of a bf16 velocity is computed in fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = t.spatial_loss(torch.stack([torch.as_tensor(c.image) for c in cases[1:3]]).float(), FAST)
    assert loss.dtype == torch.float32


def test_an_fp32_fit_stays_out_of_autocast():
    cases = _cases()
    t = LearnedTransforms.for_atlas(cases[0], 3, seed=0, **SMALL)
    seen = conv_output_dtypes(t.forward_net)
    t.fit([cases[0]], unlabelled=cases[1:], seed=0, config=dataclasses.replace(FAST, appearance_steps=0))
    assert set(seen) == {torch.float32}


def test_an_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="precision"):
        TransformFitConfig(precision="fp16")


def test_the_methods_fit_in_the_runs_precision_and_keep_fp32_cache_keys(tmp_path, monkeypatch):
    cases = _cases()
    seen = []
    real_fit = LearnedTransforms.fit

    def spy(self, *a, **kw):
        seen.append(kw["config"].precision)
        return real_fit(self, *a, **kw)

    monkeypatch.setattr(LearnedTransforms, "fit", spy)
    ctx = _ctx(tmp_path, cases, **FAST_OPTS)
    m = get_method("learned", **FAST_OPTS)
    atlas, pool = m._atlas_and_unlabelled(ctx)
    key_fp32 = m._cache_dir(ctx, atlas, pool)
    ctx.train_config = dataclasses.replace(ctx.train_config, precision="bf16")
    key_bf16 = m._cache_dir(ctx, atlas, pool)
    assert key_fp32 != key_bf16  # a bf16 fit is not reused by an fp32 run, nor the other way
    m.transforms(ctx, need_appearance=True)
    assert seen == ["bf16"]

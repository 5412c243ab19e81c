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


def test_learned_pairs_stack_on_augmentation(tmp_path):
    """learned with augment_real (the synthesis_pays recipe): with 2 labelled cases half of a batch is real; the
    real cases and the learned pairs go through the same classical augmentation; with one labelled case and
    no options the paper's one-shot setting (learned pairs only, unaugmented) is kept."""
    from segsynth.generators.learned_transforms.sources import LearnedSource
    from segsynth.segment.sources import CaseSource, MixedSource
    from segsynth.segment.synthetic_mix import AugmentedSource

    cases = _cases(n=6)
    ctx = _ctx(tmp_path, cases)
    ctx.train = cases[:2]
    src = get_method("learned", augment_real=True, real_fraction=0.5, **FAST_OPTS).training_source(ctx)
    assert isinstance(src, MixedSource) and torch.allclose(src.weights, torch.tensor([0.5, 0.5]))
    real, syn = src.sources
    assert isinstance(real, CaseSource) and real.transform is not None and len(real) == 2
    assert isinstance(syn, AugmentedSource) and isinstance(syn.source, LearnedSource)
    assert type(syn.transform) is type(real.transform)
    a, b = src.draw(4, torch_generator(3)), src.draw(4, torch_generator(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape == (4, 1, 32, 32)
    one_shot = get_method("learned", **FAST_OPTS).training_source(_ctx(tmp_path, cases))
    assert isinstance(one_shot, LearnedSource)


def test_several_atlases_each_fitted_once_and_drawn_in_equal_shares(tmp_path):
    """atlases=2: each labelled case is an atlas with its own fit (and cache entry, the first one being the
    single-atlas entry), registered to the same unlabelled pool; each source warps its own atlas's image and
    labels, in equal shares of a batch; bad counts and transforms=PATH with two atlases are refused."""
    from segsynth.generators.learned_transforms.sources import LearnedSource
    from segsynth.segment.sources import MixedSource

    cases = _cases(n=6)
    ctx = _ctx(tmp_path, cases)
    ctx.train = cases[:2]
    get_method("learned", **FAST_OPTS).synthetic_source(ctx)  # the single-atlas fit, cached
    cache = tmp_path / "runs" / "_learned_transforms"
    (first,) = list(cache.iterdir())
    stamp = (first / "transforms.safetensors").stat().st_mtime_ns
    src = get_method("learned", atlases="all", **FAST_OPTS).synthetic_source(ctx)
    assert isinstance(src, MixedSource) and torch.allclose(src.weights, torch.tensor([0.5, 0.5]))
    assert all(isinstance(s, LearnedSource) for s in src.sources)
    assert [s.t.atlas_id for s in src.sources] == ["c0", "c1"]
    assert src.sources[0].t.bank.ids == src.sources[1].t.bank.ids  # one pool for both atlases
    assert sorted(p.name.split("_")[0] for p in cache.iterdir()) == ["c0", "c1"]
    assert (first / "transforms.safetensors").stat().st_mtime_ns == stamp  # the first atlas's fit reused
    assert (tmp_path / "runs" / "x" / "transforms_fit_atlas1.json").exists()
    # each source warps its own atlas's image and labels
    for s, atlas in zip(src.sources, cases[:2]):
        assert torch.equal(s.t.atlas_mask.cpu(), torch.as_tensor(atlas.mask, dtype=torch.long))
        assert torch.allclose(s.t.atlas_image.cpu(), torch.as_tensor(atlas.image, dtype=torch.float32))
    a, b = src.draw(8, torch_generator(1)), src.draw(8, torch_generator(1))
    assert torch.equal(a[0], b[0]) and a[0].shape == (8, 1, 32, 32)
    res = get_method("learned_randaug", atlases=2, **FAST_OPTS).training_source(ctx)
    assert res.draw(2, torch_generator(0))[0].shape == (2, 1, 32, 32)
    for bad, err in ((3, DataError), (0, ConfigError), ("two", ConfigError)):
        with pytest.raises(err, match="atlases"):
            get_method("learned", atlases=bad, **FAST_OPTS).synthetic_source(ctx)
    with pytest.raises(ConfigError, match="one atlas"):  # "all" of 2 labelled cases: known at run time only
        get_method("learned", atlases="all", transforms=str(first), **FAST_OPTS).synthetic_source(ctx)

"""GenSeg's generator: fit and sample (grey, RGB, 3D), reproducible sampling, save/load."""

import json

import numpy as np
import pytest
import torch

from segsynth.errors import DataError
from segsynth.generators.base import SyntheticGenerator
from segsynth.generators.genseg import (
    GenSegGenerator,
)
from tests.conftest import make_blob_case
from tests.generators.genseg.helpers import _fitted


@pytest.mark.parametrize("shape,channels,k", [((32, 32), 1, 2), ((32, 24), 3, 3), ((16, 16, 16), 1, 3)])
def test_fit_and_sample_shapes_grey_rgb_3d(shape, channels, k):
    gen, stats = _fitted(shape, channels, k)
    assert isinstance(gen, SyntheticGenerator)
    assert stats["steps"] == 2 and {"gan_d", "gan_g", "gan_l1"} <= set(stats)
    pairs = gen.sample(3, generator=torch.Generator().manual_seed(0))
    assert len(pairs) == 3
    lo, hi = np.array(gen.intensity_range)
    for c in pairs:
        assert c.image.shape == (channels, *shape) and c.image.dtype == np.float32
        assert c.mask.shape == shape and c.mask.dtype == np.int64 and c.mask.max() < k
        assert (c.image >= lo[:, None].reshape(-1, *[1] * len(shape)) - 1e-5).all()
        assert (c.image <= hi[:, None].reshape(-1, *[1] * len(shape)) + 1e-5).all()
        assert c.meta["method"] == "genseg" and c.meta["source_mask"].startswith("c")
        assert "augment" in c.meta and isinstance(c.meta["seed"], int)
        json.dumps(c.meta)


def test_sampling_is_reproducible_from_its_seed():
    gen, _ = _fitted()
    a, b, c = gen.sample_pair(7), gen.sample_pair(7), gen.sample_pair(8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)
    s1 = gen.sample(2, generator=torch.Generator().manual_seed(1))
    s2 = gen.sample(2, generator=torch.Generator().manual_seed(1))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(s1, s2))
    # given masks are rendered as they are, one pair each
    masks = [make_blob_case("m0", (32, 32), seed=9), make_blob_case("m1", (32, 32), seed=10).mask]
    out = gen.sample(5, generator=torch.Generator().manual_seed(0), masks=masks)
    assert len(out) == 2 and np.array_equal(out[0].mask, masks[0].mask) and out[0].meta["source_mask"] == "m0"
    with pytest.raises(DataError, match="classes"):
        gen.sample_pair(0, np.full((32, 32), 5))


def test_save_load_round_trip_of_derived_and_searchable(tmp_path):
    gen, _ = _fitted()
    with torch.no_grad():
        gen.net.alpha_up[:, 2] = 1.0
    gen.save(tmp_path / "search")
    back = GenSegGenerator.load(tmp_path / "search")
    assert back.net.searchable
    assert torch.equal(back.net.alpha_up, gen.net.alpha_up)
    mask = make_blob_case("m", (32, 32), seed=5).mask
    assert np.array_equal(back.sample_pair(3, mask).image, gen.sample_pair(3, mask).image)

    genotype = gen.derive()
    assert genotype["up"] == ["up_conv3"] * gen.net.num_downs and not gen.net.searchable
    gen.save(tmp_path / "derived")
    cfg = json.loads((tmp_path / "derived" / "generator.json").read_text())
    assert cfg["genotype"] == genotype
    assert json.loads((tmp_path / "derived" / "genseg.json").read_text())["search"]["genotype"] == genotype
    back = GenSegGenerator.load(tmp_path / "derived")
    assert back.net.genotype == genotype and back.net.arch_parameters() == []
    a, b = back.sample_pair(4, mask), gen.sample_pair(4, mask)
    assert np.array_equal(a.image, b.image)
    assert a.meta["model"] == str((tmp_path / "derived").resolve())
    with pytest.raises(DataError, match="genseg.json"):
        GenSegGenerator.load(tmp_path)

"""Learned transforms (Zhao et al. 2019): fit, independent draws, label sets, determinism, save/load, methods."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segsynth.data.case import DatasetInfo
from segsynth.errors import ConfigError, DataError
from segsynth.generators import get_method
from segsynth.generators.base import MethodContext
from segsynth.generators.learned_transforms import (
    AtlasSegmenter,
    LearnedSource,
    LearnedTransforms,
    RandAug,
    TransformFitConfig,
    center_fit,
    write_synthetic,
)
from segsynth.segment.train import TrainConfig
from segsynth.utils.seed import torch_generator
from tests.conftest import make_blob_case

FAST = TransformFitConfig(steps=6, appearance_steps=6, batch_size=2, lr=1e-3)
SMALL = {"reg_channels": (8, 8, 8, 8), "appearance_channels": (8, 16)}


def _cases(shape=(32, 32), n=5, k=3):
    return [make_blob_case(f"c{i}", shape, seed=i, num_classes=k) for i in range(n)]


def _fitted(shape=(32, 32), seed=0, **kw):
    cases = _cases(shape)
    t = LearnedTransforms.for_atlas(cases[0], 3, seed=seed, **{**SMALL, **kw})
    stats = t.fit([cases[0]], unlabelled=cases[1:], seed=seed, config=FAST)
    return t, stats, cases


@pytest.fixture(scope="module")
def fitted_2d():
    return _fitted()


def test_fit_trains_both_models_and_encodes_every_unlabelled_image(fitted_2d):
    t, stats, cases = fitted_2d
    assert stats["n_unlabelled"] == 4 and stats["atlas"] == "c0"
    assert stats["spatial"]["steps"] == 6 and stats["appearance"]["steps"] == 6
    assert t.backward_net is not None
    assert t.bank.ids == ["c1", "c2", "c3", "c4"]
    assert t.bank.ddf.shape == (4, 2, 32, 32) and t.bank.delta.shape == (4, 1, 32, 32)
    assert t.bank.delta.abs().sum() > 0  # the appearance model moved off its zero start


@pytest.mark.parametrize("label_warp", ["onehot", "nearest"])
def test_synthesised_labels_stay_in_the_atlas_label_set(fitted_2d, label_warp):
    t, _, cases = fitted_2d
    t.label_warp = label_warp
    try:
        # exaggerate the learned deformations so the warp really moves labels around
        big = t.bank.ddf.clone()
        t.bank.ddf = big + 3.0 * torch.randn(big.shape[:2] + (1, 1), generator=torch_generator(0))
        out = t.sample(6, generator=torch_generator(1), rand_aug=RandAug(displacement=0.08))
    finally:
        t.bank.ddf = big
        t.label_warp = "onehot"
    atlas_labels = set(np.unique(cases[0].mask).tolist())
    for c in out:
        assert c.image.shape == (1, 32, 32) and c.image.dtype == np.float32
        assert c.mask.dtype == np.int64 and set(np.unique(c.mask).tolist()) <= atlas_labels


def test_spatial_and_appearance_are_drawn_independently_from_different_images(fitted_2d):
    t, _, _ = fitted_2d
    g = torch_generator(3)
    draws = [t.draw_sources(g) for _ in range(300)]
    pairs = {(d["spatial_index"], d["appearance_index"]) for d in draws}
    assert all(i != j for i, j in pairs)  # different source images
    assert len(pairs) == 12  # every ordered pair of 4 images occurs: no coupling between the two draws
    for d in draws[:20]:  # each draw comes from its own generator: reproducible from its recorded seed
        assert int(torch.randint(4, (), generator=torch_generator(d["spatial_seed"]))) == d["spatial_index"]
        assert d["spatial_seed"] != d["appearance_seed"]
    # the spatial source does not depend on what the appearance generator produces
    same_spatial = {d["spatial_index"] for d in draws if d["appearance_index"] == 0}
    assert same_spatial == {1, 2, 3}
    cases = t.sample(3, generator=torch_generator(5))
    for c in cases:
        assert c.meta["spatial_source"] != c.meta["appearance_source"]
        assert c.meta["source_mask"] == "c0" and c.meta["method"] == "learned"


def test_determinism_under_a_seed():
    a, _, _ = _fitted(seed=7)
    b, _, _ = _fitted(seed=7)
    assert torch.equal(a.bank.ddf, b.bank.ddf) and torch.equal(a.bank.delta, b.bank.delta)
    ca = a.sample(3, generator=torch_generator(2))
    cb = b.sample(3, generator=torch_generator(2))
    for x, y in zip(ca, cb):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask) and x.meta == y.meta
    cc = a.sample(3, generator=torch_generator(3))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(ca, cc))


def test_save_load_round_trip(tmp_path, fitted_2d):
    t, _, _ = fitted_2d
    t.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "transforms.json").read_text())
    assert cfg["atlas_id"] == "c0" and cfg["init"]["inverse"] == "model"
    t2 = LearnedTransforms.load(tmp_path / "m")
    assert t2.bank.ids == t.bank.ids and torch.equal(t2.bank.ddf, t.bank.ddf)
    for (k, v), v2 in zip(t.state_dict().items(), t2.state_dict().values()):
        assert torch.equal(v.cpu(), v2), k
    a = t.sample(2, generator=torch_generator(9))
    b = t2.sample(2, generator=torch_generator(9))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(t.forward_ddf(x), t2.forward_ddf(x))
    with pytest.raises(DataError):
        LearnedTransforms.load(tmp_path / "missing")


def test_inverse_by_negation_in_3d():
    t, stats, cases = _fitted(shape=(12, 12, 12), inverse="negate")
    assert t.backward_net is None and t.bank.ddf.shape == (4, 3, 12, 12, 12)
    out = t.sample(2, generator=torch_generator(0))
    assert all(set(np.unique(c.mask).tolist()) <= set(np.unique(cases[0].mask).tolist()) for c in out)


def test_learned_source_batches_with_rand_aug_and_patches(fitted_2d):
    t, _, _ = fitted_2d
    x, y = LearnedSource(t, rand_aug=RandAug()).draw(3, torch_generator(0))
    assert x.shape == (3, 1, 32, 32) and y.shape == (3, 32, 32) and y.dtype == torch.long
    x, y = LearnedSource(t, patch_size=(16, 16)).draw(2, torch_generator(0))
    assert x.shape == (2, 1, 16, 16) and y.shape == (2, 16, 16)


def test_rand_aug_is_reproducible_from_its_params():
    case = make_blob_case("a", (24, 24), num_classes=3)
    ra = RandAug(displacement=0.08)
    params = ra.draw((24, 24), torch_generator(0))
    img, mask = torch.as_tensor(case.image), torch.as_tensor(case.mask)
    x1, y1 = ra.apply(img, mask, params, 3)
    x2, y2 = ra.apply(img, mask, json.loads(json.dumps(params)), 3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert set(y1.unique().tolist()) <= set(mask.unique().tolist()) and not torch.equal(y1, mask)


def test_atlas_segmenter_returns_the_atlas_labels_on_the_atlas(fitted_2d):
    t, _, cases = fitted_2d
    seg = AtlasSegmenter(t).eval()
    with torch.no_grad():
        logits = seg(torch.as_tensor(cases[0].image)[None])
        pred = logits.argmax(1)[0].numpy()
        assert (pred == cases[0].mask).mean() > 0.95
        other = seg(torch.randn(2, 1, 28, 36))  # another size: centre fitted and mapped back
    assert other.shape == (2, 3, 28, 36)


def test_center_fit_round_trip():
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).view(1, 2, 5, 7)
    y = center_fit(center_fit(x, (8, 4), -1.0), (5, 7), -1.0)
    assert torch.equal(y[..., :, 2:5], x[..., :, 2:5])  # the kept centre columns survive
    assert center_fit(x, (5, 7)) is x


def _ctx(tmp_path, cases, steps=2, **opts):
    info = DatasetInfo("blobs", {0: "bg", 1: "a", 2: "b"}, "other", 2, 1)
    cfg = TrainConfig(steps=steps, batch_size=2, val_every=steps, progress=False)
    from segsynth.data.case import Case

    unl = [Case(c.case_id, c.image, None, {}) for c in cases[2:]]
    return MethodContext(info=info, train=cases[:1], val=cases[1:2], unlabelled=unl, segmenter="unet",
                         segmenter_kwargs={"features": (4, 4, 8, 8, 16, 4)}, train_config=cfg, seed=0,
                         workdir=tmp_path / "runs" / "x", options=opts)


FAST_OPTS = {"reg_steps": 4, "app_steps": 4, "reg_batch": 2, "reg_channels": [8, 8, 8, 8], "app_channels": [8, 16]}


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


def test_write_synthetic_makes_a_loadable_dataset(tmp_path, fitted_2d):
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec

    t, _, _ = fitted_2d
    info = DatasetInfo("blobs", {0: "bg", 1: "a", 2: "b"}, "mri", 2, 1, file_format="nifti")
    rec = write_synthetic(t, 4, tmp_path / "syn", info, seed=0, rand_aug=RandAug())
    assert rec.n == 4
    lines = (tmp_path / "syn" / "provenance.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "spatial_source" in lines[0]
    data = load_dataset(tmp_path / "syn", PreprocessSpec(size=None, normalise="none"), progress=False)
    assert len(data.cases) == 4 and data.info.num_classes == 3

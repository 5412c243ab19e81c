"""GenSeg sweep methods end to end on tiny data, and their options."""

import dataclasses

import pytest
import torch

from segsynth.data.case import DatasetInfo
from segsynth.errors import ConfigError
from segsynth.generators import get_method
from segsynth.generators.base import MethodContext
from segsynth.generators.genseg import (
    GenSegGenerator,
    GenSegOptions,
    train_genseg,
)
from segsynth.generators.genseg.driver import gan_updates_in_loop
from segsynth.segment.train import TrainConfig
from tests.generators.genseg.helpers import TINY_OPTS, UNET, _blob_context, _cases


@pytest.fixture
def augmentation_calls(monkeypatch):
    """The kinds of classical augmentation built while the test runs (the real builder still does the work)."""
    import segsynth.data.transforms as transforms

    calls = []
    real = transforms.classical_augmentation

    def spy(kind="combined", spatial_dims=2, flip=False):
        calls.append(kind)
        return real(kind, spatial_dims, flip)

    monkeypatch.setattr(transforms, "classical_augmentation", spy)
    return calls


@pytest.mark.parametrize("method,segmenter", [("genseg", "unet"), ("separate", "unet"), ("genseg", "deeplab")])
def test_methods_end_to_end_2d(tmp_path, method, segmenter):
    kw = UNET if segmenter == "unet" else {"aspp_channels": 4}
    ctx = _blob_context(tmp_path, segmenter, kw)
    result = get_method(method, **TINY_OPTS).run(ctx)
    assert result.model(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    assert 0.0 <= result.best_val_dice <= 1.0
    keys = set().union(*result.history)
    assert {"gan_d", "gan_l1"} <= keys if method == "genseg" else "gan_d" not in keys
    assert ("arch_grad_norm" in keys) == (method == "genseg")
    saved = GenSegGenerator.load(tmp_path / "run" / "generator")
    if method == "genseg":
        assert not saved.net.searchable and saved.search_record is not None
    else:  # the ablation never searches: alpha stays at its uniform start
        assert saved.net.searchable and all(float(a.detach().abs().sum()) == 0 for a in saved.net.arch_parameters())
        pre = GenSegGenerator.load(tmp_path / "run" / "generator_pretrained")
        assert pre.history["fit"][0]["steps"] == TINY_OPTS["pretrain_steps"] + 4  # same GAN updates as GenSeg


def test_frozen_ablation_trains_like_genseg_but_never_moves_alpha(tmp_path):
    ctx = _blob_context(tmp_path)
    method = get_method("genseg_frozen", save_search=True, **TINY_OPTS)
    assert method.opts.search is False and get_method("genseg", **TINY_OPTS).opts.search is True
    result = method.run(ctx)
    keys = set().union(*result.history)
    assert {"gan_d", "gan_l1"} <= keys and "arch_grad_norm" not in keys  # GAN in the loop, no hyper-steps
    searched = GenSegGenerator.load(tmp_path / "run" / "generator_search")
    assert searched.net.searchable
    assert all(float(a.detach().abs().sum()) == 0 for a in searched.net.arch_parameters())
    assert not GenSegGenerator.load(tmp_path / "run" / "generator").net.searchable  # derived, as in genseg


def _context_3d(tmp_path, size):
    """2 training and 2 validation blob volumes of size³, a small DynUNet, 2 segmenter steps."""
    cases = _cases((size,) * 3, n=4)
    info = DatasetInfo("blobs3d", {0: "background", 1: "blob"}, "mri", 3, 1)
    return MethodContext(info=info, train=cases[:2], val=cases[2:], segmenter="dynunet",
                         segmenter_kwargs={"levels": 3, "filters": (4, 8, 8)},
                         train_config=TrainConfig(steps=2, batch_size=2, val_every=2, progress=False), seed=0,
                         workdir=tmp_path / "run")


def test_3d_end_to_end(tmp_path):
    ctx = _context_3d(tmp_path, 16)
    result, gen = train_genseg(ctx, GenSegOptions(**TINY_OPTS, arch_every=1, save_generator=False))
    assert result.model(torch.zeros(1, 1, 16, 16, 16)).shape[:2] == (1, 2)
    assert gen.net.spatial_dims == 3 and any(float(a.detach().abs().sum()) > 0 for a in gen.net.arch_parameters())


def test_gan_patch_trains_the_gan_on_crops_and_renders_whole_volumes(tmp_path, monkeypatch):
    from segsynth.generators.genseg.gan import GanTrainer

    shapes = []
    step = GanTrainer.step
    monkeypatch.setattr(GanTrainer, "step", lambda self, x, y, g: shapes.append(tuple(x.shape[2:])) or step(self, x, y, g))
    ctx = _context_3d(tmp_path, 24)
    opts = {**TINY_OPTS, "derive_steps": 0}
    _, gen = train_genseg(ctx, GenSegOptions(**opts, gan_patch=[16, 16, 16]))
    assert len(shapes) == TINY_OPTS["pretrain_steps"] + 2 and set(shapes) == {(16, 16, 16)}  # pre-training, loop
    assert gen.sample(1, generator=torch.Generator().manual_seed(0))[0].image.shape[-3:] == (24, 24, 24)
    for bad, says in (([16, 16], "3 dimensions"), ([8, 16, 16], "needs at least 16 voxels")):
        with pytest.raises(ConfigError, match=says):  # refused before any GAN step or saved file
            train_genseg(dataclasses.replace(ctx, workdir=tmp_path / "bad"), GenSegOptions(**opts, gan_patch=bad))
        assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="gan_patch"):
        GenSegOptions(gan_patch=[8, 0, 8])


def test_options_are_checked_early():
    with pytest.raises(ConfigError, match="unknown genseg options"):
        get_method("genseg", n_synthetic=10)
    with pytest.raises(ConfigError, match="hypergradient"):
        get_method("genseg", hypergradient="implicit")
    with pytest.raises(ConfigError, match="mask augmentation"):
        get_method("separate", augment={"rotation": 3})
    with pytest.raises(ConfigError, match="synthetic_fraction"):
        GenSegOptions(synthetic_fraction=1.0)


def test_genseg_aug_augments_the_real_pairs(tmp_path, augmentation_calls):
    calls = augmentation_calls
    method = get_method("genseg_aug", **TINY_OPTS)
    assert method.opts.augment_real and not get_method("genseg", **TINY_OPTS).opts.augment_real
    assert get_method("genseg_aug", augment_real=False, **TINY_OPTS).opts.augment_real is False
    ctx = _blob_context(tmp_path)
    result = method.run(ctx)
    # the hook's real pairs and the segmenter's mixed batches (real and generated pairs alike) are augmented
    assert calls and set(calls) == {"combined"} and "arch_grad_norm" in set().union(*result.history)
    assert method.mix.augment_real and method.mix.synthetic_augmented
    assert not get_method("genseg_aug", augment_synthetic=False, **TINY_OPTS).mix.synthetic_augmented


def test_synthetic_until_stops_the_generator_updates_with_the_generated_pairs(tmp_path):
    result = get_method("genseg_aug", synthetic_until=0.5, **TINY_OPTS).run(_blob_context(tmp_path))
    gan = [int("gan_d" in h) for h in result.history]  # 4 steps: generated pairs in the first 2 only
    assert gan == [1, 0, 0, 0]  # the update after step 2 would reach only real batches
    assert gan_updates_in_loop(4, 1, switch=2) == sum(gan) and gan_updates_in_loop(4, 1) == 4
    assert gan_updates_in_loop(400, 2, switch=201) == 100 and gan_updates_in_loop(400, 0) == 0


def test_separate_with_synthetic_until_gets_the_gan_updates_genseg_would_make(tmp_path):
    """separate trains its generator for as many GAN steps as GenSeg's would make: with synthetic_until, only those
    before the switch (after it GenSeg's hook stops), not one per segmenter step of the whole run."""
    get_method("separate_aug", synthetic_until=0.5, **TINY_OPTS).run(_blob_context(tmp_path))
    pre = GenSegGenerator.load(tmp_path / "run" / "generator_pretrained")
    assert pre.history["fit"][0]["steps"] == TINY_OPTS["pretrain_steps"] + 1  # 4 steps, switch at 2: 1 update


def test_extra_masks_are_rendered_alongside_the_real_ones(tmp_path):
    import numpy as np
    from PIL import Image

    from segsynth.errors import DataError

    folder = tmp_path / "masks_only"
    folder.mkdir()
    for i in range(5):  # label maps without images, at another size than the working one
        m = np.zeros((48, 40), np.uint8)
        m[5 + 3 * i: 30, 8: 20 + 2 * i] = 1
        Image.fromarray(m).save(folder / f"extra{i}.png")
    method = get_method("separate_aug", extra_masks=str(folder), **TINY_OPTS)
    ctx = _blob_context(tmp_path)
    method.run(ctx)
    source = method._generator.source
    assert len(source) == 3 + 5 and source.ids[3:] == [f"extra{i}" for i in range(5)]
    assert all(tuple(m.shape) == (32, 32) for m in source.masks)
    drawn = {method._generator.sample(1, generator=torch.Generator().manual_seed(s))[0].meta["source_mask"]
             for s in range(12)}
    assert any(d.startswith("extra") for d in drawn)  # the extra masks are drawn for rendering
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(folder / "zz_bad.png")
    with pytest.raises(DataError, match="zz_bad.png"):
        get_method("separate_aug", extra_masks=str(folder), **TINY_OPTS).run(_blob_context(tmp_path / "b"))
    assert not (tmp_path / "b" / "run").exists()  # read before the generator's fit: nothing trained or written


def test_separate_aug_is_separate_stacked_on_augmentation(tmp_path, augmentation_calls):
    """``separate_aug``: all GAN steps before the segmenter, no alpha updates, real and generated pairs augmented."""
    calls = augmentation_calls
    method = get_method("separate_aug", **TINY_OPTS)
    assert method.opts.augment_real and method.mix.synthetic_augmented and not method.feedback
    assert get_method("separate_aug", augment_real=False, **TINY_OPTS).opts.augment_real is False
    result = method.run(_blob_context(tmp_path))
    keys = set().union(*result.history)
    assert calls and "arch_grad_norm" not in keys and "gan_d" not in keys
    pre = GenSegGenerator.load(tmp_path / "run" / "generator_pretrained")
    assert pre.history["fit"][0]["steps"] == TINY_OPTS["pretrain_steps"] + 4


def test_runs_of_one_sweep_share_a_fitted_generator(tmp_path, monkeypatch):
    """``separate_aug`` and ``separate_aug+fixmatch`` of one seed fit the same generator: the second run reuses the
    first one's (from ``ctx.shared_dir``) and trains exactly what a fresh fit would give; another seed fits its own."""
    import dataclasses

    from segsynth.data.case import Case

    fits = []
    real_fit = GenSegGenerator.fit

    def spy(self, *args, **kwargs):
        fits.append(kwargs.get("seed"))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(GenSegGenerator, "fit", spy)
    shared = tmp_path / "shared"

    def ctx(name, seed=0, share=True):
        c = _blob_context(tmp_path / name)
        unlabelled = [Case(f"u{i}", x.image, None, {}) for i, x in enumerate(_cases(n=2))]
        return dataclasses.replace(c, seed=seed, unlabelled=unlabelled, shared_dir=shared if share else None)

    first = get_method("separate_aug", **TINY_OPTS).run(ctx("a"))
    combined = get_method("fixmatch", labelled="separate_aug", threshold=0.5, **TINY_OPTS).run(ctx("b"))
    assert fits == [0] and "fixmatch_loss" in set().union(*combined.history)  # fitted once, for both methods
    assert (shared / "genseg_pretrained").is_dir() and (tmp_path / "b" / "run" / "generator_pretrained").is_dir()
    reused = get_method("separate_aug", **TINY_OPTS).run(ctx("c"))
    fresh = get_method("separate_aug", **TINY_OPTS).run(ctx("d", share=False))  # fits again, nothing shared
    assert fits == [0, 0]
    for a, b in zip(fresh.model.state_dict().values(), reused.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # a reused generator trains the same segmenter as a fresh fit
    assert fresh.best_val_dice == reused.best_val_dice == first.best_val_dice
    get_method("separate_aug", **TINY_OPTS).run(ctx("e", seed=1))
    assert fits == [0, 0, 1]


def test_a_combination_offers_its_generator_pairs_for_label_fidelity(tmp_path):
    """``separate_aug+fixmatch`` makes synthetic pairs (its labelled stream's), so a sweep scores their label
    fidelity; ``fixmatch`` alone (augment + FixMatch) makes none."""
    import dataclasses

    from segsynth.data.case import Case
    from segsynth.evaluate.fidelity import makes_synthetic_pairs, synthetic_source_of
    from segsynth.utils.seed import torch_generator

    unlabelled = [Case(f"u{i}", x.image, None, {}) for i, x in enumerate(_cases(n=2))]
    ctx = dataclasses.replace(_blob_context(tmp_path), unlabelled=unlabelled)
    combo = get_method("fixmatch", labelled="separate_aug", threshold=0.5, **TINY_OPTS)
    assert makes_synthetic_pairs(combo) and not makes_synthetic_pairs(get_method("fixmatch"))
    combo.run(ctx)
    assert synthetic_source_of(get_method("fixmatch"), ctx) is None
    x, y = synthetic_source_of(combo, ctx).draw(3, torch_generator(0))
    assert x.shape[0] == y.shape[0] == 3 and x.shape[-2:] == y.shape[-2:]
    assert set(torch.unique(y).tolist()) <= {0, 1} and torch.isfinite(x).all()


def test_an_unreadable_shared_generator_is_fitted_again_not_fatal(tmp_path, caplog):
    """The shared folder is a cache other runs write (at the same time under Ray): a copy that cannot be read
    counts as absent; the run fits its own generator and finishes."""
    import dataclasses

    shared = tmp_path / "shared"
    get_method("separate_aug", **TINY_OPTS).run(dataclasses.replace(_blob_context(tmp_path / "a"), shared_dir=shared))
    (cached,) = (shared / "genseg_pretrained").iterdir()
    (cached / "genseg.json").write_text("{ half written")
    result = get_method("separate_aug", **TINY_OPTS).run(
        dataclasses.replace(_blob_context(tmp_path / "b"), shared_dir=shared))
    assert 0.0 <= result.best_val_dice <= 1.0
    assert "unreadable" in caplog.text and (tmp_path / "b" / "run" / "generator_pretrained" / "genseg.json").exists()

"""GenSeg: generator contract (shapes, save/load, determinism, one step), the coupled training, CLI."""

import json

import numpy as np
import pytest
import torch

from segsynth.cli import main
from segsynth.data.case import DatasetInfo
from segsynth.data.dataset import load_dataset
from segsynth.errors import ConfigError, DataError
from segsynth.generators import get_method
from segsynth.generators.base import MethodContext, SyntheticGenerator
from segsynth.generators.genseg import (
    GanTrainer,
    GeneratedSource,
    GenSegGenerator,
    GenSegHook,
    GenSegOptions,
    train_genseg,
)
from segsynth.nets.segmenters import build_segmenter
from segsynth.segment.sources import CaseSource, MixedSource
from segsynth.segment.train import TrainConfig, train_segmenter
from tests.conftest import make_blob_case, write_png_dataset

TINY = {"features": 4, "max_features": 8, "disc_features": 4}
TINY_OPTS = {**TINY, "pretrain_steps": 2, "gen_batch_size": 2, "arch_batch_size": 2, "derive_steps": 1}
UNET = {"features": (4, 4, 8, 8, 16, 4)}


def _cases(shape=(32, 32), n=4, channels=1, k=2):
    return [make_blob_case(f"c{i}", shape, channels=channels, num_classes=k, seed=i) for i in range(n)]


def _blob_context(tmp_path, segmenter="unet", segmenter_kwargs=UNET):
    """A 2D method context: 3 training and 2 validation blob cases, 4 segmenter steps, work in tmp_path/run."""
    cases = _cases(n=5)
    info = DatasetInfo("blobs", {0: "background", 1: "blob"}, "other", 2, 1)
    return MethodContext(info=info, train=cases[:3], val=cases[3:], segmenter=segmenter,
                         segmenter_kwargs=segmenter_kwargs,
                         train_config=TrainConfig(steps=4, batch_size=2, val_every=2, progress=False), seed=0,
                         workdir=tmp_path / "run")


def _fitted(shape=(32, 32), channels=1, k=2, steps=2, seed=0):
    gen = GenSegGenerator(**TINY)
    stats = gen.fit(_cases(shape, channels=channels, k=k), seed=seed, steps=steps)
    return gen, stats


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


def test_one_gan_step_at_a_time_reduces_l1_and_leaves_alpha():
    gen = GenSegGenerator(**TINY, dropout=0.0)
    cases = _cases()
    gen.build_for(cases, seed=0)
    gan = GanTrainer(gen, lr=2e-3)
    x, y = CaseSource(cases).draw(4, torch.Generator().manual_seed(0))
    alpha = [a.detach().clone() for a in gen.net.arch_parameters()]
    l1 = [gan.step(x, y, torch.Generator().manual_seed(0))["gan_l1"] for _ in range(8)]
    assert l1[-1] < l1[0]
    assert all(torch.equal(a, b) for a, b in zip(alpha, gen.net.arch_parameters()))


def _hook_setup(seed=0):
    cases = _cases(n=5)
    opts = GenSegOptions(**TINY_OPTS, arch_every=1)
    gen = GenSegGenerator(**opts.generator_kwargs())
    gen.build_for(cases[:3], seed=seed)
    gen.set_source_masks(cases[:3])
    real = CaseSource(cases[:3])
    hook = GenSegHook(gen, real, gen.source, CaseSource(cases[3:]), opts, seed=seed)
    source = MixedSource([(real, 0.5), (GeneratedSource(gen, gen.source), 0.5)])
    return gen, hook, source, cases


class _Kill:
    def __init__(self, at):
        self.at = at

    def after_step(self, state):
        if state.step == self.at:
            raise KeyboardInterrupt


def test_hook_moves_alpha_and_resumes_exactly(tmp_path):
    cfg = TrainConfig(steps=4, batch_size=2, val_every=2, progress=False)

    def model():
        torch.manual_seed(0)
        return build_segmenter("unet", 2, 1, 2, **UNET)

    gen, hook, source, cases = _hook_setup()
    train_segmenter(model(), source, cases[3:], cfg, num_classes=2, hooks=[hook])
    assert any(float(a.detach().abs().sum()) > 0 for a in gen.net.arch_parameters())  # alpha learned
    ref = [a.detach().clone() for a in gen.net.arch_parameters()]

    gen2, hook2, source2, _ = _hook_setup()
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(model(), source2, cases[3:], cfg, num_classes=2, hooks=[hook2, _Kill(3)],
                        checkpoint_dir=tmp_path)
    gen3, hook3, source3, _ = _hook_setup()
    train_segmenter(model(), source3, cases[3:], cfg, num_classes=2, hooks=[hook3], checkpoint_dir=tmp_path)
    for a, b in zip(ref, gen3.net.arch_parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    torch.load(tmp_path / "last.pt", weights_only=True)  # hook state loads without pickled code


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


def test_3d_end_to_end(tmp_path):
    cases = _cases((16, 16, 16), n=4)
    info = DatasetInfo("blobs3d", {0: "background", 1: "blob"}, "mri", 3, 1)
    ctx = MethodContext(info=info, train=cases[:2], val=cases[2:], segmenter="dynunet",
                        segmenter_kwargs={"levels": 3, "filters": (4, 8, 8)},
                        train_config=TrainConfig(steps=2, batch_size=2, val_every=2, progress=False), seed=0,
                        workdir=tmp_path / "run")
    result, gen = train_genseg(ctx, GenSegOptions(**TINY_OPTS, arch_every=1, save_generator=False))
    assert result.model(torch.zeros(1, 1, 16, 16, 16)).shape[:2] == (1, 2)
    assert gen.net.spatial_dims == 3 and any(float(a.detach().abs().sum()) > 0 for a in gen.net.arch_parameters())


def test_options_are_checked_early():
    with pytest.raises(ConfigError, match="unknown genseg options"):
        get_method("genseg", n_synthetic=10)
    with pytest.raises(ConfigError, match="hypergradient"):
        get_method("genseg", hypergradient="implicit")
    with pytest.raises(ConfigError, match="mask augmentation"):
        get_method("separate", augment={"rotation": 3})
    with pytest.raises(ConfigError, match="synthetic_fraction"):
        GenSegOptions(synthetic_fraction=1.0)


def test_cli_synthesize_from_masks_and_augmented_dataset(tmp_path, capsys):
    data = write_png_dataset(tmp_path / "blobs", n=4)
    from segsynth.data.preprocess import PreprocessSpec

    loaded = load_dataset(data, PreprocessSpec(size=32), progress=False)
    gen = GenSegGenerator(**TINY)
    gen.build_for(loaded.cases, seed=0, info=loaded.info)
    gen.save(tmp_path / "model" / "generator")

    out = tmp_path / "syn_aug"
    assert main(["synthesize", "--model", str(tmp_path / "model"), "--augment-from", str(data), "--n", "3",
                 "--out", str(out), "--device", "cpu", "-q"]) == 0
    ds = load_dataset(out, PreprocessSpec(size=None), progress=False)
    assert len(ds.cases) == 3 and ds.info.labels == loaded.info.labels
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["synthetic"]["method"] == "genseg" and doc["synthetic"]["augmented"]
    prov = [json.loads(line) for line in (out / "provenance.jsonl").read_text().splitlines()]
    assert {"seed", "source_mask", "model", "augment"} <= set(prov[0]["meta"])

    out2 = tmp_path / "syn_masks"
    assert main(["synthesize", "--model", str(tmp_path / "model" / "generator"), "--masks", str(data / "masks"),
                 "--out", str(out2), "--device", "cpu", "-q"]) == 0
    ds2 = load_dataset(out2, PreprocessSpec(size=None), progress=False)
    assert len(ds2.cases) == 4
    first = [json.loads(line) for line in (out2 / "provenance.jsonl").read_text().splitlines()][0]
    src = np.asarray(__import__("PIL.Image").Image.open(data / "masks" / f"{first['meta']['source_mask']}.png")) > 0
    assert np.array_equal(ds2.cases[0].mask > 0, src)
    capsys.readouterr()
    assert main(["synthesize", "--model", str(tmp_path), "--masks", str(data / "masks"), "--out",
                 str(tmp_path / "x"), "-q"]) == 2
    assert "genseg.json" in capsys.readouterr().err


def test_cli_genseg_trains_saves_and_evaluates(tmp_path, capsys):
    data = write_png_dataset(tmp_path / "blobs", n=6)
    out = tmp_path / "out"
    args = ["genseg", "--data", str(data), "--out", str(out), "--n", "2", "--n-val", "1", "--n-test", "2",
            "--size", "32", "--steps", "2", "--val-every", "2", "--batch-size", "2", "--unet-features",
            "4,4,8,8,16,4", "--pretrain-steps", "1", "--gen-features", "4", "--method-opt",
            "genseg.disc_features=4", "--method-opt", "genseg.derive_steps=1", "--arch-every", "1",
            "--device", "cpu", "-q"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "genseg" and 0 <= summary["test_dice"] <= 1 and summary["n_test"] == 2
    assert summary["search"]["genotype"] == summary["architecture"]["genotype"]
    assert (out / "segmenter" / "model.safetensors").exists()
    assert not GenSegGenerator.load(out / "generator").net.searchable
    assert GenSegGenerator.load(out / "work" / "generator_search").net.searchable
    assert "generator" in capsys.readouterr().out


def test_genseg_aug_augments_the_real_pairs(tmp_path, monkeypatch):
    import segsynth.data.transforms as transforms

    calls = []
    real = transforms.classical_augmentation

    def spy(kind="combined", spatial_dims=2, flip=False):
        calls.append(kind)
        return real(kind, spatial_dims, flip)

    monkeypatch.setattr(transforms, "classical_augmentation", spy)
    method = get_method("genseg_aug", **TINY_OPTS)
    assert method.opts.augment_real and not get_method("genseg", **TINY_OPTS).opts.augment_real
    assert get_method("genseg_aug", augment_real=False, **TINY_OPTS).opts.augment_real is False
    ctx = _blob_context(tmp_path)
    result = method.run(ctx)
    assert calls == ["combined"] and "arch_grad_norm" in set().union(*result.history)

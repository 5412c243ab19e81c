"""brainSPADE generators on tiny inputs: training steps, valid PV samples, save/load, determinism, streaming."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from segsynth.data.case import Case, DatasetInfo
from segsynth.data.partial_volume import is_valid_pv
from segsynth.errors import ConfigError
from segsynth.generators import METHODS, brainspade, get_method
from segsynth.generators.base import MethodContext, SyntheticGenerator
from segsynth.generators.brainspade import (
    BrainSpadeGenerator,
    ImageGenerator,
    LabelGenerator,
    info_nce,
    write_synthetic_dataset,
)
from tests.conftest import make_blob_case

K = 3
LABEL_OPTS = dict(num_classes=K, ae_channels=(16, 16), unet_channels=(16, 32), unet_attention=(False, True),
                  num_head_channels=16, disc_channels=8, disc_layers=2, ae_steps=1, ldm_steps=1, ae_batch_size=2,
                  ldm_batch_size=4, latent_copies=1, sampling_steps=2, num_train_timesteps=20,
                  progress=False)
IMAGE_OPTS = dict(num_classes=K, spade_channels=(8, 16), z_dim=4, spade_hidden=8, disc_channels=8, spade_steps=1,
                  spade_batch_size=4, classifier_steps=1, progress=False)
INFO = DatasetInfo("blobs", {0: "background", 1: "a", 2: "b"}, "mri", 2, 1)


def _cases(n=4, shape=(32, 32)):
    cases = [make_blob_case(f"c{i}", shape, num_classes=K, seed=i) for i in range(n)]
    for i, c in enumerate(cases):
        c.meta.update(volume_id=f"v{i // 2}", slice_index=i % 2, num_slices=2)
    return cases


def _target(n=2):
    out = []
    for i in range(n):
        c = make_blob_case(f"t{i}", (32, 32), num_classes=K, seed=50 + i)
        out.append(Case(c.case_id, (1.0 - c.image) * 2.0, None, {"domain": "target-site"}))
    return out


@pytest.fixture(scope="module")
def fitted():
    """A tiny label generator and image generator (one step each), fitted once for the module."""
    cases = _cases()
    labels = LabelGenerator(**LABEL_OPTS, condition="class_presence")
    lstats = labels.fit(cases, val=cases[:1], seed=0)
    images = ImageGenerator(**IMAGE_OPTS)
    istats = images.fit(cases, unlabelled=_target(), seed=0)
    return cases, labels, images, lstats, istats


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


def test_label_generator_trains_and_samples_valid_pv(fitted):
    cases, labels, _, stats, _ = fitted
    assert stats["ae"]["steps"] == 1 and stats["ldm"]["steps"] == 1
    assert np.isfinite(stats["ae"]["l1"]) and np.isfinite(stats["ldm"]["mse_final_mean"])
    assert np.isfinite(stats["val_ae_l1"])
    pv, recs = labels.sample_pv([1, 2, 3])
    assert pv.shape == (3, K, 32, 32) and is_valid_pv(pv)
    assert all(r["sampler"] == "ddim" and r["steps"] == 2 and len(r["condition"]) == K - 1 for r in recs)
    out = labels.sample(2, generator=torch.Generator().manual_seed(0))
    for c in out:
        assert set(np.unique(c.mask)) <= set(range(K)) and c.mask.dtype == np.int64
        assert np.array_equal(c.mask, c.image.argmax(0))
    # explicit conditions, DDPM (stochastic steps) reproducible through the seeds
    a, _ = labels.sample_pv([5], conditions=[[1.0, 0.0]], sampler="ddpm")
    b, _ = labels.sample_pv([5], conditions=[[1.0, 0.0]], sampler="ddpm")
    assert torch.equal(a, b) and is_valid_pv(a)


def test_label_generator_uses_no_global_random_state():
    state = torch.get_rng_state()
    gen = LabelGenerator(**LABEL_OPTS)
    gen.fit(_cases(2, (16, 16)), seed=3)
    gen.sample_pv([1], sampler="ddpm")
    assert torch.equal(state, torch.get_rng_state())


def test_label_generator_determinism_and_save_load(fitted, tmp_path):
    cases, labels, _, _, _ = fitted
    again = LabelGenerator(**LABEL_OPTS, condition="class_presence")
    again.fit(cases, val=cases[:1], seed=0)
    for a, b in zip(labels.autoencoder.state_dict().values(), again.autoencoder.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(labels.sample_pv([7, 8])[0], again.sample_pv([7, 8])[0])
    labels.save(tmp_path / "lab")
    loaded = LabelGenerator.load(tmp_path / "lab")
    assert loaded.scale_factor == labels.scale_factor
    assert torch.allclose(labels.sample_pv([7, 8])[0], loaded.sample_pv([7, 8])[0], atol=1e-6)


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


def test_brainspade_pairs_and_resumable_streaming(fitted, tmp_path, monkeypatch):
    cases, labels, images, _, _ = fitted
    gen = BrainSpadeGenerator.from_parts(labels, images)
    pairs = gen.sample(3, generator=torch.Generator().manual_seed(0))
    for p in pairs:
        assert set(np.unique(p.mask)) <= set(range(K))
        assert p.meta["source_mask"] == "label-generator" and "seed" in p.meta and "style_source" in p.meta
    gen.save(tmp_path / "model")
    loaded = BrainSpadeGenerator.load(tmp_path / "model")
    full = write_synthetic_dataset(loaded, tmp_path / "full", 5, info=INFO, seed=4, batch_size=2, model="m",
                                   progress=False)

    from segsynth.data.writer import DatasetWriter

    real_add = DatasetWriter.add
    calls = {"n": 0}

    def dying_add(self, case):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real_add(self, case)

    monkeypatch.setattr(DatasetWriter, "add", dying_add)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(loaded, tmp_path / "resumed", 5, info=INFO, seed=4, batch_size=2, model="m",
                                progress=False)
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(DatasetWriter, "add", real_add)
    resumed = write_synthetic_dataset(loaded, tmp_path / "resumed", 5, info=INFO, seed=4, batch_size=2, model="m",
                                      progress=False)
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec

    spec = PreprocessSpec(size=None)
    a = {c.case_id: c for c in load_dataset(full, spec, progress=False).cases}
    b = {c.case_id: c for c in load_dataset(resumed, spec, progress=False).cases}
    assert sorted(a) == sorted(b) == [f"syn{i:06d}" for i in range(5)]
    for cid in a:
        np.testing.assert_array_equal(a[cid].mask, b[cid].mask)
        np.testing.assert_allclose(a[cid].image, b[cid].image, atol=1e-5)
    prov = [json.loads(line) for line in (resumed / "provenance.jsonl").read_text().splitlines()]
    assert {p["meta"]["model"] for p in prov} == {"m"}
    assert all({"seed", "style_source", "source_mask", "sampler"} <= set(p["meta"]) for p in prov)


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


def test_3d_generators_one_step_each():
    cases = [make_blob_case(f"v{i}", (8, 8, 8), num_classes=2, seed=i) for i in range(2)]
    labels = LabelGenerator(**{**LABEL_OPTS, "num_classes": 2, "spatial_dims": 3, "disc_layers": 1})
    labels.fit(cases, seed=0)
    pv, _ = labels.sample_pv([1])
    assert pv.shape == (1, 2, 8, 8, 8) and is_valid_pv(pv)
    images = ImageGenerator(**{**IMAGE_OPTS, "num_classes": 2, "spatial_dims": 3, "num_d": 1,
                               "spade_batch_size": 2})
    images.fit(cases, seed=0)
    out = images.sample(1, generator=torch.Generator().manual_seed(0), masks=[cases[0].mask])
    assert out[0].image.shape == (1, 8, 8, 8)


def test_perceptual_term_with_a_locally_saved_segmenter(tmp_path):
    from segsynth.nets.segmenters import build_segmenter
    from segsynth.segment.model_io import save_segmenter

    seg = build_segmenter("unet", 2, 1, K, features=(4, 4, 8, 8, 8, 4))
    save_segmenter(seg, tmp_path / "seg", INFO, segmenter_kwargs={"features": [4, 4, 8, 8, 8, 4]})
    gen = LabelGenerator(**{**LABEL_OPTS, "perceptual_model": str(tmp_path / "seg"), "perceptual_weight": 0.1})
    stats = gen.fit(_cases(2, (16, 16)), seed=0)
    assert np.isfinite(stats["ae"]["l1"])


# ------------------------------------------------------------------------------------ resumable training


class _Killed(Exception):
    """Stands for a kill in the middle of a training step."""


_REAL_PROGRESS = brainspade._progress


def _kill_after(monkeypatch, n_steps: float) -> dict[str, int]:
    """Let the training loops run ``n_steps`` steps in all (every stage counts), then die in the next one.

    Returns the steps done per stage (progress bar name), updated as training goes.
    """
    real = _REAL_PROGRESS
    done: dict[str, int] = {}

    def progress(total, desc, enabled, initial=0):
        bar = real(total, desc, False, initial)
        real_update = bar.update

        def update(n=1):
            if sum(done.values()) + n > n_steps:
                raise _Killed(desc)
            done[desc] = done.get(desc, 0) + n
            return real_update(n)

        bar.update = update
        return bar

    monkeypatch.setattr(brainspade, "_progress", progress)
    return done


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _without_times(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if not k.endswith("_seconds")}


def test_label_generator_resumes_after_kills_with_identical_weights(tmp_path, monkeypatch):
    cases = _cases(4, (16, 16))
    opts = {**LABEL_OPTS, "ae_steps": 5, "ldm_steps": 5, "condition": "class_presence"}
    ref = LabelGenerator(**opts)
    ref_stats = ref.fit(cases, val=cases[:1], seed=1)
    ckpt = tmp_path / "ckpt"

    def run():
        return LabelGenerator(**opts), dict(val=cases[:1], seed=1, checkpoint_dir=ckpt, checkpoint_every=2)

    _kill_after(monkeypatch, 3)  # dies in autoencoder step 4; its checkpoint holds step 2
    gen, kw = run()
    with pytest.raises(_Killed):
        gen.fit(cases, **kw)
    assert (ckpt / "label_autoencoder.pt").exists() and not (ckpt / "label_diffusion.pt").exists()
    done = _kill_after(monkeypatch, 6)  # autoencoder steps 3-5, then dies in diffusion step 4
    gen, kw = run()
    with pytest.raises(_Killed):
        gen.fit(cases, **kw)
    assert done == {"label autoencoder": 3, "label diffusion": 3}
    done = _kill_after(monkeypatch, math.inf)
    gen, kw = run()
    stats = gen.fit(cases, **kw)
    assert done == {"label diffusion": 3}  # the finished autoencoder stage is skipped, diffusion resumes at 2
    _assert_same_weights(gen.autoencoder, ref.autoencoder)
    _assert_same_weights(gen.unet, ref.unet)
    assert gen.scale_factor == ref.scale_factor and torch.equal(gen.condition_bank, ref.condition_bank)
    assert _without_times(stats) == _without_times(ref_stats)
    assert torch.equal(gen.sample_pv([3, 4])[0], ref.sample_pv([3, 4])[0])
    # both stages finished: a rerun trains nothing and ends the same
    done = _kill_after(monkeypatch, 0)
    again, kw = run()
    assert _without_times(again.fit(cases, **kw)) == _without_times(ref_stats) and done == {}
    _assert_same_weights(again.unet, ref.unet)
    assert again.scale_factor == ref.scale_factor


def test_image_generator_resumes_after_kills_with_identical_weights(tmp_path, monkeypatch):
    cases = _cases(4)
    opts = {**IMAGE_OPTS, "classifier_steps": 3, "spade_steps": 4}
    ref = ImageGenerator(**opts)
    ref_stats = ref.fit(cases, unlabelled=_target(), seed=2)
    ckpt = tmp_path / "ckpt"
    kw = dict(unlabelled=_target(), seed=2, checkpoint_dir=ckpt, checkpoint_every=2)

    _kill_after(monkeypatch, 2)  # dies in classifier step 3; its checkpoint holds step 2
    with pytest.raises(_Killed):
        ImageGenerator(**opts).fit(cases, **kw)
    done = _kill_after(monkeypatch, 4)  # classifier step 3, then dies in GAN step 4
    with pytest.raises(_Killed):
        ImageGenerator(**opts).fit(cases, **kw)
    assert done == {"modality classifier": 1, "SPADE image generator": 3}
    done = _kill_after(monkeypatch, math.inf)
    gen = ImageGenerator(**opts)
    stats = gen.fit(cases, **kw)
    assert done == {"SPADE image generator": 2}
    _assert_same_weights(gen.net, ref.net)
    _assert_same_weights(gen.classifier, ref.classifier)
    assert torch.equal(gen.style_bank["mu"], ref.style_bank["mu"])
    assert _without_times(stats) == _without_times(ref_stats)


def test_a_checkpoint_of_another_configuration_is_not_reused(tmp_path, caplog):
    cases = _cases(2, (16, 16))
    opts = {**LABEL_OPTS, "ae_steps": 2, "ldm_steps": 2}
    ckpt = tmp_path / "ckpt"
    LabelGenerator(**opts).fit(cases, seed=0, checkpoint_dir=ckpt)
    with caplog.at_level(logging.WARNING):  # a sampling option does not invalidate the training checkpoint
        LabelGenerator(**{**opts, "sampling_steps": 3}).fit(cases, seed=0, checkpoint_dir=ckpt)
    assert "ignoring checkpoint" not in caplog.text
    other = [make_blob_case(f"o{i}", (16, 16), num_classes=K, seed=20 + i) for i in range(2)]
    for changed, seed, data in (({**opts, "kl_weight": 1e-3}, 0, cases), (opts, 5, cases), (opts, 0, other)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            gen = LabelGenerator(**changed)
            gen.fit(data, seed=seed, checkpoint_dir=ckpt)
        assert "ignoring checkpoint" in caplog.text and "another configuration" in caplog.text
        ref = LabelGenerator(**changed)
        ref.fit(data, seed=seed)
        _assert_same_weights(gen.autoencoder, ref.autoencoder)
        _assert_same_weights(gen.unet, ref.unet)

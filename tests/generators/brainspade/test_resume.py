"""brainSPADE's resumable training: killed fits resume with identical weights."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from segsynth.generators import fit_loop
from segsynth.generators.brainspade import (
    ImageGenerator,
    LabelGenerator,
)
from tests.conftest import make_blob_case
from tests.generators.brainspade.helpers import IMAGE_OPTS, LABEL_OPTS, K, _cases, _target


class _Killed(Exception):
    """Stands for a kill in the middle of a training step."""


_REAL_PROGRESS = fit_loop.progress_bar


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

    monkeypatch.setattr(fit_loop, "progress_bar", progress)
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

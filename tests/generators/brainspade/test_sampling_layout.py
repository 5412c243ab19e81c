"""Channels-last sampling on the CPU: the same pairs as the contiguous layout, and weights put back after."""

from __future__ import annotations

import contextlib

import torch

from segsynth.generators.brainspade import images, labels
from segsynth.generators.brainspade.helpers import as_layout, sampling_layout


@contextlib.contextmanager
def _contiguous(device, spatial_dims, *modules):
    yield False


def _draw(label_gen, image_gen):
    pv, _ = label_gen.sample_pv([3, 4, 5], sampler="dpm", steps=2)
    imgs, _ = image_gen.generate(pv, [3, 4, 5])
    return pv, imgs


def test_channels_last_sampling_gives_the_contiguous_pairs(fitted, monkeypatch):
    _, label_gen, image_gen, _, _ = fitted
    fast_pv, fast_img = _draw(label_gen, image_gen)
    monkeypatch.setattr(labels, "sampling_layout", _contiguous)
    monkeypatch.setattr(images, "sampling_layout", _contiguous)
    pv, img = _draw(label_gen, image_gen)
    assert fast_pv.shape == pv.shape and fast_img.shape == img.shape
    torch.testing.assert_close(fast_pv, pv, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_img, img, atol=1e-4, rtol=1e-4)
    assert fast_img.is_contiguous() and fast_pv.is_contiguous()


def test_weights_are_contiguous_again_after_sampling(fitted):
    _, label_gen, image_gen, _, _ = fitted
    _draw(label_gen, image_gen)
    for net in (label_gen.autoencoder, label_gen.unet, image_gen.net):
        four_d = [p for p in net.parameters() if p.dim() == 4]
        assert four_d and all(p.is_contiguous() for p in four_d)


def test_layout_only_for_2d_on_the_cpu():
    conv = torch.nn.Conv2d(2, 4, 3)
    with sampling_layout("cpu", 2, conv) as on:
        assert on and conv.weight.is_contiguous(memory_format=torch.channels_last)
        x = as_layout(torch.randn(1, 2, 8, 8), on)
        assert x.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.is_contiguous()
    with sampling_layout("cpu", 3, conv) as on:
        assert not on
    assert as_layout(torch.randn(1, 2, 4, 4, 4), True).is_contiguous()  # 5D input: unchanged
    if torch.cuda.is_available():  # not measured on GPUs: left alone there
        with sampling_layout("cuda", 2, conv) as on:
            assert not on

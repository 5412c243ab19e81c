"""The architecture hypergradient on a tiny problem (float64): non-zero, and equal to a finite difference of f."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from segsynth.errors import ConfigError
from segsynth.generators.genseg.hypergradient import (
    UnrolledProblem,
    architecture_hypergradient,
    preserved_buffers,
    unrolled_validation_loss,
)
from segsynth.nets.pix2pix import PatchGANDiscriminator, Pix2PixGenerator

DT = torch.float64


def _blobs(n, seed, size=16):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=DT), torch.arange(size, dtype=DT), indexing="ij")
    out = []
    for _ in range(n):
        c = torch.rand(2, generator=g, dtype=DT) * size / 2 + size / 4
        r = torch.rand(1, generator=g, dtype=DT) * 3 + 2
        out.append((((yy - c[0]) ** 2 + (xx - c[1]) ** 2) < r**2).long())
    return torch.stack(out)


def _noisy(y, seed):
    return y[:, None].to(DT) + 0.1 * torch.randn(y.shape[0], 1, *y.shape[1:], dtype=DT,
                                                 generator=torch.Generator().manual_seed(seed))


def _problem(unroll=False, segmenter=None, detach=False):
    gen = Pix2PixGenerator(2, 2, 1, features=4, max_features=8, num_downs=2, dropout=0.0, seed=3).to(DT)
    with torch.no_grad():
        for i, a in enumerate(gen.arch_parameters()):
            a.copy_(0.5 * torch.randn(a.shape, generator=torch.Generator().manual_seed(i), dtype=DT))
    disc = PatchGANDiscriminator(2, 3, features=4, num_layers=1).to(DT)
    seg = segmenter or nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 2, 3, padding=1))
    seg = seg.to(DT)
    syn_y, val_y, real_y = _blobs(3, 1), _blobs(2, 2), _blobs(2, 3)
    onehot = F.one_hot(syn_y, 2).movedim(-1, 1).to(DT)
    real_onehot = F.one_hot(real_y, 2).movedim(-1, 1).to(DT)
    real_x = _noisy(real_y, 6)

    def synthesize(w):
        x = gen(onehot) if w is None else functional_call(gen, w, (onehot,))
        return x.detach() if detach else x

    def gan_loss(w):
        fake = gen(real_onehot) if w is None else functional_call(gen, w, (real_onehot,))
        d = disc(torch.cat([real_onehot, fake], 1))
        # a smooth reconstruction term: the unrolled step differentiates grad_W L_gan, and an L1 term's
        # gradient jumps wherever a pixel crosses its target, which no derivative (nor f itself) survives
        return ((d - 1) ** 2).mean() + 10 * ((fake - (2 * real_x - 1)) ** 2).mean()

    p = UnrolledProblem(seg, synthesize, syn_y, _noisy(val_y, 5), val_y, xi=0.5, real_x=real_x, real_y=real_y,
                        syn_weight=0.5, generator_loss=gan_loss if unroll else None,
                        generator_weights=dict(gen.named_weight_parameters()) if unroll else {}, eta=0.05)
    return p, gen


def _numeric_directional(p, arch, direction, h=1e-5):
    """(f(alpha + h d) - f(alpha - h d)) / 2h, evaluating f itself."""
    with torch.no_grad():
        for a, d in zip(arch, direction):
            a.add_(h * d)
    fp = unrolled_validation_loss(p)
    with torch.no_grad():
        for a, d in zip(arch, direction):
            a.sub_(2 * h * d)
    fm = unrolled_validation_loss(p)
    with torch.no_grad():
        for a, d in zip(arch, direction):
            a.add_(h * d)
    return (fp - fm) / (2 * h)


def _directions(arch, k=3):
    return [[torch.randn(a.shape, dtype=DT, generator=torch.Generator().manual_seed(10 + i)) for a in arch]
            for i in range(k)]


def _dot(grads, d):
    return float(sum((g * x).sum() for g, x in zip(grads, d)))


@pytest.mark.parametrize("mode", ["finite_difference", "exact"])
def test_hypergradient_is_nonzero_and_matches_finite_difference_of_validation_loss(mode):
    p, gen = _problem()
    arch = gen.arch_parameters()
    hg = architecture_hypergradient(p, arch, mode=mode)
    assert hg.norm() > 1e-7
    assert all(g.shape == a.shape for g, a in zip(hg.grads, arch))
    assert hg.val_loss == pytest.approx(unrolled_validation_loss(p), rel=1e-9)
    for d in _directions(arch):
        num = _numeric_directional(p, arch, d)
        assert _dot(hg.grads, d) == pytest.approx(num, rel=2e-3, abs=1e-9)


def test_through_generator_weights_matches_too():
    """With stage I unrolled as well (alpha -> W' -> images), both modes still match f's derivative."""
    p, gen = _problem(unroll=True)
    arch = gen.arch_parameters()
    exact = architecture_hypergradient(p, arch, mode="exact")
    fd = architecture_hypergradient(p, arch, mode="finite_difference")
    assert fd.through_weights is not None and sum(float(t.abs().sum()) for t in fd.through_weights) > 0
    for d in _directions(arch, 2):
        num = _numeric_directional(p, arch, d, h=1e-6)
        assert _dot(exact.grads, d) == pytest.approx(num, rel=2e-3)
        assert _dot(fd.grads, d) == pytest.approx(num, rel=2e-3)


def test_detached_images_give_no_signal():
    """What the public GenSeg 2D code does: detach the synthetic image -> the architecture never learns."""
    p, gen = _problem(detach=True)
    hg = architecture_hypergradient(p, gen.arch_parameters())
    assert hg.norm() == 0.0


def test_segmenter_is_left_unchanged_batchnorm_included():
    seg = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.Conv2d(4, 2, 1))
    p, gen = _problem(segmenter=seg)
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    fd = architecture_hypergradient(p, gen.arch_parameters())
    exact = architecture_hypergradient(p, gen.arch_parameters(), mode="exact")
    for k, v in seg.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(prm.grad is None for prm in seg.parameters())
    assert _dot(fd.grads, _directions(gen.arch_parameters(), 1)[0]) == pytest.approx(
        _dot(exact.grads, _directions(gen.arch_parameters(), 1)[0]), rel=1e-3)
    with preserved_buffers(seg):
        seg(torch.randn(2, 1, 8, 8, dtype=DT))
    assert torch.equal(seg[1].running_mean, before["1.running_mean"])


def test_bad_arguments():
    p, gen = _problem()
    with pytest.raises(ConfigError, match="mode"):
        architecture_hypergradient(p, gen.arch_parameters(), mode="implicit")
    with pytest.raises(ConfigError, match="derived"):
        architecture_hypergradient(p, [])
    with pytest.raises(ConfigError):
        UnrolledProblem(p.segmenter, p.synthesize, p.syn_y, p.val_x, p.val_y, xi=0.1, syn_weight=0.0)

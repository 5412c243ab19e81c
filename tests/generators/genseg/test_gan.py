"""GenSeg stage I: GAN steps reduce L1 and leave alpha alone."""

import torch

from tests.generators.genseg.helpers import _gan_trainer


def test_one_gan_step_at_a_time_reduces_l1_and_leaves_alpha():
    gen, gan, (x, y) = _gan_trainer()
    alpha = [a.detach().clone() for a in gen.net.arch_parameters()]
    l1 = [gan.step(x, y, torch.Generator().manual_seed(0))["gan_l1"] for _ in range(8)]
    assert l1[-1] < l1[0]
    assert all(torch.equal(a, b) for a, b in zip(alpha, gen.net.arch_parameters()))

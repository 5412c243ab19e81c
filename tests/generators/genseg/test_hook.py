"""GenSeg's hook: stages I and III in the segmenter's loop, exact resume."""

import pytest
import torch

from segsynth.generators.genseg import (
    GeneratedSource,
    GenSegGenerator,
    GenSegHook,
    GenSegOptions,
)
from segsynth.nets.segmenters import build_segmenter
from segsynth.segment.sources import CaseSource, MixedSource
from segsynth.segment.train import TrainConfig, train_segmenter
from tests.generators.genseg.helpers import TINY_OPTS, UNET, _cases


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


def test_hook_stops_updating_once_the_batches_are_real_only():
    cfg = TrainConfig(steps=4, batch_size=2, val_every=2, progress=False)
    gen, hook, source, cases = _hook_setup()
    hook.until = 2  # synthetic_until: generated pairs in the first 2 steps' batches only
    torch.manual_seed(0)
    result = train_segmenter(build_segmenter("unet", 2, 1, 2, **UNET), source, cases[3:], cfg, num_classes=2,
                             hooks=[hook])
    updated = ["arch_val_loss" in h for h in result.history]
    assert updated == [True, False, False, False]  # after step 1 only: the generator no longer reaches the batches

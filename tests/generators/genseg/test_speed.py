"""GenSeg's cheaper paths: the adaptive architecture schedule (an option) and the fused cells (exact)."""

import pytest
import torch

from segsynth.errors import ConfigError
from segsynth.generators.genseg import GeneratedSource, GenSegGenerator, GenSegHook, GenSegOptions
from segsynth.nets.pix2pix import SearchableCell
from segsynth.nets.segmenters import build_segmenter
from segsynth.segment.sources import CaseSource, MixedSource
from segsynth.segment.train import StepState, TrainConfig, train_segmenter
from tests.generators.genseg.helpers import TINY_OPTS, UNET, _cases


def _hook(**extra):
    cases = _cases(n=5)
    opts = GenSegOptions(**{**TINY_OPTS, **extra})
    gen = GenSegGenerator(**opts.generator_kwargs())
    gen.build_for(cases[:3], seed=0)
    gen.set_source_masks(cases[:3])
    return GenSegHook(gen, CaseSource(cases[:3]), gen.source, CaseSource(cases[3:]), opts, seed=0), cases


def _schedule(hook, moves, steps=12):
    """The steps at which ``hook`` updates alpha when the k-th update moves softmax(alpha) by moves[k]."""
    done: list[int] = []

    def fake_arch_step(model, lr, device):  # moves alpha by a set amount instead of a real hyper-step
        with torch.no_grad():
            hook.gen.net.alpha_down[0, 0] += 4 * moves[len(done)]  # d softmax = w(1 - w) d alpha, w = 1/3
        done.append(state.step)
        return {"arch_val_loss": 0.0}

    hook.arch_step = fake_arch_step
    for t in range(1, steps + 1):
        state = StepState(t, None, None, None, None, 0.0, torch.device("cpu"), 1e-3)
        hook.after_step(state)
    return done


def test_adaptive_arch_schedule_doubles_the_interval_once_alpha_settles():
    hook, _ = _hook(gen_every=0, arch_every=1)
    assert _schedule(hook, [1.0] * 12) == list(range(1, 13))  # default: fixed arch_every
    hook, _ = _hook(gen_every=0, arch_every=1, arch_every_max=4, arch_settle_tol=1e-3)
    # settled moves double the interval up to 4; a large move (the 4th update) resets it to arch_every
    assert _schedule(hook, [0.0, 0.0, 0.0, 1.0, 0.0]) == [1, 3, 7, 11, 12]
    assert hook.state_dict()["arch_schedule"] == [2, 14]
    resumed, _ = _hook(gen_every=0, arch_every=1, arch_every_max=4)
    resumed.load_state_dict(hook.state_dict())
    assert (resumed.arch_interval, resumed.next_arch) == (2, 14)
    with pytest.raises(ConfigError):
        GenSegOptions(arch_every=4, arch_every_max=2)


def test_adaptive_schedule_in_the_training_loop():
    hook, cases = _hook(arch_every=1, arch_every_max=4, arch_settle_tol=1.0)  # every real move counts as settled
    real = CaseSource(cases[:3])
    source = MixedSource([(real, 0.5), (GeneratedSource(hook.gen, hook.gen.source), 0.5)])
    torch.manual_seed(0)
    model = build_segmenter("unet", 2, 1, 2, **UNET)
    result = train_segmenter(model, source, cases[3:], TrainConfig(steps=4, batch_size=2, val_every=4,
                             progress=False), num_classes=2, hooks=[hook])
    assert [h["step"] for h in result.history if "arch_val_loss" in h] == [1, 3]
    assert [h["arch_interval"] for h in result.history if "arch_interval" in h] == [2.0, 4.0]


@pytest.mark.parametrize("mode,tol", [("exact", 1e-3), ("finite_difference", 0.05)])
def test_fused_cells_change_nothing_but_float_rounding_in_the_hypergradient(monkeypatch, mode, tol):
    """Stage III's hypergradient through the generator with and without fused cells: exact (double backward)
    agrees to float32 rounding (measured 4e-5 relative); finite differences amplify that rounding (~1 %)."""
    import segsynth.nets.pix2pix as p2p
    from segsynth.generators.genseg.hypergradient import architecture_hypergradient

    monkeypatch.setattr(p2p, "FUSE_MIN_VOXELS_PER_TAP", {2: 0, 3: 0})
    grads = []
    for fuse in (True, False):
        hook, _ = _hook(fused_cells=fuse)
        hook.gen.net.set_fused(hook.opts.fused_cells)  # as train_genseg does
        assert all(m.fuse == fuse for m in hook.gen.net.modules() if isinstance(m, SearchableCell))
        torch.manual_seed(0)
        seg = build_segmenter("unet", 2, 1, 2, **UNET)
        hg = architecture_hypergradient(hook.problem(seg, 1e-2, torch.device("cpu")),
                                        hook.gen.net.arch_parameters(), mode=mode)
        grads.append(torch.cat([g.flatten() for g in hg.grads]).double())
    a, b = grads
    assert float(a.norm()) > 0
    assert float((a - b).norm() / a.norm()) < tol
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.999

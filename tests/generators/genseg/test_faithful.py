"""Label-faithful GenSeg: the segmentation term in the generator loss, and weight feedback (beyond the paper)."""

import torch

from segsynth.generators.genseg import GanTrainer, GeneratedSource, GenSegGenerator, GenSegHook, GenSegOptions
from segsynth.generators.seg_term import SegmentationTerm
from segsynth.nets.segmenters import build_segmenter
from segsynth.segment.sources import CaseSource, MixedSource
from segsynth.segment.train import TrainConfig, train_segmenter
from tests.generators.genseg.helpers import TINY, TINY_OPTS, UNET, _cases

SEG = {"seg_steps": 30, "seg_cotrain": False}


def _fidelity_loss(gen: GenSegGenerator, judge: SegmentationTerm, cases) -> float:
    masks = torch.stack([torch.as_tensor(c.mask) for c in cases])
    with torch.no_grad():
        return float(judge.loss(gen.generate(masks), masks))


def test_seg_term_reaches_the_generator_and_lowers_the_fidelity_loss():
    cases = _cases(n=4)
    plain = GenSegGenerator(**TINY, dropout=0.0)
    plain.fit(cases, seed=0, steps=12)
    faithful = GenSegGenerator(**TINY, dropout=0.0, seg_weight=20.0, **SEG)
    stats = faithful.fit(cases, seed=0, steps=12)
    assert "gan_seg" in stats and "gan_seg" not in plain.history["fit"][-1]
    assert faithful.history["seg_term"]["steps"] == 30
    # the term's gradient reaches the generator weights
    gan = GanTrainer(faithful)
    y = torch.stack([torch.as_tensor(c.mask) for c in cases[:2]])
    x = torch.stack([torch.as_tensor(c.image) for c in cases[:2]])
    onehot = faithful.encode(y)
    fake = faithful.net(onehot)
    seg = faithful.seg_term.loss(faithful.from_unit(fake), y)
    grads = torch.autograd.grad(seg, faithful.net.weight_parameters(), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert gan.generator_loss(onehot, faithful.to_unit(x), fake)[1]["gan_seg"] > 0
    # judged by an independent segmenter (another seed), the faithful generator's images give back their masks better
    judge = SegmentationTerm.trained_on(cases, 2, weight=1.0, steps=30, seed=99, features=UNET["features"])
    assert _fidelity_loss(faithful, judge, cases) < _fidelity_loss(plain, judge, cases)


def test_generator_with_seg_term_saves_and_loads(tmp_path):
    cases = _cases(n=3)
    gen = GenSegGenerator(**TINY, seg_weight=1.0, **SEG)
    gen.fit(cases, seed=0, steps=2)
    gen.save(tmp_path / "g")
    back = GenSegGenerator.load(tmp_path / "g")
    assert back.options["seg_weight"] == 1.0 and back.seg_term is None  # the term is training-time only
    a, b = gen.sample_pair(3, mask=cases[0].mask), back.sample_pair(3, mask=cases[0].mask)
    assert torch.allclose(torch.as_tensor(a.image), torch.as_tensor(b.image), atol=1e-5)


def _run_hook(weight_feedback: bool, seed=0):
    cases = _cases(n=5)
    opts = GenSegOptions(**{**TINY_OPTS, "arch_every": 1, "gen_every": 0, "search": False,
                            "weight_feedback": weight_feedback, "weight_feedback_lr": 1e-2})
    gen = GenSegGenerator(**opts.generator_kwargs())
    gen.build_for(cases[:3], seed=seed)
    gen.set_source_masks(cases[:3])
    real = CaseSource(cases[:3])
    hook = GenSegHook(gen, real, gen.source, CaseSource(cases[3:]), opts, seed=seed)
    source = MixedSource([(real, 0.5), (GeneratedSource(gen, gen.source), 0.5)])
    before = [w.detach().clone() for w in gen.net.weight_parameters()]
    torch.manual_seed(0)
    model = build_segmenter("unet", 2, 1, 2, **UNET)
    result = train_segmenter(model, source, cases[3:], TrainConfig(steps=2, batch_size=2, val_every=2, progress=False),
                             num_classes=2, hooks=[hook])
    moved = sum(float((a - b).abs().sum()) for a, b in zip(before, gen.net.weight_parameters()))
    return moved, result, gen


def test_weight_feedback_is_off_by_default_and_moves_the_generator_weights_when_on():
    assert GenSegOptions().weight_feedback is False  # the paper updates only alpha with the hypergradient
    moved_off, _, gen_off = _run_hook(False)
    assert moved_off == 0.0  # no GAN step (gen_every 0), no search: nothing touches W
    moved_on, result, gen_on = _run_hook(True)
    assert moved_on > 0
    assert any(h.get("wf_grad_norm", 0.0) > 0 for h in result.history)  # (the last step has lr 0: no hyper-step)
    # alpha stays as it was (search off): the hypergradient reached only W
    for a, b in zip(gen_off.net.arch_parameters(), gen_on.net.arch_parameters()):
        assert torch.equal(a, b)

"""Real + synthetic pairs: the ratio, the shared augmentation, min_fidelity, determinism, option parsing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segsynth.data.case import Case, DatasetInfo
from segsynth.errors import ConfigError, DataError
from segsynth.generators.base import MethodContext
from segsynth.segment.sources import CaseSource, MixedSource, PhasedSource, Prefetcher, source_statistics
from segsynth.segment.synthetic_mix import (
    AugmentedSource,
    FidelityFilter,
    MixOptions,
    mixed_training_source,
    parse_mix_options,
)
from segsynth.segment.train import TrainConfig, train_segmenter
from segsynth.utils.seed import torch_generator
from tests.evaluate.test_fidelity import Oracle, oracle_case

INFO = DatasetInfo("blobs", {0: "background", 1: "blob"}, "other", 2, 1)


def _flat(value: float, i: int, shape=(16, 16)) -> Case:
    mask = np.zeros(shape, np.int64)
    mask[4:10, 4:10] = 1
    return Case(f"{'real' if value < 0 else 'syn'}{i}", np.full((1, *shape), value, np.float32), mask)


def _ctx(train, steps=1, **kw):
    return MethodContext(info=INFO, train=train, val=[], train_config=TrainConfig(steps=steps), **kw)


@pytest.mark.parametrize("real_fraction", [0.2, 0.5, 0.8])
def test_real_fraction_is_honoured_over_many_draws(real_fraction):
    ctx = _ctx([_flat(-1.0, i) for i in range(3)])
    src = mixed_training_source(ctx, [_flat(1.0, i) for i in range(5)], MixOptions(real_fraction=real_fraction))
    assert isinstance(src, MixedSource)
    g = torch_generator(0)
    real = total = 0
    for _ in range(300):
        x, _ = src.draw(8, g)
        real += int((x.flatten(1).mean(1) < 0).sum())
        total += 8
    assert abs(real / total - real_fraction) < 0.03


def test_edges_give_one_stream():
    ctx = _ctx([_flat(-1.0, 0)])
    syn = [_flat(1.0, 0)]
    only_real = mixed_training_source(ctx, syn, MixOptions(real_fraction=1.0))
    only_syn = mixed_training_source(ctx, syn, MixOptions(real_fraction=0.0))
    g = torch_generator(0)
    assert (only_real.draw(4, g)[0] < 0).all() and (only_syn.draw(4, g)[0] > 0).all()


def test_synthetic_pairs_get_the_real_pairs_augmentation():
    ctx = _ctx([_flat(-1.0, 0)])
    syn = [_flat(1.0, 0)]
    plain = mixed_training_source(ctx, syn, MixOptions(real_fraction=0.0))
    stacked = mixed_training_source(ctx, syn, MixOptions(real_fraction=0.0, augment_real=True))
    assert plain.transform is None and stacked.transform is not None  # follows augment_real
    apart = mixed_training_source(ctx, syn, MixOptions(real_fraction=0.0, augment_real=True, augment_synthetic=False))
    assert apart.transform is None
    # an on-the-fly stream is wrapped; the augmentation changes the pairs, deterministically per generator
    fly = mixed_training_source(ctx, CaseSource(syn), MixOptions(real_fraction=0.0, augment_real=True))
    assert isinstance(fly, AugmentedSource)
    a, b = fly.draw(6, torch_generator(1)), fly.draw(6, torch_generator(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert any(not torch.equal(m, torch.as_tensor(syn[0].mask)) for m in a[1])  # warped masks


def test_synthetic_until_trains_on_the_real_pairs_alone_after_the_switch():
    ctx = _ctx([_flat(-1.0, i) for i in range(3)], steps=10)
    syn = [_flat(1.0, i) for i in range(4)]
    src = mixed_training_source(ctx, syn, MixOptions(real_fraction=0.0, synthetic_until=0.3))
    assert isinstance(src, PhasedSource) and src.starts == [0, 3]
    with Prefetcher(src, 4, torch_generator(0), 10, depth=2) as batches:
        signs = [set(np.sign(x.flatten(1).mean(1).numpy()).tolist()) for x, _ in batches]
    assert signs == [{1.0}] * 3 + [{-1.0}] * 7  # synthetic for the first 30 % of the steps, then real only
    # a resumed run (start step and generator state from the checkpoint) draws exactly the batches it would have
    with Prefetcher(src, 4, torch_generator(0), 10, depth=0) as full:
        whole = [x for x, _ in full]
    with Prefetcher(src, 4, torch_generator(0), 5, depth=0) as head:
        list(head)
    g = torch_generator(0)
    g.set_state(head.state)
    with Prefetcher(src, 4, g, 5, depth=2, start=5) as tail:
        rest = [x for x, _ in tail]
    assert len(rest) == 5 and all(torch.equal(a, b) for a, b in zip(rest, whole[5:]))
    # the whole run (or no run length known) keeps one stream
    assert not isinstance(mixed_training_source(ctx, syn, MixOptions(real_fraction=0.0, synthetic_until=1.0)),
                          PhasedSource)
    assert MixOptions(synthetic_until=0.01).switch_step(10) == 1  # at least one step sees synthetic pairs
    with pytest.raises(ValueError, match="step 0"):
        PhasedSource([(2, CaseSource(syn))])


def test_min_fidelity_drops_unfaithful_cases(tmp_path):
    good = [oracle_case(i) for i in range(3)]
    bad = [oracle_case(10 + i, faithful=False) for i in range(4)]
    ctx = _ctx([oracle_case(20)])
    src = mixed_training_source(ctx, good + bad, MixOptions(real_fraction=0.0, min_fidelity=0.5), reference=Oracle())
    assert sorted(src.case_ids) == sorted(c.case_id for c in good)
    with pytest.raises(DataError, match="drops every one"):
        mixed_training_source(ctx, bad, MixOptions(real_fraction=0.0, min_fidelity=0.5), reference=Oracle())


def test_min_fidelity_redraws_an_on_the_fly_stream():
    stream = CaseSource([oracle_case(0), oracle_case(1, faithful=False), oracle_case(2, faithful=False)])
    flt = FidelityFilter(stream, Oracle(), 0.9, num_classes=2, device="cpu", tries=40)
    x, y = flt.draw(16, torch_generator(0))
    assert flt.short == 0 and flt.kept == 16 and flt.drawn > 16
    assert torch.equal(x[:, 0].round().long(), y)  # every kept pair is faithful
    x2, _ = FidelityFilter(stream, Oracle(), 0.9, num_classes=2, device="cpu", tries=40).draw(16, torch_generator(0))
    assert torch.equal(x, x2)
    never = FidelityFilter(CaseSource([oracle_case(1, faithful=False)]), Oracle(), 0.9, num_classes=2,
                           device="cpu", tries=2)
    never.draw(3, torch_generator(0))
    assert never.short == 3  # kept the best draw, counted as short


def test_min_fidelity_redraws_are_counted_and_reach_the_training_result():
    stream = CaseSource([oracle_case(0), oracle_case(1, faithful=False)])
    flt = FidelityFilter(stream, Oracle(), 0.9, num_classes=2, device="cpu", tries=40)
    assert source_statistics(MixedSource([(CaseSource([oracle_case(5)]), 0.5), (flt, 0.5)])) == {
        "min_fidelity": {"threshold": 0.9, "samples": 0, "reached": 0, "short": 0, "reached_fraction": None,
                         "draws_per_sample": None}}
    flt.draw(10, torch_generator(0))
    st = source_statistics(AugmentedSource(flt, None, 2))["min_fidelity"]
    assert st["samples"] == 10 and st["reached"] == 10 and st["short"] == 0 and st["reached_fraction"] == 1.0
    assert st["draws_per_sample"] == flt.drawn / 10 > 1.0  # half the stream is unfaithful: it redrew
    assert source_statistics(CaseSource([oracle_case(0)])) == {}  # nothing counted, nothing reported

    model = torch.nn.Conv2d(1, 2, 1)
    cfg = TrainConfig(steps=2, batch_size=4, val_every=10, progress=False, prefetch=0)
    fresh = FidelityFilter(stream, Oracle(), 0.9, num_classes=2, device="cpu", tries=40)
    result = train_segmenter(model, fresh, [], cfg, num_classes=2)
    assert result.source_statistics["min_fidelity"]["samples"] == 8  # 2 steps x batch 4
    assert result.source_statistics["min_fidelity"]["reached"] == 8


def test_parse_mix_options():
    opts, rest = parse_mix_options({"real_weight": "0.3", "augment_real": "true", "n_synthetic": 7, "min_fidelity": 0.6},
                                   defaults=MixOptions(augment_real=False), aliases={"real_weight": "real_fraction"})
    assert opts.real_fraction == 0.3 and opts.augment_real and opts.synthetic_augmented and opts.min_fidelity == 0.6
    assert parse_mix_options({"synthetic_until": "0.5"})[0].synthetic_until == 0.5
    assert rest == {"n_synthetic": 7}
    assert parse_mix_options({}, defaults=MixOptions(real_fraction=0.7))[0].real_fraction == 0.7
    for bad in ({"real_fraction": 1.5}, {"min_fidelity": -0.1}, {"augment_real": "maybe"}, {"aug_kind": "twist"},
                {"real_fraction": "half"}, {"synthetic_until": 0}, {"synthetic_until": 1.5}):
        with pytest.raises(ConfigError):
            parse_mix_options(bad)
    with pytest.raises(ConfigError, match="same thing"):
        parse_mix_options({"real_weight": 0.2, "real_fraction": 0.3}, aliases={"real_weight": "real_fraction"})


def test_every_generator_method_takes_the_shared_options():
    from segsynth.generators import get_method

    g = get_method("genseg", real_fraction=0.3, min_fidelity=0.4)
    assert g.mix.real_fraction == pytest.approx(0.3) and g.opts.synthetic_fraction == pytest.approx(0.7)
    assert g.mix.min_fidelity == 0.4 and not g.mix.synthetic_augmented
    assert get_method("genseg_aug").mix.synthetic_augmented  # synthetic pairs augmented like the real ones
    for name in ("spade", "brainspade"):
        m = get_method(name, real_fraction=0.25, augment_real=True)
        assert m.mix.real_fraction == 0.25 and m.mix.synthetic_augmented
        assert get_method(name, mode="synthetic").mix.real_fraction == 0.0
    assert get_method("domain_rand", real_weight=0.2).mix.real_fraction == 0.2
    assert get_method("domain_rand").mix.synthetic_augmented
    for name in ("learned", "learned_randaug"):
        get_method(name, real_fraction=0.3, augment_real=True, min_fidelity=0.5, synthetic_until=0.5)  # accepted
    with pytest.raises(ConfigError):
        get_method("spade", real_fraction=2.0)

"""The segmentation term of the generators' objective (segsynth.generators.seg_term)."""

import pytest
import torch

from segsynth.errors import ConfigError
from segsynth.generators.seg_term import SegmentationTerm
from tests.conftest import make_blob_case

SMALL = (4, 4, 8, 8, 16, 4)


def _term(steps=30, cotrain=False, seed=0):
    cases = [make_blob_case(f"c{i}", (32, 32), seed=i) for i in range(4)]
    return cases, SegmentationTerm.trained_on(cases, 2, weight=1.0, steps=steps, batch_size=4, seed=seed,
                                              features=SMALL, cotrain=cotrain)


def test_term_scores_faithful_images_better_and_its_gradient_reaches_the_images():
    cases, term = _term()
    x = torch.stack([torch.as_tensor(c.image) for c in cases])
    y = torch.stack([torch.as_tensor(c.mask) for c in cases])
    faithful = term.loss(x, y)
    unfaithful = term.loss(torch.flip(x, dims=[-1]), y)  # images that do not show what the masks say
    assert float(faithful) < float(unfaithful)
    xg = torch.flip(x, dims=[-1]).clone().requires_grad_(True)
    term.loss(xg, y).backward()
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0
    assert all(p.grad is None for p in term.model.parameters())  # the segmenter stays frozen
    assert term.history["steps"] == 30 and term.history["seconds"] > 0


def test_cotraining_moves_only_the_cotrained_segmenter():
    _, frozen = _term(steps=2)
    _, cot = _term(steps=2, cotrain=True)
    assert frozen.cotrain_step() is None
    before = [p.detach().clone() for p in cot.model.parameters()]
    loss = cot.cotrain_step()
    assert loss is not None and loss > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, cot.model.parameters()))
    assert not any(p.requires_grad for p in cot.model.parameters())


def test_negative_weight_is_a_config_error():
    with pytest.raises(ConfigError, match="weight"):
        SegmentationTerm(torch.nn.Conv2d(1, 2, 1), -1.0)

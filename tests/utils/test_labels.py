"""class_argmax: exactly torch.argmax's label map, ties included."""

import pytest
import torch

from segsynth.utils.labels import MAX_LOOP_CLASSES, class_argmax


@pytest.mark.parametrize("shape,dim", [((3, 7, 9, 5), 0), ((2, 4, 8, 8), 1), ((1, 5, 6, 4, 3), 1), ((6, 3), -1),
                                       ((2, 2, 11), 0)])
def test_matches_torch_argmax_on_random_scores(shape, dim):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(*shape, generator=g)
    out = class_argmax(scores, dim)
    assert out.dtype == torch.long
    assert torch.equal(out, scores.argmax(dim))


def test_ties_go_to_the_first_class_as_in_torch():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 2, (4, 10, 10), generator=g).float()  # many exact ties, all-equal voxels too
    scores[:, 0, 0] = 1.0
    out = class_argmax(scores, 0)
    assert torch.equal(out, scores.argmax(0))
    assert int(out[0, 0]) == 0


def test_one_hot_warp_semantics_background_wins_ties():
    # warp_labels adds a tiny amount to background so that the zero padding outside the image is background
    onehot = torch.zeros(3, 4, 4)
    onehot[0] += 1e-6
    onehot[2, 1:3, 1:3] = 1.0
    labels = class_argmax(onehot, 0)
    assert labels.tolist() == [[0, 0, 0, 0], [0, 2, 2, 0], [0, 2, 2, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("scores", [torch.randint(0, 5, (3, 6)),                  # integers
                                    torch.randn(MAX_LOOP_CLASSES + 1, 6),        # many classes
                                    torch.randn(1, 6)])                           # one class
def test_falls_back_to_torch_argmax(scores):
    assert torch.equal(class_argmax(scores, 0), scores.argmax(0))


def test_bfloat16_scores():
    scores = torch.randn(3, 8, 8).to(torch.bfloat16)
    assert torch.equal(class_argmax(scores, 0), scores.argmax(0))

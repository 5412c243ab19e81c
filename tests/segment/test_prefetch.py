"""The prefetching input pipeline: the same batches in the same order as drawing on the training thread."""

import threading

import pytest
import torch

from segsynth.data.transforms import classical_augmentation
from segsynth.errors import DataError
from segsynth.segment.sources import CaseSource, MixedSource, Prefetcher, prefetchable
from segsynth.segment.train import TrainConfig, train_segmenter
from tests.segment.test_train import _model


def _direct(src, batch, seed, n):
    g = torch.Generator().manual_seed(seed)
    out = [src.draw(batch, g) for _ in range(n)]
    return out, g.get_state()


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_same_batches_and_generator_state_as_drawing_inline(blob_cases_2d, depth):
    src = CaseSource(blob_cases_2d, transform=classical_augmentation("combined", 2))
    ref, ref_state = _direct(src, 3, 7, 5)
    g = torch.Generator().manual_seed(7)
    with Prefetcher(src, 3, g, 5, depth=depth) as it:
        got = list(it)
        assert (it._thread is None) == (depth == 0)
        assert torch.equal(it.state, ref_state)  # what a checkpoint saves: resumes with the 6th batch
        assert it.wait_s >= 0
    assert len(got) == 5
    for (x1, y1), (x2, y2) in zip(ref, got):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


class _Stateful:
    """A source whose batches depend on something the step changes (like GenSeg's generator)."""

    def __init__(self):
        self.value = 0.0

    def draw(self, batch_size, generator):
        return torch.full((batch_size, 1, 4, 4), self.value), torch.zeros(batch_size, 4, 4, dtype=torch.long)


def test_sources_that_do_not_say_so_draw_on_the_training_thread(blob_cases_2d):
    stateful = _Stateful()
    assert prefetchable(CaseSource(blob_cases_2d)) and not prefetchable(stateful)
    assert prefetchable(MixedSource([(CaseSource(blob_cases_2d), 1.0)]))
    assert not prefetchable(MixedSource([(CaseSource(blob_cases_2d), 1.0), (stateful, 1.0)]))
    it = Prefetcher(stateful, 2, torch.Generator().manual_seed(0), 3, depth=2)
    assert it._thread is None
    for i, (x, _) in enumerate(it):
        assert float(x[0, 0, 0, 0]) == i  # each batch sees the update made after the previous one
        stateful.value += 1


class _Failing:
    prefetchable = True

    def __init__(self, fail_at):
        self.n, self.fail_at = 0, fail_at

    def draw(self, batch_size, generator):
        self.n += 1
        if self.n == self.fail_at:
            raise DataError("broken case", "case7.nii.gz")
        return torch.zeros(batch_size, 1, 4, 4), torch.zeros(batch_size, 4, 4, dtype=torch.long)


def test_errors_in_the_thread_reach_the_training_thread():
    with Prefetcher(_Failing(3), 2, torch.Generator(), 10, depth=2) as it:
        next(it), next(it)
        with pytest.raises(DataError, match="broken case"):
            next(it)


def test_close_stops_the_thread_early(blob_cases_2d):
    it = Prefetcher(CaseSource(blob_cases_2d), 2, torch.Generator().manual_seed(0), 10_000, depth=2)
    next(it)
    thread = it._thread
    it.close()
    assert thread is not None and not thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "segsynth-prefetch"]


def test_training_with_and_without_prefetch_is_identical(blob_cases_2d):
    src = CaseSource(blob_cases_2d[:4], transform=classical_augmentation("combined", 2))
    results = []
    for depth in (0, 2):
        cfg = TrainConfig(steps=4, batch_size=2, val_every=2, progress=False, prefetch=depth)
        results.append(train_segmenter(_model(), src, blob_cases_2d[4:], cfg, num_classes=2))
    for a, b in zip(results[0].model.state_dict().values(), results[1].model.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["loss"] for h in results[0].history] == [h["loss"] for h in results[1].history]
    for r in results:  # the share of step time spent waiting for data is recorded
        assert 0.0 <= r.data_wait_fraction < 1.0 and r.data_wait_s >= 0.0
        assert all(0.0 <= h["data_wait_fraction"] <= 1.0 for h in r.history if "val_dice" in h)

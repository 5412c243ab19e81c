"""Memorisation audit: planted copies (exact, shifted, noised, rescaled) are flagged; a clean set passes."""

from __future__ import annotations

import numpy as np
import pytest

from segsynth.data.case import Case
from segsynth.evaluate.privacy import memorisation_audit, pixel_nearest
from tests.conftest import make_blob_case


def _cases(prefix: str, seeds, shape=(32, 32)):
    return [make_blob_case(f"{prefix}{s}", shape, num_classes=3, seed=s) for s in seeds]


def _planted(training: list[Case], rng: np.random.Generator) -> list[Case]:
    out = []
    for i, c in enumerate(training[:6]):
        img = c.image.copy()
        kind = i % 4
        if kind == 1:    # shifted by 1-2 pixels
            img = np.roll(img, shift=(1 + i % 2, -1), axis=(1, 2))
        elif kind == 2:  # lightly noised
            img = img + 0.05 * img.std() * rng.standard_normal(img.shape).astype(np.float32)
        elif kind == 3:  # intensity-rescaled and shifted
            img = 1.3 * np.roll(img, 2, axis=2) + 0.2
        out.append(Case(f"planted{i}_kind{kind}", img.astype(np.float32), c.mask, {}))
    return out


def test_planted_copies_are_all_flagged_and_clean_set_passes():
    training = _cases("t", range(12))
    reference = _cases("r", range(100, 108))
    clean = _cases("s", range(200, 216))
    rng = np.random.default_rng(0)
    planted = _planted(training, rng)

    clean_result = memorisation_audit(clean, training, reference=reference)
    assert clean_result.verdict == "pass", clean_result.format()
    assert clean_result.n_flagged == 0
    assert len(clean_result.rows) == len(clean)

    mixed = clean + planted
    result = memorisation_audit(mixed, training, reference=reference)
    assert result.verdict == "fail"
    assert set(result.flagged) == {c.case_id for c in planted}, result.format()
    by_id = {r["synthetic_id"]: r for r in result.rows}
    for i, c in enumerate(planted):
        assert by_id[c.case_id]["nearest_pixel_id"] == training[i].case_id
    assert "near-copies" in result.format()


def test_leave_one_volume_out_calibration_without_reference():
    training = _cases("t", range(10))
    planted = _planted(training, np.random.default_rng(1))
    result = memorisation_audit(_cases("s", range(300, 306)) + planted, training)
    assert "leave-one-volume-out" in result.reference
    assert set(result.flagged) == {c.case_id for c in planted}


def test_pixel_nearest_recovers_the_shift():
    training = _cases("t", range(4))
    x = np.stack([c.image for c in training])
    import torch

    q = torch.as_tensor(np.roll(x[2:3], shift=(2, -1), axis=(2, 3)))
    sim, arg, shifts = pixel_nearest(q, torch.as_tensor(x), max_shift=2)
    assert int(arg[0]) == 2 and float(sim[0]) > 0.999
    assert shifts[0] == (2, -1)


def test_audit_rejects_mismatched_shapes():
    from segsynth.errors import DataError

    with pytest.raises(DataError):
        memorisation_audit(_cases("s", [1], (16, 16)), _cases("t", [2, 3]))

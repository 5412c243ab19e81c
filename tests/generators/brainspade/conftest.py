"""A tiny label generator and image generator, fitted once for the brainSPADE tests."""

from __future__ import annotations

import pytest

from segsynth.generators.brainspade import (
    ImageGenerator,
    LabelGenerator,
)
from tests.generators.brainspade.helpers import IMAGE_OPTS, LABEL_OPTS, _cases, _target


@pytest.fixture(scope="package")
def fitted():
    """A tiny label generator and image generator (one step each), fitted once for the package."""
    cases = _cases()
    labels = LabelGenerator(**LABEL_OPTS, condition="class_presence")
    lstats = labels.fit(cases, val=cases[:1], seed=0)
    images = ImageGenerator(**IMAGE_OPTS)
    istats = images.fit(cases, unlabelled=_target(), seed=0)
    return cases, labels, images, lstats, istats

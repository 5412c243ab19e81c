"""Moved to ``segsynth.generators.genseg.hypergradient`` (GenSeg's stage III); this path keeps old imports working."""

from segsynth.generators.genseg.hypergradient import (
    HYPERGRADIENT_MODES,
    Hypergradient,
    UnrolledProblem,
    architecture_hypergradient,
    preserved_buffers,
    unrolled_validation_loss,
)

__all__ = ["HYPERGRADIENT_MODES", "Hypergradient", "UnrolledProblem", "architecture_hypergradient",
           "preserved_buffers", "unrolled_validation_loss"]

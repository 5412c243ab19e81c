"""Semi-supervised methods: learn from the N labelled cases and the unlabelled images, in the one training loop.

* ``consistency``: the unlabelled stream (per-step, per-rank seeded), shared perturbations, the hook skeleton.
* ``mean_teacher``: Tarvainen & Valpola 2017 (EMA teacher, softmax consistency, sigmoid ramp-up).
* ``fixmatch``: Sohn et al. 2020 in UniMatch's segmentation form (thresholded weak-view pseudo-labels on
  strong intensity + CutMix views).
* ``methods``: sweep methods ``mean_teacher``, ``fixmatch`` and combinations such as ``genseg+fixmatch``
  (any method's labelled stream + an unlabelled-loss hook).
"""

from segsynth.generators.semi_supervised.fixmatch import FixMatchHook
from segsynth.generators.semi_supervised.mean_teacher import MeanTeacherHook

__all__ = ["FixMatchHook", "MeanTeacherHook"]

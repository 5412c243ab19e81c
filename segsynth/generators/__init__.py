"""Methods a sweep can compare, by name. A new method is one file here plus one line below.

Values are "module:Class" strings so that importing segsynth stays light; use ``get_method``.
"""

from __future__ import annotations

import importlib
from typing import Any

from segsynth.errors import ConfigError
from segsynth.generators.base import Method, MethodContext, SyntheticGenerator

METHODS: dict[str, str] = {
    "none": "segsynth.generators.baselines:NoAugmentation",
    "augment": "segsynth.generators.baselines:ClassicalAugmentation",
    "augment_rotate": "segsynth.generators.baselines:RotateAugmentation",
    "augment_flip": "segsynth.generators.baselines:FlipAugmentation",
    "augment_translate": "segsynth.generators.baselines:TranslateAugmentation",
    "augment_elastic": "segsynth.generators.baselines:ElasticAugmentation",
    "augment_intensity": "segsynth.generators.baselines:IntensityAugmentation",
    "genseg": "segsynth.generators.genseg.methods:GenSegMethod",
    "separate": "segsynth.generators.genseg.methods:SeparateMethod",
    "genseg_aug": "segsynth.generators.genseg.methods:GenSegAugMethod",
    "separate_aug": "segsynth.generators.genseg.methods:SeparateAugMethod",
    "genseg_frozen": "segsynth.generators.genseg.methods:GenSegFrozenMethod",
    "sas": "segsynth.generators.learned_transforms.methods:SASMethod",
    "sas_aug": "segsynth.generators.learned_transforms.methods:SASAugMethod",
    "randaug": "segsynth.generators.learned_transforms.methods:RandAugMethod",
    "learned": "segsynth.generators.learned_transforms.methods:LearnedMethod",
    "learned_randaug": "segsynth.generators.learned_transforms.methods:LearnedRandAugMethod",
    "domain_rand": "segsynth.generators.domain_randomization:DomainRandMethod",
    "transfer": "segsynth.generators.transfer:TransferMethod",
    "spade": "segsynth.generators.brainspade.methods:SpadeMethod",
    "brainspade": "segsynth.generators.brainspade.methods:BrainSpadeMethod",
    "mean_teacher": "segsynth.generators.semi_supervised.methods:MeanTeacherMethod",
    "fixmatch": "segsynth.generators.semi_supervised.methods:FixMatchMethod",
    "genseg+fixmatch": "segsynth.generators.semi_supervised.methods:GenSegFixMatchMethod",
    "genseg+mean_teacher": "segsynth.generators.semi_supervised.methods:GenSegMeanTeacherMethod",
    "brainspade+fixmatch": "segsynth.generators.semi_supervised.methods:BrainSpadeFixMatchMethod",
    # the deployment site's unlabelled images (--target-unlabelled); domain_rand_aug: the no-target reference
    "spade_target": "segsynth.generators.target_domain:SpadeTargetMethod",
    "fixmatch_target": "segsynth.generators.target_domain:FixMatchTargetMethod",
    "spade_target+fixmatch": "segsynth.generators.target_domain:SpadeTargetFixMatchMethod",
    "domain_rand_aug": "segsynth.generators.target_domain:DomainRandAugMethod",
    # nnU-Net v2 (the nnunet extra); nnunet+NAME for any method NAME that makes synthetic pairs
    "nnunet": "segsynth.generators.nnunet:NnUNetMethod",
    "nnunet+separate_aug": "segsynth.generators.nnunet:NnUNetSeparateAugMethod",
    "nnunet+genseg_aug": "segsynth.generators.nnunet:NnUNetGenSegAugMethod",
    "nnunet+spade": "segsynth.generators.nnunet:NnUNetSpadeMethod",
    "nnunet+brainspade": "segsynth.generators.nnunet:NnUNetBrainSpadeMethod",
}


def get_method(name: str, **options: Any) -> Method:
    if name not in METHODS and name.startswith("nnunet+") and name.split("+", 1)[1] in METHODS:
        # by name, as every method: nnunet.py looks the inner method up here, so an import would be a circle
        return _load(NNUNET_PLUS)(generator=name.split("+", 1)[1], **options)
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return _load(METHODS[name])(**options)


#: nnunet+NAME for any NAME that makes synthetic pairs and has no line of its own above
NNUNET_PLUS = "segsynth.generators.nnunet:NnUNetGeneratorMethod"


def _load(where: str) -> Any:
    module, cls = where.split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["METHODS", "Method", "MethodContext", "SyntheticGenerator", "get_method"]

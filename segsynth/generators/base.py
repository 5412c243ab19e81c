"""The two small protocols every method is built on.

* ``SyntheticGenerator`` makes paired data: ``fit`` on a few real pairs (and unlabelled images),
  ``sample(n, generator=...)`` returns new ``Case`` objects with provenance in ``meta``,
  ``save(dir)`` / ``load(dir)`` round-trip it (init args as JSON + safetensors weights).
* ``Method`` is what a low-data sweep compares: given a ``MethodContext`` (the N labelled cases, a
  validation split, unlabelled images, a training config), it trains a segmenter and returns a
  ``TrainResult``. Most methods only say which pairs to train on (``training_source``); methods that
  couple generation with segmentation (GenSeg) override ``run``.

A new method is one file in ``segsynth/generators/`` plus one line in ``segsynth.generators.METHODS``.
Every method refuses options it does not take and lists the ones it takes with their defaults
(``option_values``), which ``segsynth methods NAME`` prints: most declare one dict, ``Method.defaults``; those
whose options live in several places check them with ``refuse_unknown_options``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch

from segsynth.data.case import Case, DatasetInfo
from segsynth.errors import ConfigError

if TYPE_CHECKING:
    from segsynth.segment.sources import PairSource
    from segsynth.segment.train import TrainConfig, TrainResult


@runtime_checkable
class SyntheticGenerator(Protocol):
    def fit(self, train: list[Case], *, val: list[Case] | None = None, unlabelled: list[Case] | None = None,
            device: torch.device | str = "cpu", seed: int = 0) -> dict[str, Any]:
        """Train on real data; returns a dict of training statistics (losses, seconds)."""

    def sample(self, n: int, *, generator: torch.Generator, masks: list[Any] | None = None) -> list[Case]:
        """n new pairs (or one per given mask). Each Case.meta records method, seed/draws and sources."""

    def save(self, directory: str | Path) -> None: ...

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> SyntheticGenerator: ...


@dataclass
class MethodContext:
    """Everything one (method, N, seed) run needs. Built by the sweep or the CLI."""

    info: DatasetInfo
    train: list[Case]                 # the N labelled real cases (preprocessed)
    val: list[Case]                   # validation cases for model selection (never test cases)
    unlabelled: list[Case] = field(default_factory=list)  # images without labels (same or target domain)
    # unlabelled images of the deployment site (--target-unlabelled), for the *_target methods
    # (segsynth.generators.target_domain); kept apart from the same-domain pool ``unlabelled``
    target: list[Case] = field(default_factory=list)
    segmenter: str = "unet"
    segmenter_kwargs: dict[str, Any] = field(default_factory=dict)
    train_config: TrainConfig | None = None
    seed: int = 0
    device: torch.device = torch.device("cpu")
    workdir: Path | None = None       # per-run folder for checkpoints and fitted generators
    # a folder the runs of one sweep share: a generator fitted for one method is reused by another method of the
    # same seed when its fit is the same (GenSeg's separate_aug and separate_aug+fixmatch); None: nothing shared
    shared_dir: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)  # method options, e.g. {"n_synthetic": 200}
    # extra training-loop hooks a method passes on to train_segmenter (semi-supervised losses, see
    # segsynth.generators.semi_supervised): a method that trains through the one loop adds them to its own
    hooks: list[Any] = field(default_factory=list)

    @property
    def precision(self) -> str:
        """The run's precision name (``--precision``: fp32 / bf16 / auto; fp32 without a training config): the
        segmenter's, and the one the generators a method fits and samples with take unless their options say
        otherwise."""
        return self.train_config.precision if self.train_config is not None else "fp32"

    def build_segmenter(self) -> torch.nn.Module:
        """The segmenter with initial weights drawn from ``derive_seed(seed, "segmenter-init")``.

        Never from the process-wide RNG: a run's initial weights must not depend on what ran before it in the
        process (earlier runs of a sweep, a resume, another executor). Every method of one seed starts from
        the same weights (common random numbers make the paired comparison sharper).
        """
        from segsynth.nets.segmenters import build_segmenter
        from segsynth.utils.seed import derive_seed, seeded_scope

        with seeded_scope(derive_seed(self.seed, "segmenter-init")):
            return build_segmenter(self.segmenter, spatial_dims=self.info.spatial_dims,
                                   in_channels=self.info.in_channels, out_channels=self.info.num_classes,
                                   **self.segmenter_kwargs)


class Method:
    """Base class for sweep methods. Subclasses set ``name`` and usually only ``training_source``."""

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    required_options: ClassVar[tuple[str, ...]] = ()  # options without a default: a run needs them given
    #: the options the method takes and their defaults, for methods that declare them as one dict: the
    #: constructor refuses any other and ``option_values`` reads them. None: the method checks and lists its
    #: options itself (GenSeg, brainSPADE, ...: they override ``__init__`` and ``option_values``)
    defaults: ClassVar[dict[str, Any] | None] = None

    def __init__(self, **options: Any):
        if self.defaults is not None:
            refuse_unknown_options(self.name, options, self.defaults)
        self.options = options

    def option_values(self) -> dict[str, Any]:
        """Every option the method takes (``--method-opt NAME.KEY=VALUE``) with the value this instance uses:
        the given one, else its default (None: chosen at run time, by the method or by the run). For
        ``get_method(name)`` with no options these are the defaults that ``segsynth methods NAME`` prints."""
        return {} if self.defaults is None else {**self.defaults, **self.options}

    def option_docs(self) -> list[str]:
        """Docstrings that explain the options: the class's, then those of the objects that hold them."""
        return [inspect.getdoc(type(self)) or ""]

    def training_source(self, ctx: MethodContext) -> PairSource:
        from segsynth.segment.sources import CaseSource

        return CaseSource(ctx.train, patch_size=ctx.train_config.patch_size if ctx.train_config else None)

    def synthetic_source(self, ctx: MethodContext) -> PairSource | None:
        """The method's synthetic pairs alone, unaugmented, as its segmenter trains on them (after ``run``);
        None for methods that make none. Label fidelity (``segsynth.evaluate.fidelity``) draws from it, and
        ``segsynth.segment.synthetic_mix`` mixes it with the real pairs."""
        return None

    def makes_synthetic_pairs(self) -> bool:
        """Whether the method has a synthetic stream at all (known before ``run``): its class overrides
        ``synthetic_source``. A sweep trains no label-fidelity reference when none of its methods does."""
        return type(self).synthetic_source is not Method.synthetic_source

    def run(self, ctx: MethodContext) -> TrainResult:
        from segsynth.segment.train import train_segmenter

        model = ctx.build_segmenter()
        source = self.training_source(ctx)
        ckpt = ctx.workdir / "checkpoint" if ctx.workdir else None
        return train_segmenter(model, source, ctx.val, ctx.train_config, num_classes=ctx.info.num_classes,
                               device=ctx.device, checkpoint_dir=ckpt, hooks=list(ctx.hooks))


def needs_target_error(method: str) -> ConfigError:
    """The one refusal of a method that needs the deployment site's images (``needs_target``) and has none."""
    return ConfigError(f"method {method} needs unlabelled images of the deployment site: pass --target-unlabelled "
                       "DIR (segsynth sweep / segsynth train)")


def check_can_run(method: Any, name: str, *, target_given: bool) -> None:
    """What a run can be refused for before any data is read: a missing optional dependency (the method's
    ``require()``, e.g. nnunet without its extra) and missing deployment-site images for a method whose
    ``needs_target`` is true."""
    getattr(method, "require", lambda: None)()
    if getattr(method, "needs_target", False) and not target_given:
        raise needs_target_error(name)


def refuse_unknown_options(method: str, options: Mapping[str, Any], known: Iterable[str]) -> None:
    """A ConfigError naming ``method`` and the options it does not take, when ``options`` has any."""
    known = sorted(known)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"unknown options for method {method!r}: {unknown}; known: {known or 'none'}")

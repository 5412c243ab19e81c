"""Writing learned-transform pairs to a dataset folder."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segsynth.data.case import Case
from segsynth.generators.learned_transforms.model import LearnedTransforms
from segsynth.generators.learned_transforms.randaug import RandAug
from segsynth.utils.seed import derive_seed, torch_generator


@dataclass
class SynthesisRecord:
    """What ``write_synthetic`` wrote."""

    out_dir: Path
    n: int
    seconds: float
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class LearnedPairs:
    """Pair ``i`` of a learned-transforms synthesis, from its own seed (any shard, any worker: the same pair)."""

    transforms: LearnedTransforms
    seed: int
    rand_aug: RandAug | None = None
    model_path: str | None = None

    def case_id(self, i: int) -> str:
        return f"learned_{i:05d}"

    def __call__(self, indices: Sequence[int]) -> Iterator[Case]:
        for i in indices:
            g = torch_generator(derive_seed(self.seed, "learned-synthesis", i))
            case = next(self.transforms.iter_samples(1, generator=g, rand_aug=self.rand_aug))
            case.case_id = self.case_id(i)
            if self.model_path:
                case.meta["model"] = self.model_path
            yield case


def write_synthetic(transforms: LearnedTransforms, n: int, out_dir: str | Path, info: Any, *, seed: int = 0,
                    rand_aug: RandAug | None = None, fmt: str = "auto", model_path: str | None = None,
                    shards: int = 1, executor: str = "local", **executor_options: Any) -> SynthesisRecord:
    """Write ``n`` synthesised pairs as a dataset folder (resumable; provenance per case).

    ``shards``/``executor``/``executor_options``: see ``segsynth.experiments.shards.write_pairs``."""
    from segsynth.experiments.shards import write_pairs

    t0 = time.perf_counter()
    provenance = {"method": "learned" + ("_randaug" if rand_aug else ""), "seed": seed, "atlas": transforms.atlas_id,
                  "model": model_path, "n": n, "rand_aug": asdict(rand_aug) if rand_aug else None}
    write_pairs(out_dir, info, n, LearnedPairs(transforms, seed, rand_aug, model_path), fmt=fmt,
                provenance=provenance, name=f"{info.name}_learned", shards=shards, executor=executor,
                **executor_options)
    return SynthesisRecord(Path(out_dir), n, time.perf_counter() - t0, provenance)

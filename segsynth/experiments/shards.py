"""Synthesis in K shards, in this process or as Ray tasks: one helper for every ``*-synthesize`` command.

A command describes its pairs with a ``PairMaker``: ``case_id(i)`` names pair ``i`` and ``maker(indices)``
yields the cases of those indices, in order, each drawn from its own seed (so a pair does not depend on which
shard or worker made it). ``write_pairs`` splits ``range(n)`` into K contiguous blocks; shard ``k`` writes its
block with its own resumable ``DatasetWriter`` into ``.<out>.shards/s<k>`` beside ``out``; the driver then
moves the shards' files into the one output dataset, in index order, and writes ``dataset.json`` once. The
result is byte-identical whichever executor ran the shards. With one shard and the local executor the pairs
are written straight into the output (no shard folders). A killed command resumes: finished shards are kept,
unfinished ones continue from their own partial folder.

On a Ray cluster the shard folders are written by workers: ``--out`` must be on a file system all nodes see.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from segsynth.errors import ConfigError
from segsynth.experiments.executors import check_executor, make_executor
from segsynth.utils.files import read_jsonl

if TYPE_CHECKING:
    from segsynth.data.case import Case, DatasetInfo

log = logging.getLogger(__name__)


class PairMaker(Protocol):
    def case_id(self, i: int) -> str: ...

    def __call__(self, indices: Sequence[int]) -> Iterable[Case]: ...


def add_shard_options(p: Any) -> None:
    """--shards K plus the executor options (``--executor``, ``--ray-address``, ``--cpus/gpus-per-shard``)."""
    from segsynth.experiments.executors import add_executor_options

    g = add_executor_options(p, "shard")
    g.add_argument("--shards", type=int, default=1,
                   help="split the pairs into K shards, each a task of the executor, each with its own seeded "
                        "share; the same seed and K give the same bytes with either executor (default 1)")


def shard_options(a: Any) -> dict[str, Any]:
    """The options of ``add_shard_options`` as keyword arguments of ``write_pairs``."""
    from segsynth.experiments.executors import executor_options

    o = executor_options(a, "shard")
    return {"shards": a.shards, "executor": o.pop("name"), **o}


def shard_blocks(n: int, shards: int) -> list[list[int]]:
    """``range(n)`` in ``shards`` contiguous, nearly equal blocks."""
    return [list(range(k * n // shards, (k + 1) * n // shards)) for k in range(shards)]


#: pairs are sampled this many batches ahead of the writing (``segsynth.utils.read_ahead.ReadAhead``; 0: one after the
#: other). Sampling and compressing + writing then overlap: 6.7 ms of writing per 64² NIfTI pair next to
#: ~17 ms of sampling (brainSPADE, DPM-Solver++ 6, bf16, batch 64) on 2 cores.
READ_AHEAD_BATCHES = 2


def _fill(writer: Any, maker: PairMaker, indices: Sequence[int]) -> int:
    from segsynth.utils.read_ahead import ReadAhead

    todo = [i for i in indices if not writer.has(maker.case_id(i))]
    written = 0
    depth = READ_AHEAD_BATCHES * int(getattr(maker, "batch_size", 1) or 1)
    with ReadAhead(maker(todo), depth) as cases:
        for case in cases:
            written += bool(writer.add(case))
    return written


def write_shard(maker: PairMaker, indices: list[int], shard_dir: Path, info: DatasetInfo, fmt: str) -> int:
    """One shard (a Ray task or a local call): its pairs into ``shard_dir``; returns how many it wrote now."""
    from segsynth.data.writer import DatasetWriter

    if (shard_dir / "dataset.json").exists():  # finished before a kill of the driver
        return 0
    with DatasetWriter(shard_dir, info, fmt=fmt, name=shard_dir.name, overwrite=True) as w:
        return _fill(w, maker, indices)


def write_pairs(out_dir: str | Path, info: DatasetInfo, n: int, maker: PairMaker, *, fmt: str = "auto",
                provenance: dict[str, Any] | None = None, name: str | None = None, overwrite: bool = False,
                shards: int = 1, executor: str = "local", address: str | None = None, cpus: float = 1.0,
                gpus: float = 0.0) -> Path:
    """Write pairs ``0..n-1`` of ``maker`` as one dataset folder, in ``shards`` shards on ``executor``."""
    from segsynth.data.writer import DatasetWriter

    if shards < 1 or shards > n:
        raise ConfigError(f"--shards must be between 1 and the number of pairs ({n}), got {shards}")
    check_executor(executor)
    out_dir = Path(out_dir)
    provenance = dict(provenance or {})
    if shards > 1:
        provenance["shards"] = shards
    with DatasetWriter(out_dir, info, fmt=fmt, provenance=provenance, name=name, overwrite=overwrite) as final:
        if shards == 1 and executor == "local":
            _fill(final, maker, range(n))
            return out_dir
        root = out_dir.parent / f".{out_dir.name}.shards"
        dirs = [root / f"s{k:03d}" for k in range(shards)]
        blocks = shard_blocks(n, shards)
        calls = [(maker, b, d, info, final.fmt) for b, d in zip(blocks, dirs)
                 if not all(final.has(maker.case_id(i)) for i in b)]
        with make_executor(executor, address=address, cpus=cpus, gpus=gpus) as ex:
            shared = ex.share(maker) if calls else None
            for i, written, error in ex.run(write_shard, [(shared, *c[1:]) for c in calls]):
                if error is not None:
                    raise error
                log.info("shard %s done (%d pairs written now)", calls[i][2].name, written)
        for d in dirs:
            for rec in read_jsonl(d / "provenance.jsonl"):
                final.take_written(d, rec)
    shutil.rmtree(root, ignore_errors=True)
    return out_dir

"""Split one site's dataset folder into two disjoint dataset folders (``segsynth split-folder``).

The use: a labelled folder of the deployment site becomes an unlabelled part (``--target-unlabelled A``: only
its images are read) and a labelled test part (``--test-data B``). Both parts are ordinary dataset folders that
``segsynth check-data`` and ``load_dataset`` read: a "pairs" layout (``dataset.json`` with ``pairs`` and
``mask_values``), the files **copied byte for byte** (not decoded and written again) under the same paths
relative to the source folder. Part A keeps the masks too, so that it stays a valid labelled layout; no method
reads them through ``--target-unlabelled``.

Cases are split by volume (``volume_id``: slices of one subject stay in one part), in a random order drawn from
``seed``: the same folder, fraction and seed always give the same parts. Part A gets
``round(fraction * volumes)`` volumes (at least one, and at least one is left for B).

Atomic: each part is written into a hidden temporary folder beside its destination and renamed into place only
when both are complete; a failure leaves neither.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from segsynth.data.layouts import Layout, PairRecord, find_layout, guess_modality
from segsynth.errors import ConfigError, DataError
from segsynth.utils.files import atomic_dir, write_json


def _volume_groups(pairs: list[PairRecord]) -> list[list[PairRecord]]:
    groups: dict[str, list[PairRecord]] = {}
    for p in pairs:
        groups.setdefault(p.volume_id or p.case_id, []).append(p)
    return [groups[k] for k in sorted(groups)]


def _relative(root: Path, path: Path, folder: str) -> Path:
    """Where a source file goes in a part: its path under the source folder, or ``folder/<name>`` for a file
    that dataset.json names outside it."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return Path(folder) / path.name
    return rel


def _mask_values(layout: Layout) -> dict[str, str]:
    if layout.value_map:
        return {str(raw): layout.labels[cid] for raw, cid in sorted(layout.value_map.items())}
    return {str(k): v for k, v in sorted(layout.labels.items())}


def _modality(layout: Layout) -> str:
    text = layout.modality_text
    return text if text and guess_modality(text) == layout.modality else layout.modality


def _write_part(tmp: Path, layout: Layout, records: list[PairRecord], part: str, meta: dict[str, Any]) -> None:
    entries, taken = [], set()
    for rec in records:
        entry: dict[str, Any] = {"case_id": rec.case_id}
        files = [("image", p, "images") for p in rec.images] + ([("mask", rec.mask, "masks")] if rec.mask else [])
        images: list[str] = []
        for key, src, folder in files:
            rel = _relative(layout.root, src, folder)
            if rel in taken:
                raise DataError(f"two cases would write {rel}; the folder's files need distinct names", layout.root)
            taken.add(rel)
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)  # the file as it is: nothing decoded or written again
            if key == "image":
                images.append(rel.as_posix())
            else:
                entry["mask"] = rel.as_posix()
        entry["image"] = images[0] if len(images) == 1 else images
        if rec.volume_id is not None:
            entry["volume_id"] = rec.volume_id
        entries.append(entry)
    doc: dict[str, Any] = {"name": f"{layout.name} (part {part})", "modality": _modality(layout)}
    if layout.labelled:
        doc["mask_values"] = _mask_values(layout)
    doc.update({k: v for k, v in layout.info.items() if k not in ("synthetic",)})
    doc.update({"numPairs": len(entries), "pairs": entries, "split_folder": {**meta, "part": part}})
    write_json(tmp / "dataset.json", doc)


def split_folder(src: str | Path, out_a: str | Path, out_b: str | Path, *, fraction: float = 0.5, seed: int = 0,
                 overwrite: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``src`` into ``out_a`` (``fraction`` of its volumes) and ``out_b`` (the rest), disjoint.

    Returns:
        One summary per part: folder, cases, volumes.

    Raises:
        ConfigError: a fraction outside (0, 1), the same folder twice, an output inside ``src`` (or ``src``
            itself), an existing output without ``overwrite``, a folder too small to split.
        DataError: an unreadable source folder.
    """
    src, out_a, out_b = Path(src), Path(out_a), Path(out_b)
    if not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"--fraction must be in (0, 1), got {fraction}")
    if out_a.resolve() == out_b.resolve():
        raise ConfigError(f"--out: the two parts must be different folders, got {out_a} twice")
    layout = find_layout(src, unlabelled_ok=True)
    for out in (out_a, out_b):
        r = out.resolve()
        if r == src.resolve() or src.resolve() in r.parents:
            raise ConfigError(f"--out {out}: inside the folder being split ({src}); choose a folder outside it")
        if r in out_a.resolve().parents or r in out_b.resolve().parents:
            raise ConfigError(f"--out {out}: one part cannot hold the other")
        if out.exists() and not overwrite:
            raise ConfigError(f"--out {out}: exists; choose another folder or pass --overwrite")
    groups = _volume_groups(layout.pairs)
    if len(groups) < 2:
        raise ConfigError(f"{src}: {len(groups)} case (volume) only: nothing to split")
    order = np.random.default_rng(int(seed)).permutation(len(groups))
    n_a = min(max(1, int(round(float(fraction) * len(groups)))), len(groups) - 1)
    part_a = sorted((p for i in order[:n_a] for p in groups[i]), key=lambda p: p.case_id)
    part_b = sorted((p for i in order[n_a:] for p in groups[i]), key=lambda p: p.case_id)
    meta = {"source": str(src), "fraction": float(fraction), "seed": int(seed)}
    with contextlib.ExitStack() as stack:  # both parts complete before either is renamed into place
        tmp_b = stack.enter_context(atomic_dir(out_b))
        tmp_a = stack.enter_context(atomic_dir(out_a))
        _write_part(tmp_a, layout, part_a, "A", meta)
        _write_part(tmp_b, layout, part_b, "B", meta)
    return ({"folder": str(out_a), "cases": len(part_a), "volumes": n_a},
            {"folder": str(out_b), "cases": len(part_b), "volumes": len(groups) - n_a})


__all__ = ["split_folder"]

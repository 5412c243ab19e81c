"""Run by test_ddp.py under torch.distributed.run with 2 CPU processes (gloo)."""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from segsynth.nets.segmenters import build_segmenter  # noqa: E402
from segsynth.segment.sources import CaseSource  # noqa: E402
from segsynth.segment.train import TrainConfig, train_segmenter  # noqa: E402
from tests.conftest import make_blob_case  # noqa: E402

torch.set_num_threads(1)
torch.manual_seed(0)
out = sys.argv[1]
cases = [make_blob_case(f"c{i}", (32, 32), seed=i) for i in range(6)]
model = build_segmenter("unet", 2, 1, 2, features=(8, 8, 16, 16, 32, 8))
res = train_segmenter(model, CaseSource(cases[:4]), cases[4:], TrainConfig(steps=6, batch_size=2, val_every=3,
                      progress=False), num_classes=2, device="cpu", checkpoint_dir=os.path.join(out, "ck"))
rank = torch.distributed.get_rank()
world = torch.distributed.get_world_size()
checksum = float(sum(p.double().sum() for p in res.model.parameters()))
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "world": world, "checksum": checksum, "best": res.best_val_dice}, f)
torch.distributed.destroy_process_group()

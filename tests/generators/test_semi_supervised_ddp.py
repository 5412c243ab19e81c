"""Semi-supervised hooks under DistributedDataParallel (2 CPU processes, gloo): every rank draws its own
unlabelled images, the two forwards before one backward synchronise, and the ranks end with equal weights."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    import torch.distributed as dist

    from segsynth.data.case import Case
    from segsynth.generators.semi_supervised import FixMatchHook, MeanTeacherHook
    from segsynth.nets.segmenters import build_segmenter
    from segsynth.segment.sources import CaseSource
    from segsynth.segment.train import TrainConfig, train_segmenter
    from tests.conftest import make_blob_case

    cases = [make_blob_case(f"c{i}", (32, 32), seed=i) for i in range(8)]
    unl = [Case(c.case_id, c.image, None, {}) for c in cases[3:]]
    hooks = [FixMatchHook(unl, spatial_dims=2, seed=0, batch_size=2, threshold=0.5),
             MeanTeacherHook(unl, spatial_dims=2, seed=0, batch_size=2)]
    torch.manual_seed(0)
    model = build_segmenter("unet", 2, 1, 2, features=(8, 8, 16, 16, 32, 8))
    cfg = TrainConfig(steps=2, batch_size=2, val_every=2, progress=False)
    res = train_segmenter(model, CaseSource(cases[:2]), cases[2:3], cfg, num_classes=2, hooks=hooks)
    x_u, _ = hooks[0].stream.draw(2, step=0)
    torch.save({"weights": res.model.state_dict(), "x_u": x_u, "teacher": hooks[1].state_dict(),
                "fixmatch_loss": res.history[-1]["fixmatch_loss"]}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SEGSYNTH_DDP_TESTS"),
                    reason="spawns 2 processes (~90 s on 2 busy cores); set SEGSYNTH_DDP_TESTS=1 to run")
def test_two_ranks_train_in_sync_on_their_own_unlabelled_images(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(r0["x_u"], r1["x_u"])  # unlabelled batches seeded by rank
    for k in r0["weights"]:
        assert torch.allclose(r0["weights"][k], r1["weights"][k], atol=1e-6), k
    for k in r0["teacher"]:
        assert torch.allclose(r0["teacher"][k], r1["teacher"][k], atol=1e-6), k
    assert r0["fixmatch_loss"] > 0 and r1["fixmatch_loss"] > 0

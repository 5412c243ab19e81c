import json
import subprocess
import sys
from pathlib import Path


def test_two_cpu_processes_train_the_same_model(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
           str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert abs(r0["checksum"] - r1["checksum"]) < 1e-6  # DDP kept the replicas in sync
    assert (tmp_path / "ck" / "last.pt").exists()

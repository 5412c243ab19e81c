"""benchmarks/speed.py and benchmarks/gpu_check.sh: their plumbing, on tiny sizes (timings are not checked)."""

import json
import subprocess
from pathlib import Path

import pytest

import segsynth.utils.precision as precision

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--sizes", "32", "--batch", "2", "--steps", "1", "--warmup", "1", "--rounds", "1", "--bf16-steps", "1",
        "--features", "4,4,8,8,16,4", "--volumes", "1", "--threads", "1"]


def test_speed_json_sections_merge_and_plot(tmp_path, monkeypatch):
    speed = pytest.importorskip("benchmarks.speed")
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(speed, "cpu_has_fast_bf16", lambda: False)
    out = tmp_path / "speed.json"
    speed.main([*TINY, "--sections", "loop", "--json", str(out)])
    loop = json.loads(out.read_text())["sections"]["loop"]["sizes"]["32"]
    for name in ("plain_predrawn", "plain", "segsynth_prefetch0", "segsynth"):
        assert loop[name]["ms_per_step"] > 0 and 0 <= loop[name]["data_wait_fraction"] <= 1
    assert loop["ratio"] == pytest.approx(loop["segsynth"]["ms_per_step"] / loop["plain"]["ms_per_step"])
    speed.main([*TINY, "--sections", "precision,demo", "--json", str(out)])  # a later run adds sections
    d = json.loads(out.read_text())["sections"]
    assert set(d) == {"loop", "precision", "demo"} and "skipped" in d["demo"]
    assert d["precision"]["auto_picks"] == "fp32" and "no native bf16" in d["precision"]["note"]
    assert d["precision"]["sizes"]["32"]["bf16_ms_per_step"] > 0
    assert out.with_suffix(".png").stat().st_size > 0
    with pytest.raises(SystemExit):
        speed.parse_args(["--sections", "nope"])


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)


def test_speed_argmax_section_needs_no_data(tmp_path, monkeypatch):
    speed = pytest.importorskip("benchmarks.speed")
    monkeypatch.setattr(speed, "load_data", lambda a: pytest.fail("the argmax section loads no dataset"))
    out = tmp_path / "speed.json"
    speed.main(["--sections", "argmax", "--json", str(out), "--threads", "1"])
    sizes = json.loads(out.read_text())["sections"]["argmax"]["sizes"]
    assert set(sizes) == {f"{'×'.join(map(str, s))} (axis {d})" for s, d in speed.ARGMAX_SHAPES}
    for r in sizes.values():
        assert r["torch_argmax_ms"] > 0 and r["class_argmax_ms"] > 0
        assert r["speedup"] == pytest.approx(r["torch_argmax_ms"] / r["class_argmax_ms"])
    assert out.with_suffix(".png").stat().st_size > 0

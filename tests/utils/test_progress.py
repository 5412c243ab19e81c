"""Progress bars: drawn on a terminal only, by every loop; nothing written into a log file or a pipe."""

from __future__ import annotations

import io
import sys

import pytest

from segsynth.cli import main
from segsynth.utils import progress
from tests.conftest import write_png_dataset

TINY = ["--size", "32", "--steps", "3", "--batch-size", "2", "--val-every", "3", "--unet-features", "4,4,8,8,16,4",
        "--device", "cpu"]
LABELS = ["--opt", "ae_channels=[16,16]", "--opt", "unet_channels=[16,32]", "--opt", "unet_attention=[false,true]",
          "--opt", "num_head_channels=16", "--opt", "disc_layers=2", "--opt", "ae_batch_size=2", "--opt",
          "latent_copies=1", "--opt", "num_train_timesteps=20", "--opt", "sampling_steps=2"]  # brainSPADE, tiny


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_rule_bars_only_when_asked_and_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.show_progress(True)  # a file or a pipe: never
    bar = progress.progress_bar(5, "x", True)
    bar.update(5)
    bar.close()
    assert sys.stderr.getvalue() == ""
    assert list(progress.progress_iter([1, 2], "x", True)) == [1, 2] and sys.stderr.getvalue() == ""

    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress.show_progress(True) and not progress.show_progress(False)
    bar = progress.progress_bar(5, "steps", True)
    bar.update(5)
    bar.close()
    assert "steps" in sys.stderr.getvalue()  # on a terminal the bar is drawn
    assert not progress.on_terminal(object())  # a stream without isatty is not a terminal


def test_every_tqdm_of_the_package_goes_through_the_rule():
    from pathlib import Path

    root = Path(progress.__file__).resolve().parents[1]
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if "tqdm(" in p.read_text() and p.name != "progress.py")
    assert users == [], f"draw bars with segsynth.utils.progress, not tqdm directly: {users}"


@pytest.fixture
def no_terminal(monkeypatch):
    """Standard error as in a redirected run: not a terminal, whatever runs the tests."""
    monkeypatch.setattr(progress, "on_terminal", lambda stream=None: False)


def test_train_and_generator_fits_write_no_bars_into_a_file(tmp_path, capfd, no_terminal):
    data = write_png_dataset(tmp_path / "png", n=6)
    # without -q: bars are asked for, and the run's stderr is captured (a file, not a terminal)
    assert main(["train", "--data", str(data), "--n", "2", "--method", "augment", "--out", str(tmp_path / "t"),
                 *TINY]) == 0
    assert main(["check-data", str(data)]) == 0
    assert main(["predict", "--model", str(tmp_path / "t" / "model"), "--input", str(data / "images"), "--out",
                 str(tmp_path / "p"), "--device", "cpu"]) == 0
    assert main(["brainspade-train-labels", "--data", str(data), "--size", "32", "--ae-steps", "2",
                 "--ldm-steps", "2", *LABELS, "--out", str(tmp_path / "labels"), "--device", "cpu"]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err, err[:500]
    assert "it/s" not in err and "label autoencoder" not in err

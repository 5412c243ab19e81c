"""Folder helpers of segsynth.utils.files."""

from segsynth.utils.files import dir_lock, prune_empty_dirs


def test_prune_empty_dirs_keeps_every_file(tmp_path):
    (tmp_path / "r" / "a" / "b").mkdir(parents=True)
    (tmp_path / "r" / "c").mkdir()
    (tmp_path / "r" / "c" / "keep.txt").write_text("x")
    (tmp_path / "r" / "old").mkdir()
    existed = {tmp_path / "r", tmp_path / "r" / "old"}
    prune_empty_dirs(tmp_path / "r", keep=existed)
    left = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "r").rglob("*"))
    assert left == ["r/c", "r/c/keep.txt", "r/old"]
    prune_empty_dirs(tmp_path / "r")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "r").rglob("*")) == ["r/c", "r/c/keep.txt"]
    prune_empty_dirs(tmp_path / "missing")  # nothing to do


def test_dir_lock_keeps_another_process_out_until_released(tmp_path):
    import fcntl

    target = tmp_path / "sweep" / "seconds"

    def taken() -> bool:  # another open file description, as another process would hold
        with open(tmp_path / "sweep" / ".seconds.lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    with dir_lock(target):
        assert taken()
    assert not taken()

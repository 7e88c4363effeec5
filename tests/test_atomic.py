"""dprime_tf.atomic: atomic file writes and directory staging (no TensorFlow)."""

import json
import os
import stat

import numpy as np
import pytest

from dprime_tf import atomic
from dprime_tf.errors import UserError


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_atomic_write_creates_parents_with_open_permissions(tmp_path):
    path = tmp_path / "a" / "b" / "x.json"
    atomic.atomic_write_json(path, {"k": [1, 2]})
    assert json.loads(path.read_text()) == {"k": [1, 2]}
    assert os.listdir(path.parent) == ["x.json"]  # no temporary left
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()  # as open() makes it, not mkstemp's 0600
    atomic.atomic_write(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    atomic.atomic_savez(tmp_path / "arrays.npz", a=np.arange(3))
    np.testing.assert_array_equal(np.load(tmp_path / "arrays.npz")["a"], np.arange(3))


def test_a_write_failing_midway_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "x.txt"
    path.write_text("old")

    class HalfWritten:  # the disk fills up half-way through the write
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "open", lambda p, mode: HalfWritten(open(p, mode)), raising=False)
    with pytest.raises(OSError, match="No space left"):
        atomic.atomic_write(path, "new contents")
    monkeypatch.undo()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["x.txt"]

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        atomic.atomic_write(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["x.txt"]


def test_a_non_regular_file_is_never_replaced(tmp_path):
    with pytest.raises(UserError, match="not a regular file"):
        atomic.atomic_write(os.devnull, "x")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    (tmp_path / "d").mkdir()
    with pytest.raises(UserError, match="not a regular file"):
        atomic.atomic_write(tmp_path / "d", "x")
    assert sorted(os.listdir(tmp_path)) == ["d"] and os.listdir(tmp_path / "d") == []


def test_staging_publishes_a_directory_in_one_step(tmp_path):
    final = tmp_path / "models" / "1"
    with atomic.Staging() as stage:
        temp = stage.temp_dir(final)
        assert os.path.basename(temp).startswith(".tmp-1-") and os.path.dirname(temp) == str(final.parent)
        os.makedirs(os.path.join(temp, "variables"))
        with open(os.path.join(temp, "saved_model.pb"), "w") as f:
            f.write("new")
        assert not final.exists()  # nothing visible before commit()
        stage.commit()
    assert (final / "saved_model.pb").read_text() == "new" and (final / "variables").is_dir()
    assert stat.S_IMODE(os.stat(final).st_mode) == 0o777 & ~_umask()  # readable by a model server
    assert os.listdir(final.parent) == ["1"]

    with atomic.Staging() as stage:  # replacing it: the old directory goes
        with open(os.path.join(stage.temp_dir(final), "saved_model.pb"), "w") as f:
            f.write("newer")
        stage.commit()
    assert os.listdir(final) == ["saved_model.pb"] and (final / "saved_model.pb").read_text() == "newer"
    assert os.listdir(final.parent) == ["1"]


def test_staging_restores_the_old_directory_on_failure(tmp_path, monkeypatch):
    """A partial commit is undone: the replaced file and directory come back, temporaries and new parents go."""
    first, second, third = tmp_path / "first.txt", tmp_path / "version", tmp_path / "sub" / "new"
    first.write_text("old first")
    (second / "variables").mkdir(parents=True)
    (second / "saved_model.pb").write_text("old version")
    before = sorted(os.listdir(tmp_path))
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_replace(src, dst)

    with pytest.raises(OSError, match="disk full"):
        with atomic.Staging() as stage:
            with open(stage.temp_file(first), "w") as f:
                f.write("new first")
            with open(os.path.join(stage.temp_dir(second), "saved_model.pb"), "w") as f:
                f.write("new version")
            os.makedirs(os.path.join(stage.temp_dir(third), "variables"))
            monkeypatch.setattr(os, "replace", failing_replace)
            stage.commit()
    monkeypatch.undo()
    assert first.read_text() == "old first"
    assert (second / "saved_model.pb").read_text() == "old version" and (second / "variables").is_dir()
    assert sorted(os.listdir(tmp_path)) == before  # temporaries, backups and the created sub/ removed


def test_staging_without_commit_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.Staging() as stage:
            with open(stage.temp_file(tmp_path / "a" / "b.txt"), "w") as f:
                f.write("x")
            stage.temp_dir(tmp_path / "c")
            raise RuntimeError("a check failed")
    assert os.listdir(tmp_path) == []


def test_the_file_then_its_directory_reach_the_disk(tmp_path, monkeypatch):
    """fsync of the written file before the rename, of its directory after it (else a crash
    right after the rename can lose the new directory entry)."""
    synced = []
    real_fsync = os.fsync

    def record(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((path, os.path.isdir(path), os.path.exists(tmp_path / "out" / "a.json")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    atomic.atomic_write_json(str(tmp_path / "out" / "a.json"), {"a": 1})
    files = [s for s in synced if not s[1]]
    dirs = [s for s in synced if s[1]]
    assert files and not files[0][2], synced  # the temporary, synced before the final name exists
    assert dirs and dirs[-1][0] == str(tmp_path / "out") and dirs[-1][2], synced  # then the directory

"""Atomic files and directories: a reader sees the old version or the new one, never half of one.

    atomic_write(path, data)            one file (str is UTF-8 encoded)
    atomic_write_json(path, obj)
    atomic_savez(path, **arrays)        np.savez_compressed
    with Staging() as stage:            several files and directories, all or nothing
        tmp = stage.temp_dir(final)     # write into tmp ...
        stage.commit()

Every output is first written to a hidden temporary sibling of its
destination (`.tmp-<name>-XXXXXXXX`: same directory, hence same file
system), synced to disk, renamed into place, and then the parent directory
is synced. Temporaries get the permissions open() / mkdir() would give the
destination (the umask applies), not mkstemp's private 0600. Leaving a
`Staging` block without a successful commit() (an exception, a failed
check) removes the temporaries and the parent directories created for them.

A file replaces its destination in one rename. A directory cannot: the
previous one is renamed aside, the new one renamed in, then the old one
deleted, so for that instant the destination is absent. A destination that
exists but is not a regular file (e.g. os.devnull) is never replaced by a file.

Imports neither TensorFlow nor numpy (atomic_savez imports numpy).
"""

from __future__ import annotations

import json
import os
import shutil

from dprime_tf.errors import UserError


def atomic_write(path, data: bytes | str) -> None:
    with Staging() as stage:
        temp = stage.temp_file(path)
        with open(temp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        stage.commit()


def atomic_write_json(path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json_or(path, default=None):
    """A JSON file's content, or `default` when it is missing or unreadable (files other
    processes write atomically: a reader sees the old or the new content, never half)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def atomic_savez(path, **arrays) -> None:
    import io

    import numpy as np
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(path, buf.getvalue())


class Staging:
    """Temporary siblings of destinations, moved into place together by `commit()`."""

    def __init__(self):
        self._pairs = []  # (temp, final)
        self._created = []  # directories this staging created, parents first
        self._committed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.cleanup()
        return False

    def temp_dir(self, final) -> str:
        return self._temp(final, lambda temp: os.mkdir(temp, 0o777))

    def temp_file(self, final) -> str:
        """Refuses (UserError) a destination that exists and is not a regular file."""
        final = os.path.abspath(os.fspath(final))
        if os.path.exists(final) and not os.path.isfile(final):
            raise UserError(f"{final} exists and is not a regular file; refusing to replace it")
        return self._temp(final, lambda temp: os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))

    def _temp(self, final, create) -> str:
        final = os.path.abspath(os.fspath(final))
        parent = os.path.dirname(final)
        self._makedirs(parent)
        try:
            temp = _sibling(final, ".tmp-", create)
        except OSError as e:
            raise UserError(f"cannot write in {parent}: {e.strerror}") from None
        self._pairs.append((temp, final))
        return temp

    def _makedirs(self, directory):
        missing = []
        d = directory
        while not os.path.isdir(d) and os.path.dirname(d) != d:
            missing.append(d)
            d = os.path.dirname(d)
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                if not os.path.isdir(d):
                    raise UserError(f"cannot create directory {d}: a file is in the way") from None
                continue
            except OSError as e:
                raise UserError(f"cannot create directory {d}: {e.strerror}") from None
            self._created.append(d)

    def commit(self) -> None:
        """Moves every temporary onto its destination, in creation order; if one
        move fails, the ones done are undone (previous contents restored).
        A replaced file is kept as a hard link until all moves succeeded."""
        for temp, _ in self._pairs:
            _fsync_tree(temp)
        done = []  # (final, backup: the previous final, or None if there was none)
        try:
            for temp, final in self._pairs:
                backup = None
                if os.path.lexists(final):
                    backup = _sibling(final, ".old-")
                    if os.path.isdir(final) or os.path.isdir(temp):
                        os.rename(final, backup)
                    else:
                        try:
                            os.link(final, backup)
                        except OSError:  # no hard links on this file system
                            shutil.copy2(final, backup)
                try:
                    os.replace(temp, final)
                except BaseException:
                    if backup and os.path.lexists(final):  # a file, still in place: drop its link
                        _remove(backup)
                    else:
                        _restore(final, backup)
                    raise
                done.append((final, backup))
        except BaseException:
            for final, backup in reversed(done):
                _restore(final, backup)
            raise
        self._committed = True
        self._pairs = []
        for _, backup in done:
            if backup:
                _remove(backup)
        for parent in {os.path.dirname(final) for final, _ in done}:
            _fsync(parent)

    def cleanup(self) -> None:
        for temp, _ in self._pairs:
            _remove(temp)
        self._pairs = []
        if not self._committed:
            for d in reversed(self._created):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        self._created = []


def _sibling(path, prefix, create=None) -> str:
    """A free name `<prefix><name>-<random>` next to `path`, made by `create(name)` if given."""
    parent, base = os.path.split(path)
    for _ in range(100):
        candidate = os.path.join(parent, f"{prefix}{base}-{os.urandom(4).hex()}")
        if create is None:
            if not os.path.lexists(candidate):
                return candidate
            continue
        try:
            create(candidate)
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"cannot find a free temporary name next to {path}")


def _restore(final, backup):
    """Puts `backup` (a previous `final`, or None if there was none) back in place."""
    if backup is None:
        _remove(final)
    elif os.path.isdir(backup) or os.path.isdir(final):
        if os.path.lexists(final) and final != backup:
            _remove(final)
        os.rename(backup, final)
    else:
        os.replace(backup, final)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except OSError:
            pass


def _fsync(path):
    """Best effort: the file's or directory's data on disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path):
    """A file, or every file and directory under `path`: on disk before the rename makes them visible."""
    if not os.path.isdir(path):
        _fsync(path)
        return
    for d, _, files in os.walk(path):
        for f in files:
            _fsync(os.path.join(d, f))
        _fsync(d)

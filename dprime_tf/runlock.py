"""Run directories: one process at a time, restart or resume, what they were made with.

    lock_run_dir(path)        an exclusive lock (flock on the directory itself: no lock file)
    unlock_run_dir(path)      released at the end of the run (the OS releases it if the process dies)
    plan_resume(dir, resume)  --resume on a run killed before its first checkpoint: start it over
    remove_stale_temporaries(dir)   the temporaries a killed process left (under the lock only)
    write_run_record / check_run_record   <run>/run.json: versions, the settings that fix the
                              network, the data and the streams, and the variables saved by position
    DirLock(path)             the same lock as a context manager (export's models.config update)

Imports neither TensorFlow nor numpy: the training command line checks a run
directory before TensorFlow starts.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import sys

from dprime_tf.errors import UserError

RUN_RECORD = "run.json"
# Files a run writes and a restart from step 0 rewrites (removed so that nothing stale survives it).
# flags.txt and genotype.json stay: the restart's flags point at them.
RESTART_REMOVES = ("history.csv", "checkpoints", "tensorboard", "plots", "genotypes", "alpha_history.npz",
                   "alphas_initial.npz", "alphas.npz", "decisiveness.json", "best_validation.json",
                   "initial_validation.json", "summary.json", "genotype_last.json", "model.keras", "vocab.txt",
                   "best.json", "report.html", "epochs.json", RUN_RECORD)
# Files that mark a directory as a run directory (a restart never clears anything else).
RUN_MARKERS = ("flags.txt", RUN_RECORD, "history.csv")

_HELD: dict[str, int] = {}  # run directory -> fd holding its lock (this process)
_RESTARTS: set[str] = set()  # run directories --resume starts over (no checkpoint)
_UNLOCKABLE = (errno.ENOLCK, errno.EBADF, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS)


# -- locks -------------------------------------------------------------------------
class DirLock:
    """An exclusive flock on a directory. `blocking=False`: a UserError naming the
    directory if another process holds it. File systems without flock run unlocked."""

    def __init__(self, path, what="directory", blocking=True):
        self.path, self.what, self.blocking = os.path.abspath(os.fspath(path)), what, blocking
        self.fd = None

    def acquire(self):
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as e:
            raise UserError(f"cannot open {self.what} {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self.what} {self.path} is in use by another process (it holds the lock): "
                            "wait for it to finish, or choose another --output_dir") from None
        except OSError as e:
            if e.errno not in _UNLOCKABLE:
                os.close(fd)
                raise UserError(f"cannot lock {self.what} {self.path}: {e.strerror}") from None
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def lock_run_dir(run_dir: str) -> None:
    """Takes the exclusive lock of `run_dir` for this process (a one-line UserError if
    another process, or another run of this one, holds it)."""
    run_dir = os.path.abspath(run_dir)
    if run_dir in _HELD:
        raise UserError(f"run directory {run_dir} is in use by another run of this process")
    _HELD[run_dir] = DirLock(run_dir, "run directory", blocking=False).acquire().fd


def unlock_run_dir(run_dir: str) -> None:
    fd = _HELD.pop(os.path.abspath(run_dir), None)
    if fd is not None:
        os.close(fd)


def is_locked_here(run_dir: str) -> bool:
    return os.path.abspath(run_dir) in _HELD


# -- resume or restart -------------------------------------------------------------
def checkpoint_index(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints", "checkpoint")


def has_checkpoint_index(run_dir: str) -> bool:
    return os.path.isfile(checkpoint_index(os.path.abspath(run_dir)))


def looks_like_run(run_dir: str) -> bool:
    return os.path.isdir(run_dir) and any(os.path.exists(os.path.join(run_dir, m)) for m in RUN_MARKERS)


def check_run_dir(output_dir: str, resume: bool) -> None:
    """Before anything starts: the one-line errors of a run directory that cannot be
    resumed (`--resume` on a directory that is not a run) or that a new run would
    overwrite (not empty, or a file). The jobs check again under the run's lock."""
    run_dir = os.path.abspath(output_dir)
    if resume:
        if not has_checkpoint_index(run_dir) and not looks_like_run(run_dir):
            raise UserError(no_checkpoint(run_dir))
    elif os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UserError(not_a_directory(run_dir))
    elif os.path.isdir(run_dir) and os.listdir(run_dir):
        raise UserError(not_empty(run_dir))


def not_a_directory(run_dir: str) -> str:
    """The message of an --output_dir that names a file."""
    return f"--output_dir {run_dir} is a file, not a directory"


def not_empty(run_dir: str) -> str:
    """The message of a new run in a directory that already holds files."""
    return (f"--output_dir {run_dir} is not empty: pass --resume to continue that run, "
            "or choose another --output_dir")


def no_checkpoint(run_dir: str) -> str:
    """The message of --resume on a directory without a checkpoint."""
    return (f"--resume: no checkpoint in {run_dir}/checkpoints to resume from "
            "(pass the --output_dir of an interrupted run, or drop --resume)")


def plan_resume(output_dir: str, resume: bool, verbose: int = 1) -> bool:
    """Whether the run really resumes: --resume on a run directory whose first checkpoint
    was never written (killed early) starts the run over in the same directory (see
    `restart_planned`); a directory that is not a run stays a one-line error."""
    run_dir = os.path.abspath(output_dir)
    if not resume or has_checkpoint_index(run_dir):
        return resume
    if not looks_like_run(run_dir):
        raise UserError(no_checkpoint(run_dir))
    _RESTARTS.add(run_dir)
    if verbose:
        print(f"--resume: {run_dir} has no checkpoint yet (killed before its first one): "
              "starting the run from the beginning", flush=True)
    return False


def restart_planned(run_dir: str) -> bool:
    return os.path.abspath(run_dir) in _RESTARTS


def clear_for_restart(run_dir: str) -> None:
    """Removes what a run killed before its first checkpoint wrote (call under the lock)."""
    run_dir = os.path.abspath(run_dir)
    _RESTARTS.discard(run_dir)
    for name in RESTART_REMOVES:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


# -- stale temporaries ---------------------------------------------------------------
_ATOMIC_TEMP = re.compile(r"\.tmp-.+-[0-9a-f]{8}\Z")  # dprime_tf.atomic's temporaries
_ATOMIC_OLD = re.compile(r"\.old-(.+)-[0-9a-f]{8}\Z")  # ... and its backups during a commit
_KERAS_TEMP = re.compile(r"\..+\.tmp\.keras\Z")  # runs.save_model's
_TF_TEMP = re.compile(r".+\.tmp[0-9a-f]{32}\Z")  # tf.io.gfile's atomic writes (the checkpoint index)
_TF_CKPT_TEMP = re.compile(r".+_temp(_[0-9a-f]+)?\Z")  # a sharded checkpoint save's staging directory


def remove_stale_temporaries(run_dir: str) -> list[str]:
    """Removes the temporaries of atomic writes a killed process left in `run_dir`
    (call only under its lock: no other process is writing there). A backup whose
    destination is missing (a killed directory swap) is put back instead. Returns
    the paths removed or restored."""
    done = []
    for parent, dirs, files in os.walk(run_dir):
        in_checkpoints = os.path.basename(parent) == "checkpoints"
        for name in list(dirs) + files:
            path = os.path.join(parent, name)
            old = _ATOMIC_OLD.match(name)
            if old:
                final = os.path.join(parent, old.group(1))
                if not os.path.lexists(final):
                    os.rename(path, final)
                    done.append(path)
                    if name in dirs:
                        dirs.remove(name)
                    continue
            stale = (old or _ATOMIC_TEMP.match(name) or _KERAS_TEMP.match(name) or _TF_TEMP.match(name)
                     or (in_checkpoints and name in dirs and _TF_CKPT_TEMP.match(name)))
            if not stale:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
                dirs.remove(name)
            else:
                try:
                    os.remove(path)
                except OSError:
                    continue
            done.append(path)
    return done


# -- run.json --------------------------------------------------------------------------
def versions() -> dict:
    import platform
    out = {"python": platform.python_version()}
    try:
        from dprime_tf import __version__
        out["dprime_tf"] = __version__
    except ImportError:  # pragma: no cover
        pass
    for module in ("tensorflow", "keras"):
        mod = sys.modules.get(module)
        if mod is not None:
            out[module] = getattr(mod, "__version__", "?")
    return out


def normalize_name(name: str) -> str:
    """A variable's path without Keras' per-process counters (conv2d_17 -> conv2d)."""
    return re.sub(r"_\d+(?=[_/:]|\Z)", "", str(name))


def describe_variables(variables) -> list[list]:
    """[[name, shape], ...] of variables restored by position (names without Keras' counters)."""
    return [[normalize_name(getattr(v, "path", None) or getattr(v, "name", "?")), [int(d) for d in v.shape]]
            for v in variables]


def read_run_record(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, RUN_RECORD)
    if not os.path.exists(path):
        return None
    try:
        if os.path.getsize(path) > 16 << 20:
            raise UserError(f"{path} is larger than 16 MiB: not a run record; move it away")
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({' '.join(str(e).split())[:120]}): fix or delete it") from None


def write_run_record(run_dir: str, kind: str, settings: dict, variables: list, previous: dict | None = None):
    """<run>/run.json: what the run was started with (versions, the settings it cannot change,
    the variables saved by position); a resumed run appends its versions to `resumed_with`."""
    from dprime_tf.atomic import atomic_write_json
    if previous:
        record = dict(previous)
        record["resumed_with"] = [*previous.get("resumed_with", []), versions()]
        record.setdefault("settings", settings)
        record.setdefault("variables", variables)
    else:
        record = {"kind": kind, "created_with": versions(), "settings": settings, "variables": variables}
    atomic_write_json(os.path.join(run_dir, RUN_RECORD), record)


def _flag_value(value):
    return json.loads(json.dumps(value))  # tuples -> lists, as read back


def check_run_record(run_dir: str, kind: str, settings: dict, variables: list) -> dict | None:
    """A one-line UserError if the run resumed with `settings` / `variables` is not the
    run directory's (a changed flag that changes the network, the data or the streams;
    another network behind the checkpoint). Returns the record (None for runs made
    before run.json existed: those are checked by the restore alone)."""
    record = read_run_record(run_dir)
    if record is None:
        return None
    if record.get("kind") not in (None, kind):
        raise UserError(f"{run_dir} is a {record.get('kind')} run, not a {kind} run: resume it with its own command")
    saved = record.get("settings", {})
    for name, value in settings.items():
        if name in saved and saved[name] != _flag_value(value):
            raise UserError(f"--resume: --{name}={_show(value)} differs from the run's --{name}={_show(saved[name])} "
                            "(it changes the network, the data or the streams of the checkpoint); drop it to resume, "
                            "or start a new --output_dir")
    mine = [[n, list(s)] for n, s in variables]
    theirs = record.get("variables")
    if theirs is not None and theirs != mine:
        if len(theirs) != len(mine):
            detail = f"{len(theirs)} variables saved, this network has {len(mine)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b)
            detail = (f"variable #{i} is {theirs[i][0]} {tuple(theirs[i][1])} there, "
                      f"{mine[i][0]} {tuple(mine[i][1])} here")
        raise UserError(f"--resume: the checkpoint in {run_dir} was written for another network ({detail}); "
                        "resume with the run's own flags, or start a new --output_dir")
    return record


def _show(value):
    return "" if value is None else value

"""The run directory a search or training leaves behind, and the Keras
callbacks that fill it.

    <run>/flags.txt            the flags used (a valid --flagfile)
    <run>/history.csv          one row per step
    <run>/checkpoints/         tf.train checkpoints (resume)
    <run>/tensorboard/         TensorBoard logs
    <run>/...                  what the job adds (genotype.json, plots, ...)

Every file is written atomically (temporary file + rename), so a killed job
never leaves a half-written file behind.
"""

from __future__ import annotations

import csv
import io
import math
import os

import keras
import numpy as np
import tensorflow as tf

from dprime_tf.cli import default_run_dir  # noqa: F401  (runs.default_run_dir)
from dprime_tf import runlock
from dprime_tf.errors import UserError


# -- atomic files ---------------------------------------------------------------
from dprime_tf.atomic import atomic_write, atomic_write_json, atomic_savez  # noqa: F401


# -- run directory ----------------------------------------------------------------
def prepare_run_dir(run_dir: str, resume: bool) -> str:
    """Creates a fresh run directory, or checks that one can be resumed, and takes its
    exclusive lock (`runlock`; release with `release_run_dir`): a second process on
    the same directory gets a one-line error and changes nothing. Under the lock, the
    temporaries a killed process left are removed; a run that `runlock.plan_resume`
    restarts (killed before its first checkpoint) is cleared first."""
    run_dir = os.path.abspath(run_dir)
    restart = runlock.restart_planned(run_dir)
    if resume:
        if not os.path.isdir(run_dir):
            raise UserError(runlock.no_checkpoint(run_dir))
        runlock.lock_run_dir(run_dir)
        try:
            if latest_checkpoint(os.path.join(run_dir, "checkpoints")) is None:
                raise UserError(runlock.no_checkpoint(run_dir))
            runlock.remove_stale_temporaries(run_dir)
        except BaseException:
            runlock.unlock_run_dir(run_dir)
            raise
        return run_dir
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UserError(runlock.not_a_directory(run_dir))
    if not restart and os.path.isdir(run_dir) and os.listdir(run_dir):
        raise UserError(runlock.not_empty(run_dir))
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --output_dir {run_dir}: {e.strerror}") from None
    runlock.lock_run_dir(run_dir)
    try:
        if restart:
            if latest_checkpoint(os.path.join(run_dir, "checkpoints")) is not None:
                raise UserError(f"{run_dir} got a checkpoint while this process started: run --resume again")
            runlock.clear_for_restart(run_dir)
            runlock.remove_stale_temporaries(run_dir)
        elif os.listdir(run_dir):  # another process wrote there between the check and the lock
            raise UserError(runlock.not_empty(run_dir))
    except BaseException:
        runlock.unlock_run_dir(run_dir)
        raise
    return run_dir


def release_run_dir(run_dir: str) -> None:
    """Releases the lock `prepare_run_dir` took (the OS releases it when the process dies)."""
    runlock.unlock_run_dir(run_dir)


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """tf.train.latest_checkpoint, with a corrupt index file as a one-line UserError (and
    without TensorFlow's log line for an index naming a missing checkpoint)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("CRITICAL")
    try:
        return tf.train.latest_checkpoint(ckpt_dir)
    except Exception as e:  # noqa: BLE001  (text_format.ParseError, UnicodeDecodeError, OpError, ...)
        detail = " ".join(str(e).split())[:120] or type(e).__name__
        raise UserError(f"the checkpoint index {os.path.join(ckpt_dir, 'checkpoint')} is corrupt ({detail}): "
                        "fix it (its model_checkpoint_path: \"ckpt-N\" names the newest checkpoint) or start a "
                        "new --output_dir") from None
    finally:
        logger.setLevel(level)


def make_deterministic():
    """Deterministic kernels and one thread per op: multi-threaded CPU
    reductions differ in the last bits from run to run, and a search amplifies
    such differences. Slower. On CPUs, oneDNN's kernels also vary between
    processes: bitwise reproducibility needs TF_ENABLE_ONEDNN_OPTS=0 before
    TensorFlow is imported, which the command lines set for --deterministic
    (cli.deterministic_requested); Python users set it themselves."""
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started its thread pools
        pass


def read_json(path: str, default=None):
    """A run file written by atomic_write_json, or `default` ([] when None) if it is absent."""
    import json
    if not os.path.exists(path):
        return [] if default is None else default
    with open(path) as f:
        return json.load(f)


def write_flags(run_dir: str, flags_text: str) -> None:
    atomic_write(os.path.join(run_dir, "flags.txt"), flags_text)


# -- per-step history -------------------------------------------------------------
def fit_segments(start_step: int, steps_per_epoch: int, end_epoch: int) -> list[tuple[int, int, int]]:
    """(first epoch, end epoch, steps per epoch) of the fit() calls that continue a run
    from `start_step` up to `end_epoch`: a resumed, half-done epoch runs as its own
    fit() of its remaining steps, the whole epochs after it as one more."""
    epoch, offset = divmod(start_step, steps_per_epoch)
    segments = [(epoch, epoch + 1, steps_per_epoch - offset)] if offset else []
    first_full = epoch + (1 if offset else 0)
    if first_full < end_epoch:
        segments.append((first_full, end_epoch, steps_per_epoch))
    return segments


def search_checkpoint(search, run_dir: str, chief: bool, worker_dir: str | None, resume: bool,
                      verbose: int, steps_per_epoch: int, settings: dict | None = None):
    """(CheckpointManager, start step) of a search, restored from `run_dir` when resuming.

    Every variable is saved by position (weights, alphas, BN statistics, hidden
    states, schedule state, both optimizers): tf.train's object graph does not
    see the layers Keras keeps in lists (the cells). Saving is a collective under
    multi-worker strategies (on-read variables summed over the replicas, the
    recurrent search's hidden states, are all-reduced): every worker
    saves, non-chiefs into their scratch directory. `settings` (the flags that fix
    the network, the data and the streams) and the variables' names and shapes are
    recorded in <run>/run.json and checked before a resumed run restores anything."""
    variables = [list(search.weights), list(search.weight_optimizer.variables),
                 list(search.alpha_optimizer.variables)]
    checkpoint = tf.train.Checkpoint(search_variables=variables[0], weight_optimizer=variables[1],
                                     alpha_optimizer=variables[2])
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir if chief else os.path.join(worker_dir, "checkpoints"),
                                         max_to_keep=2)
    described = runlock.describe_variables([v for group in variables for v in group])
    if not resume:
        if chief:
            runlock.write_run_record(run_dir, "search", settings or {}, described)
        return manager, 0
    latest = latest_checkpoint(ckpt_dir)
    if latest is None:  # only a non-chief gets here (the chief checked in prepare_run_dir)
        raise UserError(f"--resume: this worker sees no checkpoint in {ckpt_dir}: every worker must read the "
                        "chief's run directory (put --output_dir on a filesystem all hosts share)")
    record = runlock.check_run_record(run_dir, "search", settings or {}, described)
    restore_latest(checkpoint, ckpt_dir, "resume with the run's own flags (they are re-read from its flags.txt)")
    if chief:
        runlock.write_run_record(run_dir, "search", settings or {}, described, previous=record or {"kind": "search"})
    start_step = int(search.search_step.numpy())
    if verbose:
        print(f"resumed {run_dir} at step {start_step} (epoch {start_step // steps_per_epoch + 1})")
    return manager, start_step


def restore_latest(checkpoint: tf.train.Checkpoint, ckpt_dir: str, hint: str = "") -> None:
    """Restores the newest checkpoint in `ckpt_dir` into `checkpoint`, every variable
    required; a missing, corrupt or mismatching checkpoint is a one-line UserError."""
    latest = latest_checkpoint(ckpt_dir)
    if latest is None:
        raise UserError(f"--resume: no checkpoint in {ckpt_dir} to resume from")
    try:
        checkpoint.restore(latest).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise UserError(f"the checkpoint {latest} does not fit this run ({str(e).strip().splitlines()[0][:160]})"
                        f"{': ' + hint if hint else ''}") from None


def resume_record(run_dir: str, kind: str, settings: dict, variables, resume: bool) -> dict | None:
    """A training run's run.json: checked before a resumed run restores (one-line errors),
    written by a fresh one. Returns the record to update after the restore (`note_resumed`)."""
    described = runlock.describe_variables(variables)
    if not resume:
        runlock.write_run_record(run_dir, kind, settings, described)
        return None
    return runlock.check_run_record(run_dir, kind, settings, described) or {"kind": kind}, described


def note_resumed(run_dir: str, kind: str, settings: dict, checked) -> None:
    """After a successful restore: run.json records the versions that resumed the run."""
    if checked:
        record, described = checked
        runlock.write_run_record(run_dir, kind, settings, described, previous=record)


def fit_run(model, stream_at, step_variable, start_step: int, steps_per_epoch: int, end_epoch: int,
            callbacks, closing=(), before_segment=None, **fit_kwargs) -> None:
    """Continues `model.fit` from `start_step` to the end of `end_epoch`, one fit() call
    per segment (see fit_segments); `stream_at(step)` is the training stream from batch
    `step`, `before_segment()` runs before each fit(), and `closing` callbacks (histories)
    are closed at the end, also on failure."""
    try:
        for first, last, steps in fit_segments(start_step, steps_per_epoch, end_epoch):
            if before_segment is not None:
                before_segment()
            model.fit(stream_at(int(step_variable.numpy())), epochs=last, initial_epoch=first,
                      steps_per_epoch=steps, callbacks=callbacks, **fit_kwargs)
    finally:
        for callback in closing:
            callback.close()


def save_model(model, path: str) -> None:
    """model.save(path) through a temporary file and a rename: never a half-written model."""
    from dprime_tf.atomic import _fsync
    parent = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(parent, "." + os.path.basename(path) + ".tmp.keras")
    model.save(tmp)  # Keras wants the .keras suffix
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(parent)


class StepHistory(keras.callbacks.Callback):
    """Appends one CSV row per training step to <run>/history.csv.

    On resume from step S the rows of steps >= S (written after the last
    checkpoint by the interrupted process) are dropped first, so the file stays
    one continuous sequence of steps.

    A non-finite value is written as `nan` / `inf` / `-inf`; a cell is empty only
    where the value does not apply: `blank_unless` maps a column to the log that
    says whether it applies (batch_alpha_loss applies only when alpha_step is 1).
    """

    def __init__(self, path: str, columns, step_variable, resume_step: int = 0, flush_every: int = 1,
                 blank_unless: dict | None = None):
        super().__init__()
        self.path, self.columns = path, ["step", *columns]
        self.blank_unless = dict(blank_unless or {})
        self.step_variable = step_variable
        self.flush_every = flush_every
        self._rows = 0
        if os.path.exists(path):
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) < resume_step]
        else:
            rows = []
        out = io.StringIO()
        writer = csv.DictWriter(out, self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(path, out.getvalue())
        self._file = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._file, self.columns, extrasaction="ignore")

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        step = int(self.step_variable.numpy()) - 1  # the step just taken (0-based)
        row = {"step": step}
        for name in self.columns[1:]:
            value = logs.get(name)
            applies = name not in self.blank_unless or float(logs.get(self.blank_unless[name], 0.0)) != 0.0
            row[name] = "" if value is None or not applies else _fmt(value)
        self._writer.writerow(row)
        self._rows += 1
        if self._rows % self.flush_every == 0:
            self._file.flush()

    def on_train_end(self, logs=None):
        self._file.flush()

    def close(self):
        if not self._file.closed:
            self._file.close()


def _fmt(value) -> str:
    value = float(value)
    if not math.isfinite(value):
        return str(value)  # nan, inf, -inf: explicit, so a diverged step is visible
    return f"{value:.8g}"


def read_history(path: str) -> dict[str, np.ndarray]:
    """history.csv as float columns (empty cells become NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) if r[k] != "" else np.nan for r in rows]) for k in rows[0]}


# -- checkpoints ------------------------------------------------------------------
class StepCheckpoint(keras.callbacks.Callback):
    """Saves a tf.train checkpoint every `every` steps and at each epoch end.

    tf.train checkpoints are written atomically (the index file is renamed into
    place last), so a kill at any moment leaves the previous one usable.
    Under a multi-worker strategy every worker must save (the save all-reduces
    on-read variables summed over the replicas, and the finiteness check of the
    weights is one all-reduce); pass is_chief=False on the others, whose manager
    points at a scratch directory that is emptied after each save.
    """

    def __init__(self, manager: tf.train.CheckpointManager, step_variable, every: int, is_chief: bool = True,
                 steps_per_epoch: int | None = None):
        super().__init__()
        self.manager, self.step_variable, self.every = manager, step_variable, max(int(every), 1)
        self.is_chief = is_chief
        # With steps_per_epoch, the last step of an epoch is saved at the epoch's end only:
        # put this callback after the ones writing the epoch's files, and a kill never
        # leaves a checkpoint of an epoch's end without that epoch's files.
        self.steps_per_epoch = steps_per_epoch
        self._last = None
        self._finite = None  # FiniteWeights of the model, made at the first save

    def set_model(self, model):  # called by every fit(): the check is kept while the model is the same
        if model is not self.model:
            self._finite = None
        super().set_model(model)

    def _save(self):
        step = int(self.step_variable.numpy())
        if step != self._last:
            if self.model is not None:
                self._finite = self._finite or FiniteWeights(self.model)
                self._finite.check(step)
            self.manager.save(checkpoint_number=step)  # a collective under multi-worker strategies
            if not self.is_chief:  # a non-chief worker's copy is scratch (TF's multi-worker pattern)
                tf.io.gfile.rmtree(self.manager.directory)
            self._last = step

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.step_variable.numpy())
        if step % self.every == 0 and not (self.steps_per_epoch and step % self.steps_per_epoch == 0):
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()


_FLOATS = ("float16", "bfloat16", "float32", "float64")


class FiniteWeights:
    """Whether a model's float weights are all finite, asked of every copy of them.

    One compiled call counts the non-finite entries of each replica's own copies
    and sums the counts over the replicas (and workers): one all-reduce of one
    number, so every worker reaches the same answer, and a bad copy on one
    replica is found although a read of the variable shows another copy.
    Reading the weights one by one (`w.numpy()`) cost one eager collective per
    on-read variable under a multi-worker strategy: about 4 s of both workers'
    time at each checkpoint of a tiny search on 127.0.0.1."""

    def __init__(self, model):
        self.variables = [w for w in model.weights if w.dtype in _FLOATS]
        self.strategy = strategy = model.distribute_strategy

        def replica_count():  # one flat vector per dtype: 3 graph nodes per weight instead of 6
            flat = {}
            for w in self.variables:
                flat.setdefault(w.dtype, []).append(tf.reshape(tf.convert_to_tensor(w), [-1]))
            return tf.add_n([tf.constant(0, tf.int64)] + [
                tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(tf.concat(parts, 0))), tf.int64))
                for parts in flat.values()])

        self._count = tf.function(lambda: strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_count),
                                                          axis=None), autograph=False)

    def non_finite(self) -> list[str]:
        """[] when every copy is finite; else the paths of the non-finite weights (of this worker's copies)."""
        if int(self._count().numpy()) == 0:
            return []
        bad = [w.path for w in self.variables
               if not all(np.isfinite(np.asarray(c)).all() for c in self.strategy.experimental_local_results(w.value))]
        return bad or ["a copy on another worker"]

    def check(self, step: int) -> None:
        """A one-line Diverged instead of a checkpoint of non-finite weights: a step can
        have a finite loss and FI while its update overflows the weights (a huge learning
        rate); the next checkpoint must not replace the last good one with them."""
        bad = self.non_finite()
        if bad:
            from dprime_tf.guard import Diverged
            raise Diverged(f"step {step - 1}: {len(bad)} weight tensor(s) are not finite after it ({bad[0]}, ...); "
                           "the run stopped without saving this state (the last good checkpoint is kept): lower "
                           "--learning_rate, then --resume")


class EpochSummary(keras.callbacks.Callback):
    """Calls `fn(epoch, logs)` at each epoch end (run artifacts, one-line summary)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def on_epoch_end(self, epoch, logs=None):
        self.fn(epoch, logs or {})

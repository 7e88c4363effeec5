"""Checks every search and training setting shares: finite floats, sane ranges and
caps, tau kept representable, batches that divide across replicas, and the
settings a resumed run may not change. (condition, one-line message) lists, as
the jobs' `validate` and the spaces' `search_checks` / `train_checks` use them.

Imports neither TensorFlow nor numpy.
"""

from __future__ import annotations

import dataclasses
import math
import os

from dprime_tf.errors import UserError

# Caps: far above any real run, low enough that a typo fails in one line instead
# of exhausting memory or overflowing an int32 inside TensorFlow.
MAX_EPOCHS = 1_000_000
MAX_BATCH = 1 << 16
MAX_STEPS = 1 << 30
MAX_LAYERS = 200
MAX_CHANNELS = 4096
MAX_IMAGE_SIZE = 1024  # pixels per side of the network input (--image_size)
MAX_HIDDEN = 1 << 15  # --emsize / --nhid
MAX_BPTT = 10_000
MAX_SEED = 2 ** 31 - 1
MAX_SCHEDFREQ = 100_000
# tau shrinks by m**-schedfreq after each alpha step; float32 holds down to ~1e-38
# (normal) and tau must be able to shrink several times in a row, so the factor
# is kept >= e**-40 (~4e-18).
MAX_LOG_TAU_DIVIDER = 40.0
MAX_CONFIG_BYTES = 1 << 20  # genotype files, flagfiles, TF_CONFIG, models.config read from files

# Settings a resumed run may not change: they fix the network, the data or the
# streams its checkpoint belongs to (dprime_tf.runlock.check_run_record).
SEARCH_IDENTITY = ("dataset", "batch_size", "seed", "split", "schedfreq", "reg", "image_size", "layers",
                   "init_channels", "steps_per_epoch", "eval_batch_size", "bptt", "emsize", "nhid", "alpha_text",
                   "precision")
TRAIN_IDENTITY = ("dataset", "batch_size", "seed", "image_size", "val_fraction", "init_channels", "layers",
                  "auxiliary", "cutout", "mixed_precision", "steps_per_epoch", "bptt", "max_seq_len_delta",
                  "emsize", "nhid", "eval_batch_size", "precision")


def identity(cfg, names) -> dict:
    """{name: value} of the settings of `names` that `cfg` has."""
    return {n: getattr(cfg, n) for n in names if hasattr(cfg, n)}


def finite_checks(cfg) -> list[tuple[bool, str]]:
    """Every float setting is a finite number (inf/nan pass `> 0` checks otherwise)."""
    out = []
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            out.append((False, f"--{field.name} must be a finite number, got {value}"))
    return out


def _between(cfg, name, low, high):
    value = getattr(cfg, name, None)
    if value is None or isinstance(value, bool):
        return []
    return [(low <= value <= high, f"--{name} must be in [{low}, {high}], got {value}")]


def count_checks(cfg) -> list[tuple[bool, str]]:
    """Caps on counts and sizes shared by searches and trainings."""
    return [
        *_between(cfg, "epochs", 1, MAX_EPOCHS),
        *_between(cfg, "batch_size", 1, MAX_BATCH),
        *_between(cfg, "eval_batch_size", 1, MAX_BATCH),
        *_between(cfg, "test_batch_size", 1, MAX_BATCH),
        *_between(cfg, "steps_per_epoch", 0, MAX_STEPS),
        *_between(cfg, "checkpoint_every", 1, MAX_STEPS),
        *_between(cfg, "seed", 0, MAX_SEED),
        *_between(cfg, "layers", 1, MAX_LAYERS),
        *_between(cfg, "init_channels", 1, MAX_CHANNELS),
        *_between(cfg, "image_size", 1, MAX_IMAGE_SIZE),
        *_between(cfg, "emsize", 1, MAX_HIDDEN),
        *_between(cfg, "nhid", 1, MAX_HIDDEN),
        *_between(cfg, "bptt", 1, MAX_BPTT),
        *_between(cfg, "max_seq_len_delta", 0, MAX_BPTT),
        *_between(cfg, "verbose", 0, 2),
    ]


def search_checks(cfg) -> list[tuple[bool, str]]:
    """The search's checks beyond search_job.validate's own (call with a resolved config)."""
    m, schedfreq = cfg.threshold_multiplier, cfg.schedfreq
    log_divider = schedfreq * math.log(m) if (m > 0 and schedfreq >= 1) else 0.0
    return [
        *count_checks(cfg),
        *_between(cfg, "schedfreq", 1, MAX_SCHEDFREQ),
        (cfg.admm_freq >= 1, f"--admm_freq must be >= 1 (Z/U update every N alpha steps), got {cfg.admm_freq}"),
        (0 <= cfg.zu_ewma <= 1, f"--zu_ewma must be in [0, 1], got {cfg.zu_ewma}"),
        (cfg.weight_decay >= 0, f"--weight_decay must be >= 0, got {cfg.weight_decay}"),
        (cfg.arch_weight_decay >= 0, f"--arch_weight_decay must be >= 0, got {cfg.arch_weight_decay}"),
        (cfg.schedule != "dynamic" or log_divider <= MAX_LOG_TAU_DIVIDER,
         f"--schedfreq * ln(--threshold_multiplier) is {log_divider:.3g}, above {MAX_LOG_TAU_DIVIDER:g}: tau would "
         f"shrink by m**-schedfreq = {math.exp(-min(log_divider, 745)):.3g} per alpha step and underflow float32 "
         "to 0 (no alpha step ever again); lower --schedfreq or --threshold_multiplier"),
    ]


def train_checks(cfg) -> list[tuple[bool, str]]:
    """The training's checks beyond train_job.validate's own (call with a resolved config)."""
    return [
        *count_checks(cfg),
        (cfg.grad_clip >= 0, f"--grad_clip must be >= 0, got {cfg.grad_clip}"),
    ]


def check_replicas(batch_size: int, replicas: int, name: str = "--batch_size") -> None:
    """The global batch splits evenly across the replicas (each computes batch / replicas)."""
    if replicas > 1 and batch_size % replicas:
        raise UserError(f"{name} ({batch_size}) must be a multiple of the {replicas} replicas (the global "
                        "batch is split evenly across them)")


def epoch_files_missing(run_dir: str, epochs_done: int, alpha_hist: dict, measures: list) -> bool:
    """Whether the files of epoch `epochs_done` (alpha history row, decisiveness entry,
    genotypes/epoch_NNN.json) are missing: a kill between its end-of-epoch
    checkpoint and its files (only possible for runs made before the reordering)."""
    rows = min((len(h) for h in alpha_hist.values()), default=0)
    return (rows < epochs_done or len(measures) < epochs_done
            or not os.path.exists(os.path.join(run_dir, "genotypes", f"epoch_{epochs_done:03d}.json")))


def read_config_file(path: str, what: str, limit: int = MAX_CONFIG_BYTES) -> str:
    """A small text file (genotype, config) as UTF-8; one-line UserErrors for a file too
    large to be one, unreadable, or not UTF-8."""
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise UserError(f"{what} {path} is {size} bytes, larger than {limit} bytes: not a {what}")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}): is it the right file?") from None

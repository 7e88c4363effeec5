"""A training run of a final network from a genotype, in any search space:
genotype -> network -> fit -> model.keras + run directory.

Library entry point behind `python -m dprime_tf.train` (which maps flags to
a `TrainConfig`); tests and tuners call `run_training` directly. The space
comes from --dataset when given, else from the genotype (a recurrent genotype
trains a language model; a published name such as DARTS_V2 means the image
space unless --dataset names a text corpus); the space's trainer does the
rest (dprime_tf.spaces.cnn.training, dprime_tf.spaces.rnn.training).

This module imports TensorFlow only inside `run_training`, so the command line
can reject bad flags, genotypes and paths before TensorFlow's start-up chatter
(and its seconds of start-up time).
"""

from __future__ import annotations

import dataclasses
import os

from dprime_tf import fast_paths, runlock, spaces, validation
from dprime_tf.errors import UserError

# Training settings whose default depends on the space (None in a TrainConfig).
SPACE_DEFAULTED = ("dataset", "epochs", "batch_size", "learning_rate", "weight_decay", "grad_clip", "seed")


@dataclasses.dataclass
class TrainConfig:
    """One training run's settings. None means "the space's default" (`resolve`)."""

    genotype: str = "DARTS_V2"  # a published name, a genotype JSON file, or a search run directory
    dataset: str | None = None  # sample / ptb_sample by the genotype's space
    data_dir: str | None = None
    output_dir: str = ""
    resume: bool = False
    epochs: int | None = None
    steps_per_epoch: int = 0  # 0: one pass over the training data
    batch_size: int | None = None
    learning_rate: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    seed: int | None = None
    checkpoint_every: int = 200
    deterministic: bool = False  # op determinism, one thread per op (slower)
    verbose: int = 1
    # image space
    image_size: int | None = None
    val_fraction: float = 0.1
    init_channels: int = 36
    layers: int = 20
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2
    cutout: int = 16
    learning_rate_min: float = 0.0
    momentum: float = 0.9
    mixed_precision: bool = False  # the older spelling of precision="fp16"
    # recurrent space
    eval_batch_size: int = 10
    test_batch_size: int = 1
    bptt: int = 35
    max_seq_len_delta: int = 20
    emsize: int = 850
    nhid: int = 850
    dropout: float = 0.75
    dropouth: float = 0.25
    dropoutx: float = 0.75
    dropouti: float = 0.2
    dropoute: float = 0.1
    tar_beta: float = 1e-3
    # GPU fast paths (dprime_tf.fast_paths)
    precision: str = "float32"  # float32, bf16, fp16 (with loss scaling)
    xla: bool = False  # compile each replica's step with XLA

    @property
    def search_space(self) -> str:
        return train_space(self).name


@dataclasses.dataclass
class RNNTrainConfig(TrainConfig):
    """Deprecated alias (one release): a TrainConfig on the embedded PTB text."""

    dataset: str | None = "ptb_sample"


def train_space(cfg) -> spaces.SearchSpace:
    """The space a training run is in: its dataset's, else its genotype's."""
    if cfg.dataset:
        return spaces.for_dataset(cfg.dataset)
    return spaces.for_genotype(cfg.genotype)


def resolve(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with every unset (None) setting filled by its space's training defaults."""
    space = train_space(cfg)
    if cfg.mixed_precision and cfg.precision == "float32":
        cfg = dataclasses.replace(cfg, precision="fp16")
    return dataclasses.replace(cfg, **{k: v for k, v in space.train_defaults.items() if getattr(cfg, k) is None})


def validate(cfg: TrainConfig):
    """One-line UserErrors for values training cannot run with; returns the genotype.

    Needs no TensorFlow: checks the settings, the genotype, the dataset spec and
    the run directory (fresh, or resumable).
    """
    cfg = resolve(cfg)
    space = train_space(cfg)
    checks = [
        *validation.finite_checks(cfg),  # first: inf and nan pass range checks otherwise
        (bool(cfg.output_dir), "--output_dir is required"),
        (cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}"),
        (cfg.steps_per_epoch >= 0, f"--steps_per_epoch must be >= 0 (0 = one pass), got {cfg.steps_per_epoch}"),
        (cfg.batch_size >= 1, f"--batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.learning_rate > 0, f"--learning_rate must be > 0, got {cfg.learning_rate}"),
        (cfg.weight_decay >= 0, f"--weight_decay must be >= 0, got {cfg.weight_decay}"),
        (cfg.checkpoint_every >= 1, f"--checkpoint_every must be >= 1, got {cfg.checkpoint_every}"),
        (cfg.verbose in (0, 1, 2), f"--verbose must be 0, 1 or 2, got {cfg.verbose}"),
        *fast_paths.checks(cfg),
        (not cfg.mixed_precision or cfg.precision == "fp16",
         f"--mixed_precision means --precision=fp16, not --precision={cfg.precision}: drop one of them"),
        *space.train_checks(cfg),
        *validation.train_checks(cfg),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    space.check_dataset(cfg.dataset)
    genotypes = space.genotype_class()
    run_dir = os.path.abspath(cfg.output_dir)
    copy = os.path.join(run_dir, "genotype.json")
    if cfg.resume and not runlock.has_checkpoint_index(run_dir) and runlock.looks_like_run(run_dir):
        # killed before its first checkpoint: run_training starts it over (runlock.plan_resume)
        genotype = genotypes.load(copy if os.path.isfile(copy) else cfg.genotype)
        if cfg.genotype and genotypes.load(cfg.genotype) != genotype:
            raise UserError(f"--genotype={cfg.genotype} differs from the genotype the run trains ({copy}); "
                            "drop --genotype to resume, or start a new --output_dir")
        return genotype
    if cfg.resume:
        if not runlock.has_checkpoint_index(run_dir):
            raise UserError(runlock.no_checkpoint(run_dir))
        if not os.path.isfile(copy):
            raise UserError(f"--resume: {copy} is missing; the run directory is incomplete")
        genotype = genotypes.load(copy)
        if cfg.genotype and genotypes.load(cfg.genotype) != genotype:
            raise UserError(f"--genotype={cfg.genotype} differs from the genotype the run trains ({copy}); "
                            "drop --genotype to resume, or start a new --output_dir")
        return genotype
    if os.path.isdir(run_dir) and os.listdir(run_dir) and not runlock.restart_planned(run_dir):
        raise UserError(runlock.not_empty(run_dir))
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UserError(runlock.not_a_directory(run_dir))
    if not cfg.genotype:
        raise UserError("--genotype is required: a published name (DARTS_V2), a genotype JSON file, "
                        "or a search run directory holding genotype.json")
    return genotypes.load(cfg.genotype)


def run_training(cfg: TrainConfig, strategy=None, flags_text: str | None = None, extra_callbacks=()) -> dict:
    """Trains (or resumes) a final network; returns the summary (also <run>/summary.json)."""
    cfg = resolve(cfg)
    genotype = validate(cfg)
    if strategy is not None:
        validation.check_replicas(cfg.batch_size, strategy.num_replicas_in_sync)
    cfg = dataclasses.replace(cfg, resume=runlock.plan_resume(cfg.output_dir, cfg.resume, cfg.verbose))
    if cfg.epochs == 1 and train_space(cfg).name == "cnn" and cfg.learning_rate_min < cfg.learning_rate and cfg.verbose:
        print(f"note: a 1-epoch training runs at --learning_rate_min ({cfg.learning_rate_min:g}) throughout: the "
              "cosine steps at the top of each epoch, as in the official code (epoch e trains at cosine(e+1)); "
              "use more epochs or raise --learning_rate_min", flush=True)
    held = runlock.is_locked_here(cfg.output_dir)
    fast_paths.configure_graph_optimizer()  # DPRIME_GRAPPLER
    try:
        return train_space(cfg).train(cfg, genotype, strategy, flags_text, list(extra_callbacks))
    finally:
        if not held:  # the lock the trainer's prepare_run_dir took
            runlock.unlock_run_dir(cfg.output_dir)

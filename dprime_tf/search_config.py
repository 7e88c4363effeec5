"""A search's settings (`SearchConfig`), their space's defaults (`resolve`) and
their checks (`validate`): one-line errors for values a search cannot run with.

Imports no TensorFlow, so `python -m dprime_tf.search` rejects bad input in a
fraction of a second, before TensorFlow's start-up. dprime_tf.search_job
re-exports these names.
"""

from __future__ import annotations

import dataclasses

from dprime_tf import constants, fast_paths, spaces, validation
from dprime_tf.errors import UserError


@dataclasses.dataclass
class SearchConfig:
    """One search's settings. None means "the search space's default" (see
    `resolve`): the recurrent space's batch size, learning rates and clip
    differ from the image space's."""

    dataset: str = "sample"  # picks the search space (dprime_tf.spaces.for_dataset)
    data_dir: str | None = None
    output_dir: str = ""
    resume: bool = False
    epochs: int = 50
    until_epoch: int = 0  # stop after this epoch; schedules still span `epochs` (0: `epochs`; Hyperband)
    steps_per_epoch: int = 0  # 0: a full pass over the weight split
    batch_size: int | None = None
    seed: int = 2
    # the method
    schedule: str = "dynamic"
    split: str = "dynamic"
    reg: str = "prox"
    rho: float = constants.RHO
    schedfreq: int = constants.SCHEDFREQ
    threshold_multiplier: float = constants.THRESHOLD_MULTIPLIER
    init_alpha_threshold: float = constants.TAU_INIT  # the dynamic schedule's starting tau
    fi_ewma_beta: float | None = None  # image space 0.2; recurrent 1.0 (raw FI), as the official scripts
    admm_freq: int = constants.ADMM_FREQ
    zu_ewma: float = constants.ZU_EWMA
    # optimizers
    learning_rate: float | None = None
    learning_rate_min: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    arch_learning_rate: float | None = None
    arch_weight_decay: float | None = None
    # image space
    image_size: int | None = None
    layers: int = 8
    init_channels: int = 16
    # recurrent space
    eval_batch_size: int = 10
    bptt: int = 35
    emsize: int = 300
    nhid: int = 300
    dropout: float = 0.75
    dropouth: float = 0.25
    dropoutx: float = 0.75
    dropouti: float = 0.2
    dropoute: float = 0.0
    tar_beta: float = 1e-3
    alpha_text: str = "valid"  # the alpha stream: the validation text (official) or "train_split"
    # the run
    val_steps: int = 0  # 0: all the validation data
    checkpoint_every: int = 50
    deterministic: bool = False  # deterministic kernels, one thread per op (slower)
    verbose: int = 1
    # GPU fast paths (dprime_tf.fast_paths)
    precision: str = "float32"  # float32, bf16, fp16 (with loss scaling)
    xla: bool = False  # compile each replica's step with XLA
    recompute: bool = False  # image supernet: recompute each cell's activations in the backward pass

    @property
    def search_space(self) -> str:
        return spaces.for_dataset(self.dataset).name


@dataclasses.dataclass
class RNNSearchConfig(SearchConfig):
    """Deprecated alias (one release): a SearchConfig on the embedded PTB text."""

    dataset: str = "ptb_sample"


def resolve(cfg: SearchConfig) -> SearchConfig:
    """`cfg` with every unset (None) setting filled by its search space's default."""
    return spaces.for_dataset(cfg.dataset).resolve_search_config(cfg)


def validate(cfg: SearchConfig) -> None:
    """One-line errors for values the search cannot run with."""
    cfg = resolve(cfg)
    space = spaces.for_dataset(cfg.dataset)
    checks = [
        *validation.finite_checks(cfg),  # first: inf and nan pass range checks otherwise
        (cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}"),
        (0 <= cfg.until_epoch <= cfg.epochs, "until_epoch must be in [0, --epochs]"),
        (cfg.batch_size >= 1, f"--batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.steps_per_epoch >= 0, f"--steps_per_epoch must be >= 0 (0 = a full pass), got {cfg.steps_per_epoch}"),
        (cfg.schedule in constants.SCHEDULES, f"--schedule must be one of {', '.join(constants.SCHEDULES)}"),
        (cfg.split in constants.SPLITS, f"--split must be one of {', '.join(constants.SPLITS)}"),
        (cfg.reg in constants.REGULARIZERS, f"--reg must be one of {', '.join(constants.REGULARIZERS)}"),
        (cfg.rho >= 0, f"--rho must be >= 0, got {cfg.rho}"),
        (cfg.schedfreq >= 1, f"--schedfreq must be >= 1, got {cfg.schedfreq}"),
        (cfg.threshold_multiplier > 1.0, f"--threshold_multiplier (m) must be > 1, got {cfg.threshold_multiplier}"),
        (cfg.init_alpha_threshold > 0, f"--init_alpha_threshold (the starting tau) must be > 0, got {cfg.init_alpha_threshold}"),
        (0 < cfg.fi_ewma_beta <= 1, f"--fi_ewma_beta must be in (0, 1], got {cfg.fi_ewma_beta}"),
        (cfg.learning_rate > 0, f"--learning_rate must be > 0, got {cfg.learning_rate}"),
        # 0 freezes the alphas at their initial values (a control: the genotype is then the random start's)
        (cfg.arch_learning_rate >= 0, f"--arch_learning_rate must be >= 0, got {cfg.arch_learning_rate}"),
        (0 <= cfg.learning_rate_min <= cfg.learning_rate, f"--learning_rate_min must be in [0, --learning_rate], got {cfg.learning_rate_min}"),
        (0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}"),
        (cfg.grad_clip > 0, f"--grad_clip must be > 0, got {cfg.grad_clip}"),
        (cfg.val_steps >= 0, f"--val_steps must be >= 0, got {cfg.val_steps}"),
        (cfg.checkpoint_every >= 1, f"--checkpoint_every must be >= 1, got {cfg.checkpoint_every}"),
        *fast_paths.checks(cfg),
        *space.search_checks(cfg),
        *validation.search_checks(cfg),
        (bool(cfg.output_dir), "--output_dir is required"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    space.check_dataset(cfg.dataset)

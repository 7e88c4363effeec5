"""A complete search run: data -> supernet -> bilevel fit -> genotype + run directory.

Library entry point behind `python -m dprime_tf.search` (which maps flags to
a `SearchConfig`); keras-tuner and tests call `run_search` directly.
"""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf

from dprime_tf import plots, prime, runs
from dprime_tf.data import images
from dprime_tf.distribute import output_dirs
from dprime_tf.errors import UserError
from dprime_tf.progress import ProgressBar
from dprime_tf.search_space.cnn import SearchNetwork
from dprime_tf.searcher import STEP_LOGS, BilevelSearch


@dataclasses.dataclass
class SearchConfig:
    dataset: str = "sample"
    data_dir: str | None = None
    image_size: int | None = None
    output_dir: str = ""
    resume: bool = False
    epochs: int = 50
    until_epoch: int = 0  # stop after this epoch; schedules still span `epochs` (0: `epochs`; Hyperband)
    steps_per_epoch: int = 0  # 0: a full pass over the weight split
    batch_size: int = 64
    layers: int = 8
    init_channels: int = 16
    seed: int = 2
    schedule: str = "dynamic"
    split: str = "dynamic"
    reg: str = "prox"
    rho: float = prime.RHO
    schedfreq: int = prime.SCHEDFREQ
    threshold_multiplier: float = prime.THRESHOLD_MULTIPLIER
    fi_ewma_beta: float = prime.FI_EWMA_BETA
    learning_rate: float = 0.025
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_learning_rate: float = 3e-4
    arch_weight_decay: float = 1e-3
    admm_freq: int = prime.ADMM_FREQ
    zu_ewma: float = prime.ZU_EWMA
    val_steps: int = 0  # 0: the whole alpha split
    checkpoint_every: int = 50
    deterministic: bool = False  # deterministic kernels, one thread per op (slower)
    verbose: int = 1


def validate(cfg: SearchConfig) -> None:
    """One-line errors for values the search cannot run with."""
    if getattr(cfg, "search_space", "cnn") == "rnn":  # the recurrent (Penn Treebank) search
        from dprime_tf import search_job_rnn
        return search_job_rnn.validate(cfg)
    checks = [
        (cfg.epochs >= 1, "--epochs must be >= 1"),
        (0 <= cfg.until_epoch <= cfg.epochs, "until_epoch must be in [0, --epochs]"),
        (cfg.batch_size >= 1, "--batch_size must be >= 1"),
        (cfg.steps_per_epoch >= 0, "--steps_per_epoch must be >= 0 (0 = a full pass)"),
        (cfg.layers >= 3, "--layers must be >= 3 (the network has two reduction cells)"),
        (cfg.init_channels >= 2 and cfg.init_channels % 2 == 0, "--init_channels must be an even number >= 2"),
        (cfg.schedule in prime.SCHEDULES, f"--schedule must be one of {', '.join(prime.SCHEDULES)}"),
        (cfg.split in prime.SPLITS, f"--split must be one of {', '.join(prime.SPLITS)}"),
        (cfg.reg in prime.REGULARIZERS, f"--reg must be one of {', '.join(prime.REGULARIZERS)}"),
        (cfg.rho >= 0, "--rho must be >= 0"),
        (cfg.schedfreq >= 1, "--schedfreq must be >= 1"),
        (cfg.threshold_multiplier > 1.0, "--threshold_multiplier (m) must be > 1"),
        (0 < cfg.fi_ewma_beta <= 1, "--fi_ewma_beta must be in (0, 1]"),
        (cfg.learning_rate > 0 and cfg.arch_learning_rate > 0, "learning rates must be > 0"),
        (0 <= cfg.learning_rate_min <= cfg.learning_rate, "--learning_rate_min must be in [0, --learning_rate]"),
        (cfg.grad_clip > 0, "--grad_clip must be > 0"),
        (cfg.checkpoint_every >= 1, "--checkpoint_every must be >= 1"),
        (cfg.image_size is None or (cfg.image_size >= 8 and cfg.image_size % 4 == 0),
         "--image_size must be a multiple of 4, >= 8"),
        (bool(cfg.output_dir), "--output_dir is required"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _summary_line(epoch, logs, genotype, alpha_steps, steps):
    g = lambda kind: " ".join(f"{op}<-{i}" for op, i in getattr(genotype, kind))  # noqa: E731
    val = f" val_acc {logs['val_accuracy']:.4f}" if "val_accuracy" in logs else ""
    return (f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f} acc {logs.get('accuracy', float('nan')):.4f}"
            f"{val} alpha steps {alpha_steps}/{steps}\n  normal: {g('normal')}\n  reduce: {g('reduce')}")


def run_search(cfg: SearchConfig, strategy: tf.distribute.Strategy | None = None,
               flags_text: str | None = None, extra_callbacks=()) -> dict:
    """Runs (or resumes) a search; returns a summary dict (also in <run>/summary.json)."""
    if getattr(cfg, "search_space", "cnn") == "rnn":  # the recurrent (Penn Treebank) search
        from dprime_tf.search_job_rnn import run_rnn_search
        return run_rnn_search(cfg, strategy, flags_text, extra_callbacks)
    validate(cfg)
    strategy = strategy or tf.distribute.get_strategy()
    with output_dirs(strategy, cfg.output_dir, cfg.resume) as (chief, run_dir, worker_dir):
        return _run_search(cfg, strategy, chief, run_dir, worker_dir, flags_text, extra_callbacks)


def _run_search(cfg, strategy, chief, run_dir, worker_dir, flags_text, extra_callbacks):
    if chief and flags_text is not None:
        runs.write_flags(run_dir, flags_text)
    started = time.time()

    data = images.load_images(cfg.dataset, cfg.data_dir, cfg.image_size, split="train")
    portion = prime.weight_portion(cfg.split, cfg.schedfreq)
    weight_idx, alpha_idx = images.split_indices(len(data.labels), portion)
    per_pass = images.steps_per_pass(len(weight_idx), cfg.batch_size)
    if per_pass < 1 or images.steps_per_pass(len(alpha_idx), cfg.batch_size) < 1:
        raise UserError(f"--batch_size {cfg.batch_size} is larger than a split of the {len(data.labels)} "
                        f"images ({len(weight_idx)} weight / {len(alpha_idx)} alpha): use a smaller --batch_size")
    steps_per_epoch = min(cfg.steps_per_epoch, per_pass) if cfg.steps_per_epoch else per_pass
    image_size = data.images.shape[1]

    if cfg.deterministic:
        make_deterministic()
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        net = SearchNetwork(cfg.init_channels, cfg.layers, data.num_classes, image_size=image_size)
        search = BilevelSearch(
            net, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, schedule=cfg.schedule,
            regularizer=cfg.reg, rho=cfg.rho, schedfreq=cfg.schedfreq,
            threshold_multiplier=cfg.threshold_multiplier, fi_ewma_beta=cfg.fi_ewma_beta,
            learning_rate=cfg.learning_rate, learning_rate_min=cfg.learning_rate_min, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, arch_learning_rate=cfg.arch_learning_rate,
            arch_weight_decay=cfg.arch_weight_decay, admm_freq=cfg.admm_freq, zu_ewma=cfg.zu_ewma)
    manager, start_step = runs.search_checkpoint(search, run_dir, chief, worker_dir, cfg.resume, cfg.verbose,
                                                 steps_per_epoch)
    end_epoch = cfg.until_epoch or cfg.epochs
    if start_step >= steps_per_epoch * end_epoch:
        raise UserError(f"{run_dir} already finished its {end_epoch} epochs; raise --epochs to continue it")

    alpha_path = os.path.join(run_dir, "alpha_history.npz")
    alpha_hist = dict(np.load(alpha_path)) if (cfg.resume and os.path.exists(alpha_path)) else {}
    last_logs = {}

    def on_epoch_end(epoch, logs):
        last_logs.update(epoch=epoch + 1, **{k: float(logs[k]) for k in ("val_loss", "val_accuracy") if k in logs})
        weights = net.mixing_weights()
        genotype = net.genotype()
        for kind in ("normal", "reduce"):
            prev = alpha_hist.get(kind, np.zeros((0,) + weights[kind].shape))[:epoch]
            alpha_hist[kind] = np.concatenate([prev, weights[kind][None]], 0)
        if chief:
            runs.atomic_savez(alpha_path, **alpha_hist)
            runs.atomic_write(os.path.join(run_dir, "genotypes", f"epoch_{epoch + 1:03d}.json"), genotype.to_json())
            _write_plots(run_dir, net, alpha_hist, genotype)
        if cfg.verbose:
            print(_summary_line(epoch, logs, genotype, int(search.alpha_steps.numpy()),
                                int(search.search_step.numpy())), flush=True)

    history_cb = runs.StepHistory(os.path.join(run_dir if chief else worker_dir, "history.csv"),
                                  STEP_LOGS, search.search_step, resume_step=start_step)
    callbacks = [history_cb, runs.StepCheckpoint(manager, search.search_step, cfg.checkpoint_every, is_chief=chief),
                 runs.EpochSummary(on_epoch_end), *extra_callbacks]
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch"))
    if cfg.verbose == 1 and chief:  # a bar with the numbers that matter, not every log
        callbacks.append(ProgressBar(("loss", "accuracy", "alpha_steps", "fi_ewma", "tau"), steps_per_epoch,
                                     cfg.epochs))

    eval_data = images.make_eval_dataset(data, cfg.batch_size, alpha_idx)
    val_steps = cfg.val_steps or None
    segments = runs.fit_segments(start_step, steps_per_epoch, end_epoch)
    try:
        for first, last, steps in segments:
            done = int(search.search_step.numpy())
            search.set_alpha_stream(images.make_stream(data, alpha_idx, cfg.batch_size, cfg.seed + 1,
                                                       start_batch=int(search.alpha_steps.numpy())))
            weight_stream = images.make_stream(data, weight_idx, cfg.batch_size, cfg.seed, start_batch=done)
            search.fit(weight_stream, epochs=last, initial_epoch=first, steps_per_epoch=steps,
                       validation_data=eval_data, validation_steps=val_steps, callbacks=callbacks,
                       verbose=2 if (cfg.verbose == 2 and chief) else 0)
    finally:
        history_cb.close()

    genotype = net.genotype()
    summary = {
        "genotype": genotype.to_dict(),
        "steps": int(search.search_step.numpy()),
        "alpha_steps": int(search.alpha_steps.numpy()),
        "alpha_step_rate": float(search.alpha_steps.numpy()) / max(int(search.search_step.numpy()), 1),
        "fi_ewma": float(search.fi_ewma.numpy()), "tau": float(search.tau.numpy()),
        "wall_seconds_this_process": round(time.time() - started, 1),
        "network_weights": int(sum(np.prod(w.shape) for w in net.trainable_weights)),
        "dataset": data.name, "num_classes": data.num_classes, "image_size": int(image_size),
        "weight_images": len(weight_idx), "alpha_images": len(alpha_idx), "steps_per_epoch": steps_per_epoch,
        # the supernet on the alpha split at the end of the last epoch run (keras-tuner's objective)
        "epochs_done": int(search.search_step.numpy()) // steps_per_epoch,
        **{k: v for k, v in last_logs.items() if k.startswith("val_")},
    }
    if chief:
        runs.atomic_savez(os.path.join(run_dir, "alphas.npz"), alpha_normal=net.alpha_normal.numpy(),
                          alpha_reduce=net.alpha_reduce.numpy())
        runs.atomic_write(os.path.join(run_dir, "genotype.json"), genotype.to_json())
        runs.atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
        _write_plots(run_dir, net, alpha_hist, genotype, history=True)
    summary["run_dir"] = run_dir
    return summary


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


def _write_plots(run_dir, net, alpha_hist, genotype, history=False):
    pdir = os.path.join(run_dir, "plots")
    for kind in ("normal", "reduce"):
        if kind in alpha_hist and len(alpha_hist[kind]):
            plots.plot_alpha_history(os.path.join(pdir, f"alphas_{kind}.png"), alpha_hist[kind], net.primitives,
                                     f"{kind} cell: mixing weights per edge", x=np.arange(1, len(alpha_hist[kind]) + 1))
        plots.plot_cell(os.path.join(pdir, f"cell_{kind}.png"), getattr(genotype, kind),
                        getattr(genotype, kind + "_concat"), f"{kind} cell")
    hist_path = os.path.join(run_dir, "history.csv")
    if history and os.path.exists(hist_path):
        h = runs.read_history(hist_path)
        if h:
            plots.plot_schedule(os.path.join(pdir, "schedule.png"), h)

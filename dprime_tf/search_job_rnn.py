"""The recurrent-cell search (Penn Treebank; SPEC section 6): text -> supernet ->
bilevel fit -> recurrent genotype + run directory.

`python -m dprime_tf.search --dataset=ptb_sample|ptb|textdir:<path>` lands
here (through `search_job.run_search`). The loop is the CNN search's
`BilevelSearch` (dynamic schedule, dynamic split, prox/ADMM regularizer,
checkpoints and resume); only the data, the supernet and the artifacts
differ.

Differences from the CNN search, as DARTS's recurrent search:
- weights: plain SGD (no momentum), lr 20 kept constant (learning_rate_min
  defaults to learning_rate), coupled weight decay 5e-7, clip 0.25, and TAR
  (beta 1e-3) added to the weight loss; alpha: Adam lr 3e-3, betas
  (0.9, 0.999) (PyTorch's defaults, which DARTS's RNN architect uses),
  weight decay 1e-3;
- data: the training text is split by position (the first part of the tokens
  trains w, the rest is the alpha stream); weight windows have DARTS's
  variable length (bptt, or bptt/2 with probability 0.05), alpha windows
  bptt; validation perplexity is measured on the corpus's valid text with
  batch 10 (DARTS's eval_batch_size);
- an epoch is one pass of the weight stream as drawn for pass 0 (passes
  differ by a few windows; the stream runs on across epochs and zeroes the
  hidden state at each pass start). Not reproduced: DARTS scales the
  learning rate by seq_len/bptt for the 5% half-length windows.

Run directory: as the CNN search (flags.txt, history.csv, checkpoints/,
tensorboard/, genotype.json, genotypes/epoch_NNN.json, alphas.npz,
alpha_history.npz with key "recurrent" (epochs, 36, 5), summary.json,
plots/alphas_recurrent.png, plots/cell_recurrent.png, plots/schedule.png),
plus vocab.txt and initial_validation.json (the supernet's validation
perplexity before the search).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time

from dprime_tf import prime
from dprime_tf.errors import UserError
from dprime_tf.train_job_rnn import is_text_dataset, language_model_checks  # noqa: F401  (search.py asks it which search to run)

ARCH_BETA_1 = 0.9  # PyTorch Adam's default, used by DARTS's recurrent architect

# The recurrent search's values of the flags it shares with the CNN search (SPEC section 6).
RNN_DEFAULTS = {"batch_size": 256, "learning_rate": 20.0, "momentum": 0.0, "weight_decay": 5e-7,
                "grad_clip": 0.25, "arch_learning_rate": 3e-3, "arch_weight_decay": 1e-3}


@dataclasses.dataclass
class RNNSearchConfig:
    search_space: str = "rnn"
    dataset: str = "ptb_sample"
    data_dir: str | None = None
    output_dir: str = ""
    resume: bool = False
    epochs: int = 50
    until_epoch: int = 0  # stop after this epoch; schedules still span `epochs` (0: `epochs`)
    steps_per_epoch: int = 0  # 0: one pass of the weight stream
    batch_size: int = 256
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
    seed: int = 2
    schedule: str = "dynamic"
    split: str = "dynamic"
    reg: str = "prox"
    rho: float = prime.RHO
    schedfreq: int = prime.SCHEDFREQ
    threshold_multiplier: float = prime.THRESHOLD_MULTIPLIER
    fi_ewma_beta: float = prime.FI_EWMA_BETA
    learning_rate: float = 20.0
    learning_rate_min: float | None = None  # None: = learning_rate (constant, as DARTS)
    momentum: float = 0.0
    weight_decay: float = 5e-7
    grad_clip: float = 0.25
    arch_learning_rate: float = 3e-3
    arch_weight_decay: float = 1e-3
    admm_freq: int = prime.ADMM_FREQ
    zu_ewma: float = prime.ZU_EWMA
    val_steps: int = 0  # 0: the whole valid text
    checkpoint_every: int = 50
    deterministic: bool = False  # deterministic kernels, one thread per op (slower)
    verbose: int = 1


def config_from_flags(FLAGS) -> RNNSearchConfig:
    """The config from absl flags; shared flags not given take the recurrent defaults
    (written back into FLAGS, so that flags.txt records what the run used)."""
    from dprime_tf.cli import default_run_dir
    for name, value in RNN_DEFAULTS.items():
        if name in FLAGS and not FLAGS[name].present:
            FLAGS[name].value = value
    if "learning_rate_min" in FLAGS and not FLAGS["learning_rate_min"].present:
        FLAGS["learning_rate_min"].value = FLAGS.learning_rate
    values = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(RNNSearchConfig)
              if f.name in FLAGS and f.name != "search_space"}
    values["output_dir"] = FLAGS.output_dir or default_run_dir("search")
    return RNNSearchConfig(**values)


def validate(cfg: RNNSearchConfig) -> None:
    """One-line errors for values the recurrent search cannot run with."""
    lr_min = cfg.learning_rate if cfg.learning_rate_min is None else cfg.learning_rate_min
    checks = [
        (is_text_dataset(cfg.dataset), f"--dataset={cfg.dataset} is not a text corpus "
                                       "(use ptb_sample, ptb or textdir:<path>)"),
        (cfg.epochs >= 1, "--epochs must be >= 1"),
        (0 <= cfg.until_epoch <= cfg.epochs, "until_epoch must be in [0, --epochs]"),
        (cfg.batch_size >= 1 and cfg.eval_batch_size >= 1, "--batch_size and --eval_batch_size must be >= 1"),
        (cfg.steps_per_epoch >= 0, "--steps_per_epoch must be >= 0 (0 = a full pass)"),
        (cfg.bptt >= 2, "--bptt must be >= 2"),
        *language_model_checks(cfg),
        (cfg.schedule in prime.SCHEDULES, f"--schedule must be one of {', '.join(prime.SCHEDULES)}"),
        (cfg.split in prime.SPLITS, f"--split must be one of {', '.join(prime.SPLITS)}"),
        (cfg.reg in prime.REGULARIZERS, f"--reg must be one of {', '.join(prime.REGULARIZERS)}"),
        (cfg.rho >= 0, "--rho must be >= 0"),
        (cfg.schedfreq >= 1, "--schedfreq must be >= 1"),
        (cfg.threshold_multiplier > 1.0, "--threshold_multiplier (m) must be > 1"),
        (0 < cfg.fi_ewma_beta <= 1, "--fi_ewma_beta must be in (0, 1]"),
        (cfg.learning_rate > 0 and cfg.arch_learning_rate > 0, "learning rates must be > 0"),
        (0 <= lr_min <= cfg.learning_rate, "--learning_rate_min must be in [0, --learning_rate]"),
        (0 <= cfg.momentum < 1, "--momentum must be in [0, 1)"),
        (cfg.grad_clip > 0, "--grad_clip must be > 0"),
        (cfg.val_steps >= 0, "--val_steps must be >= 0"),
        (cfg.checkpoint_every >= 1, "--checkpoint_every must be >= 1"),
        (bool(cfg.output_dir), "--output_dir is required"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _summary_line(epoch, logs, genotype, alpha_steps, steps):
    g = " ".join(f"{op}<-{i}" for op, i in genotype.recurrent)
    val = f" val_ppl {logs['val_perplexity']:.2f}" if "val_perplexity" in logs else ""
    return (f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f} ppl {logs.get('perplexity', float('nan')):.2f}"
            f"{val} alpha steps {alpha_steps}/{steps}\n  recurrent: {g}")


def run_rnn_search(cfg: RNNSearchConfig, strategy=None, flags_text: str | None = None, extra_callbacks=()) -> dict:
    """Runs (or resumes) a recurrent search; returns a summary dict (also in <run>/summary.json)."""
    import tensorflow as tf

    from dprime_tf.distribute import output_dirs
    from dprime_tf.data import text
    validate(cfg)
    strategy = strategy or tf.distribute.get_strategy()
    corpus = text.load_corpus(cfg.dataset, cfg.data_dir)  # bad data fails before the run directory exists
    streams = _split_and_check(cfg, corpus, strategy.num_replicas_in_sync)
    with output_dirs(strategy, cfg.output_dir, cfg.resume) as (chief, run_dir, worker_dir):
        return _run(cfg, strategy, chief, run_dir, worker_dir, flags_text, extra_callbacks, corpus, *streams)


def _split_and_check(cfg, corpus, replicas):
    """(weight token ids, alpha token ids): the training text split by position; UserError
    when a stream is too short for its batch size or the batches do not split between replicas."""
    from dprime_tf.data.images import split_indices
    if cfg.batch_size % replicas or cfg.eval_batch_size % replicas:
        raise UserError(f"--batch_size ({cfg.batch_size}) and --eval_batch_size ({cfg.eval_batch_size}) must be "
                        f"multiples of the {replicas} replicas")
    weight_pos, alpha_pos = split_indices(len(corpus.train), prime.weight_portion(cfg.split, cfg.schedfreq))
    weight_ids, alpha_ids = corpus.train[weight_pos], corpus.train[alpha_pos]
    for name, ids, batch in (("weight", weight_ids, cfg.batch_size), ("alpha", alpha_ids, cfg.batch_size),
                             ("validation", corpus.valid, cfg.eval_batch_size)):
        if len(ids) // batch < 2:
            raise UserError(f"the {name} text ({len(ids)} tokens) is too short for batch size {batch}: "
                            "each row needs at least 2 tokens; use a smaller --batch_size/--eval_batch_size")
    return weight_ids, alpha_ids


def _run(cfg, strategy, chief, run_dir, worker_dir, flags_text, extra_callbacks, corpus, weight_ids, alpha_ids):
    import keras
    import numpy as np
    import tensorflow as tf

    from dprime_tf import runs
    from dprime_tf.data import text
    from dprime_tf.progress import ProgressBar
    from dprime_tf.search_space.rnn import RecurrentSearchNetwork, count_parameters
    from dprime_tf.searcher import STEP_LOGS, BilevelSearch

    if chief and flags_text is not None:
        runs.write_flags(run_dir, flags_text)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    started = time.time()

    columns = len(weight_ids) // cfg.batch_size
    per_pass = text.windows_per_pass(columns, cfg.bptt, "search", cfg.seed, 0)
    steps_per_epoch = min(cfg.steps_per_epoch, per_pass) if cfg.steps_per_epoch else per_pass
    lr_min = cfg.learning_rate if cfg.learning_rate_min is None else cfg.learning_rate_min

    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        net = RecurrentSearchNetwork(
            corpus.vocab_size, cfg.emsize, cfg.nhid, cfg.dropout, cfg.dropouth, cfg.dropoutx, cfg.dropouti,
            cfg.dropoute, cfg.tar_beta, seed=cfg.seed,
            batch_sizes={"weight": cfg.batch_size, "alpha": cfg.batch_size, "eval": cfg.eval_batch_size})
        search = BilevelSearch(
            net, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, schedule=cfg.schedule,
            regularizer=cfg.reg, rho=cfg.rho, schedfreq=cfg.schedfreq,
            threshold_multiplier=cfg.threshold_multiplier, fi_ewma_beta=cfg.fi_ewma_beta,
            learning_rate=cfg.learning_rate, learning_rate_min=lr_min, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, arch_learning_rate=cfg.arch_learning_rate,
            arch_beta_1=ARCH_BETA_1, arch_weight_decay=cfg.arch_weight_decay, admm_freq=cfg.admm_freq,
            zu_ewma=cfg.zu_ewma)
    manager, start_step = runs.search_checkpoint(search, run_dir, chief, worker_dir, cfg.resume, cfg.verbose,
                                                 steps_per_epoch)
    end_epoch = cfg.until_epoch or cfg.epochs
    if start_step >= steps_per_epoch * end_epoch:
        raise UserError(f"{run_dir} already finished its {end_epoch} epochs; raise --epochs to continue it")

    eval_data = text.make_eval_dataset(corpus.valid, cfg.eval_batch_size, cfg.bptt)
    if cfg.val_steps:
        eval_data = eval_data.take(cfg.val_steps)

    def validation_perplexity():
        logs = search.evaluate(eval_data, verbose=0, return_dict=True)
        return float(math.exp(logs["loss"]))

    initial_path = os.path.join(run_dir, "initial_validation.json")
    if not cfg.resume:
        with _calibrated_batch_norm(net, strategy, text.make_stream(weight_ids, cfg.batch_size, cfg.bptt, "search",
                                                                    cfg.seed)):
            initial = {"val_perplexity": validation_perplexity()}
        if chief:
            runs.atomic_write_json(initial_path, initial)
            runs.atomic_write(os.path.join(run_dir, "vocab.txt"), "".join(w + "\n" for w in corpus.vocab))
        if cfg.verbose:
            print(f"validation perplexity before the search: {initial['val_perplexity']:.2f}", flush=True)
    else:
        import json
        initial = json.load(open(initial_path)) if os.path.exists(initial_path) else {}

    alpha_path = os.path.join(run_dir, "alpha_history.npz")
    alpha_hist = dict(np.load(alpha_path)) if (cfg.resume and os.path.exists(alpha_path)) else {}

    def on_epoch_end(epoch, logs):
        weights = net.mixing_weights()["recurrent"]
        genotype = net.genotype()
        prev = alpha_hist.get("recurrent", np.zeros((0,) + weights.shape))[:epoch]
        alpha_hist["recurrent"] = np.concatenate([prev, weights[None]], 0)
        if chief:
            runs.atomic_savez(alpha_path, **alpha_hist)
            runs.atomic_write(os.path.join(run_dir, "genotypes", f"epoch_{epoch + 1:03d}.json"), genotype.to_json())
            _write_plots(run_dir, net, alpha_hist, genotype)
        if cfg.verbose:
            print(_summary_line(epoch, logs, genotype, int(search.alpha_steps.numpy()),
                                int(search.search_step.numpy())), flush=True)

    columns_logged = [c.replace("accuracy", "perplexity") for c in STEP_LOGS]
    history_cb = runs.StepHistory(os.path.join(run_dir if chief else worker_dir, "history.csv"),
                                  columns_logged, search.search_step, resume_step=start_step)
    callbacks = [history_cb, runs.StepCheckpoint(manager, search.search_step, cfg.checkpoint_every, is_chief=chief),
                 runs.EpochSummary(on_epoch_end), *extra_callbacks]
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch"))
    if cfg.verbose == 1 and chief:  # a bar with the numbers that matter, not every log
        callbacks.append(ProgressBar(("loss", "perplexity", "alpha_steps", "fi_ewma", "tau"), steps_per_epoch,
                                     cfg.epochs))

    segments = runs.fit_segments(start_step, steps_per_epoch, end_epoch)
    try:
        for first, last, steps in segments:
            done = int(search.search_step.numpy())
            search.set_alpha_stream(text.make_stream(alpha_ids, cfg.batch_size, cfg.bptt, "fixed", cfg.seed + 1,
                                                     start_batch=int(search.alpha_steps.numpy())))
            weight_stream = text.make_stream(weight_ids, cfg.batch_size, cfg.bptt, "search", cfg.seed,
                                             start_batch=done)
            search.fit(weight_stream, epochs=last, initial_epoch=first, steps_per_epoch=steps,
                       validation_data=eval_data, callbacks=callbacks,
                       verbose=2 if (cfg.verbose == 2 and chief) else 0)
    finally:
        history_cb.close()

    final_ppl = validation_perplexity()
    genotype = net.genotype()
    steps_done = int(search.search_step.numpy())
    summary = {
        "search_space": "rnn",
        "genotype": genotype.to_dict(),
        "steps": steps_done,
        "alpha_steps": int(search.alpha_steps.numpy()),
        "alpha_step_rate": float(search.alpha_steps.numpy()) / max(steps_done, 1),
        "fi_ewma": float(search.fi_ewma.numpy()), "tau": float(search.tau.numpy()),
        "val_perplexity_initial": initial.get("val_perplexity"),
        "val_perplexity": final_ppl,
        "wall_seconds_this_process": round(time.time() - started, 1),
        "network_weights": count_parameters(net),
        "dataset": corpus.name, "vocab_size": corpus.vocab_size,
        "weight_tokens": int(len(weight_ids)), "alpha_tokens": int(len(alpha_ids)),
        "valid_tokens": int(len(corpus.valid)), "steps_per_epoch": steps_per_epoch,
        "epochs_done": steps_done // steps_per_epoch,
    }
    if chief:
        runs.atomic_savez(os.path.join(run_dir, "alphas.npz"), alpha=net.alpha.numpy())
        runs.atomic_write(os.path.join(run_dir, "genotype.json"), genotype.to_json())
        runs.atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
        _write_plots(run_dir, net, alpha_hist, genotype, history=True)
    if cfg.verbose:
        print(f"validation perplexity: {summary['val_perplexity_initial'] or float('nan'):.2f} before, "
              f"{final_ppl:.2f} after", flush=True)
    summary["run_dir"] = run_dir
    return summary


@contextlib.contextmanager
def _calibrated_batch_norm(net, strategy, stream):
    """Batch norm's running statistics measured on one training window, restored on exit.

    They start at mean 0 / variance 1, which the un-normalized node sums of an
    untrained cell do not match: in inference mode its recurrence then blows up,
    so the perplexity "before the search" would be meaningless. One forward pass
    in training mode (no weight update; it carries no hidden state over) sets
    them (momentum 0.1 at 9 uses per time step forgets the start within a
    step); restoring them afterwards leaves the search's own start untouched.
    """
    import tensorflow as tf
    saved = [net.bn[k].numpy() for k in ("mean", "var")]
    batch = next(iter(strategy.experimental_distribute_dataset(stream)))

    def forward(b):
        h0 = tf.zeros(tf.stack([tf.shape(b["x"])[0], net.nhid]))
        return net.window_terms(b, h0, True, "weight")[0]["loss_sum"]

    strategy.run(forward, args=(batch,))
    try:
        yield
    finally:
        for k, value in zip(("mean", "var"), saved):
            net.bn[k].assign(value)


def _write_plots(run_dir, net, alpha_hist, genotype, history=False):
    import numpy as np

    from dprime_tf import plots, runs
    pdir = os.path.join(run_dir, "plots")
    if len(alpha_hist.get("recurrent", ())):
        h = alpha_hist["recurrent"]
        plots.plot_alpha_history(os.path.join(pdir, "alphas_recurrent.png"), h, net.primitives,
                                 "recurrent cell: mixing weights per edge", x=np.arange(1, len(h) + 1))
    plots.plot_recurrent_cell(os.path.join(pdir, "cell_recurrent.png"), genotype, "recurrent cell")
    hist_path = os.path.join(run_dir, "history.csv")
    if history and os.path.exists(hist_path):
        h = runs.read_history(hist_path)
        if h:
            plots.plot_schedule(os.path.join(pdir, "schedule.png"), h)

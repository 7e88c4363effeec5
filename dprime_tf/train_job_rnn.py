"""Training a final recurrent language model from a genotype (DARTS's rnn/train.py).

Library entry point behind `python -m dprime_tf.train_rnn`.

Recipe (DARTS, SPEC section 7 "PTB"): embedding/hidden 850, batch 64, plain
SGD lr 20 with the learning rate scaled by seq_len / bptt for every window,
coupled weight decay 8e-7, gradient clip 0.25, TAR beta 1e-3, dropouts
output 0.75 / hidden 0.25 / x 0.75 / input 0.2 / embedding 0.1, windows of
DARTS's random lengths (bptt, or bptt/2 with probability 0.05, then
N(., 5) clipped to [5, bptt + 20]). Validation perplexity on the valid text
after every epoch (batch 10); the best model is kept; at the end the test
text is scored with it (batch 1, as DARTS). Not reproduced: DARTS's switch
to averaged SGD (NT-ASGD) when validation stalls, and its thousands of epochs.

Run directory:
    flags.txt, genotype.json, vocab.txt
    history.csv            one row per step: step, loss, perplexity, lr, seq_len, grad_norm
    checkpoints/           weights, optimizer, hidden state, step (resume)
    tensorboard/
    best.json              the best validation perplexity so far and its epoch
    model.keras            the best model (vocabulary and genotype in its config)
    summary.json           validation / test perplexity, parameters, wall time
    plots/cell_recurrent.png
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

from dprime_tf.errors import UserError
from dprime_tf.genotype_rnn import RecurrentGenotype
from dprime_tf.spaces.rnn import is_text_dataset, language_model_checks

STEP_LOGS = ("loss", "perplexity", "batch_loss", "lr", "seq_len", "grad_norm")


@dataclasses.dataclass
class RNNTrainConfig:
    genotype: str = "DARTS_V2"  # a published name, a genotype JSON file, or a search run directory
    dataset: str = "ptb_sample"
    data_dir: str | None = None
    output_dir: str = ""
    resume: bool = False
    epochs: int = 8000
    steps_per_epoch: int = 0  # 0: one pass of the training text
    batch_size: int = 64
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
    learning_rate: float = 20.0
    weight_decay: float = 8e-7
    grad_clip: float = 0.25
    seed: int = 1267
    checkpoint_every: int = 200
    verbose: int = 1


def validate(cfg: RNNTrainConfig) -> RecurrentGenotype:
    """One-line errors for values training cannot run with; returns the genotype."""
    checks = [
        (is_text_dataset(cfg.dataset), f"--dataset={cfg.dataset} is not a text corpus "
                                       "(use ptb_sample, ptb or textdir:<path>)"),
        (cfg.epochs >= 1, "--epochs must be >= 1"),
        (cfg.steps_per_epoch >= 0, "--steps_per_epoch must be >= 0 (0 = a full pass)"),
        (min(cfg.batch_size, cfg.eval_batch_size, cfg.test_batch_size) >= 1,
         "--batch_size, --eval_batch_size and --test_batch_size must be >= 1"),
        (cfg.bptt >= 2, "--bptt must be >= 2"),
        (cfg.max_seq_len_delta >= 0, "--max_seq_len_delta must be >= 0"),
        *language_model_checks(cfg),
        (cfg.learning_rate > 0, "--learning_rate must be > 0"),
        (cfg.weight_decay >= 0, "--weight_decay must be >= 0"),
        (cfg.grad_clip > 0, "--grad_clip must be > 0"),
        (cfg.checkpoint_every >= 1, "--checkpoint_every must be >= 1"),
        (bool(cfg.output_dir), "--output_dir is required"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return RecurrentGenotype.load(cfg.genotype)


def _trainer_class():
    import keras
    import tensorflow as tf

    from dprime_tf.optimizers import CoupledSGD
    from dprime_tf.search_space.rnn import HiddenStates

    class LanguageModelTrainer(keras.Model):
        """fit() for a recurrent LM: carries the hidden state across windows, NLL + TAR,
        clip, SGD with the learning rate scaled by seq_len / bptt (DARTS)."""

        def __init__(self, model, batch_size, bptt, learning_rate, weight_decay, grad_clip, **kwargs):
            super().__init__(**kwargs)
            self.lm, self.bptt, self.base_lr, self.grad_clip = model, int(bptt), float(learning_rate), float(grad_clip)
            self.states = HiddenStates(self, {"weight": batch_size}, model.nhid)
            self.step_counter = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False,
                                                name="step")
            self.loss_tracker = keras.metrics.Mean(name="loss")
            optimizer = CoupledSGD(learning_rate, momentum=0.0, l2=weight_decay)
            optimizer.build(model.trainable_weights)
            self.compile(optimizer=optimizer)
            self.built = True

        @property
        def metrics(self):
            return [self.loss_tracker]

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            return  # built in __init__

        def train_step(self, data):
            weights = self.lm.trainable_weights
            h0 = self.states.read("weight", data["reset"], tf.shape(data["x"])[0])
            with tf.GradientTape() as tape:
                terms, h = self.lm.window_terms(data, h0, True, "weight")
                loss = terms["loss_sum"] / tf.cast(terms["count"], tf.float32)
                objective = loss + terms.get("penalty", 0.0)
            self.states.write("weight", h)
            grads, norm = tf.clip_by_global_norm(tape.gradient(objective, weights), self.grad_clip)
            seq_len = tf.cast(data["length"][0], tf.float32)
            lr = self.base_lr * seq_len / self.bptt
            self.optimizer.learning_rate.assign(lr)
            self.optimizer.apply(grads, weights)
            self.step_counter.assign_add(1)
            self.loss_tracker.update_state(loss)
            mean = self.loss_tracker.result()
            return {"loss": mean, "perplexity": tf.exp(mean), "batch_loss": loss, "lr": lr, "seq_len": seq_len,
                    "grad_norm": norm}

    return LanguageModelTrainer


def run_rnn_training(cfg: RNNTrainConfig, flags_text: str | None = None, extra_callbacks=()) -> dict:
    """Trains (or resumes) a recurrent LM; returns a summary dict (also in <run>/summary.json)."""
    genotype = validate(cfg)
    import keras
    import tensorflow as tf

    from dprime_tf import plots, runs
    from dprime_tf.data import text
    from dprime_tf.networks.rnn import PerplexityEvaluator, RNNModel, count_parameters

    started = time.time()
    corpus = text.load_corpus(cfg.dataset, cfg.data_dir)  # bad data fails before the run directory exists
    for name, ids, batch in (("training", corpus.train, cfg.batch_size),
                             ("validation", corpus.valid, cfg.eval_batch_size)):
        if len(ids) // batch < 2:
            raise UserError(f"the {name} text ({len(ids)} tokens) is too short for batch size {batch}: "
                            "use a smaller batch size")
    run_dir = runs.prepare_run_dir(cfg.output_dir, cfg.resume)
    if flags_text is not None:
        runs.write_flags(run_dir, flags_text)
    columns = len(corpus.train) // cfg.batch_size
    per_pass = text.windows_per_pass(columns, cfg.bptt, "train", cfg.seed, 0, cfg.max_seq_len_delta)
    steps_per_epoch = min(cfg.steps_per_epoch, per_pass) if cfg.steps_per_epoch else per_pass

    keras.utils.set_random_seed(cfg.seed)
    model = RNNModel(corpus.vocab_size, genotype, cfg.emsize, cfg.nhid, cfg.dropout, cfg.dropouth, cfg.dropoutx,
                     cfg.dropouti, cfg.dropoute, cfg.tar_beta, vocab=corpus.vocab, seed=cfg.seed)
    trainer = _trainer_class()(model, cfg.batch_size, cfg.bptt, cfg.learning_rate, cfg.weight_decay, cfg.grad_clip)
    # Every variable by position (weights, the hidden state, the step counter, optimizer state).
    checkpoint = tf.train.Checkpoint(variables=list(trainer.weights), optimizer=list(trainer.optimizer.variables))
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(run_dir, "checkpoints"), max_to_keep=2)
    best_path = os.path.join(run_dir, "best.json")
    best = {"val_perplexity": None, "epoch": 0}
    start_step = 0
    if cfg.resume:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        start_step = int(trainer.step_counter.numpy())
        if os.path.exists(best_path):
            with open(best_path) as f:
                best = json.load(f)
        if cfg.verbose:
            print(f"resumed {run_dir} at step {start_step} (epoch {start_step // steps_per_epoch + 1})")
    else:
        runs.atomic_write(os.path.join(run_dir, "genotype.json"), genotype.to_json())
        runs.atomic_write(os.path.join(run_dir, "vocab.txt"), "".join(w + "\n" for w in corpus.vocab))
        plots.plot_recurrent_cell(os.path.join(run_dir, "plots", "cell_recurrent.png"), genotype, "recurrent cell")
    if start_step >= steps_per_epoch * cfg.epochs:
        raise UserError(f"{run_dir} already finished its {cfg.epochs} epochs; raise --epochs to continue it")

    validate_ppl = PerplexityEvaluator(model, cfg.eval_batch_size, cfg.bptt)
    model_path = os.path.join(run_dir, "model.keras")

    def save_model():
        tmp = os.path.join(run_dir, ".model.tmp.keras")  # Keras wants the .keras suffix
        model.save(tmp)
        os.replace(tmp, model_path)

    def on_epoch_end(epoch, logs):
        val = validate_ppl(corpus.valid)["perplexity"]
        logs["val_perplexity"] = val
        logs["val_loss"] = math.log(val)
        improved = best["val_perplexity"] is None or val < best["val_perplexity"]
        if improved:
            best.update(val_perplexity=val, epoch=epoch + 1)
            save_model()
            runs.atomic_write_json(best_path, best)
        if cfg.verbose:
            print(f"epoch {epoch + 1}: train ppl {logs.get('perplexity', float('nan')):.2f} valid ppl {val:.2f}"
                  f"{' (best)' if improved else ''}", flush=True)

    history_cb = runs.StepHistory(os.path.join(run_dir, "history.csv"), STEP_LOGS, trainer.step_counter,
                                  resume_step=start_step)
    # EpochSummary (validation) before TensorBoard, so TensorBoard logs val_perplexity.
    callbacks = [history_cb, runs.StepCheckpoint(manager, trainer.step_counter, cfg.checkpoint_every),
                 runs.EpochSummary(on_epoch_end),
                 keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch"),
                 *extra_callbacks]
    segments = runs.fit_segments(start_step, steps_per_epoch, cfg.epochs)
    try:
        for first, last, steps in segments:
            stream = text.make_stream(corpus.train, cfg.batch_size, cfg.bptt, "train", cfg.seed,
                                      start_batch=int(trainer.step_counter.numpy()), max_delta=cfg.max_seq_len_delta)
            trainer.fit(stream, epochs=last, initial_epoch=first, steps_per_epoch=steps, callbacks=callbacks,
                        verbose=cfg.verbose if cfg.verbose in (1, 2) else 0)
    finally:
        history_cb.close()

    from dprime_tf.networks.rnn import load_model
    best_model = load_model(model_path) if os.path.exists(model_path) else model
    summary = {
        "genotype": genotype.to_dict(),
        "dataset": corpus.name, "vocab_size": corpus.vocab_size,
        "parameters": count_parameters(model),
        "steps": int(trainer.step_counter.numpy()), "steps_per_epoch": steps_per_epoch,
        "best_epoch": best["epoch"],
        "val_perplexity": PerplexityEvaluator(best_model, cfg.eval_batch_size, cfg.bptt)(corpus.valid)["perplexity"],
        "test_perplexity": None, "test_tokens": None,
        "wall_seconds_this_process": round(time.time() - started, 1),
        "model": model_path,
    }
    if corpus.test is not None and len(corpus.test) // cfg.test_batch_size >= 2:
        test = PerplexityEvaluator(best_model, cfg.test_batch_size, cfg.bptt)(corpus.test)
        summary.update(test_perplexity=test["perplexity"], test_tokens=test["tokens"])
    runs.atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
    summary["run_dir"] = run_dir
    return summary

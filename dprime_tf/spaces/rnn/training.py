"""Training a final recurrent language model from a genotype (DARTS's rnn/train.py).

The text space's trainer behind `python -m dprime_tf.train` (dprime_tf.train_job).

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
    plots/cell_recurrent.png, plots/curves.png, plots/lr.png
    report.html            the run's page, rewritten at each epoch end (epochs.json: per-epoch logs)
"""

from __future__ import annotations

import json
import math
import os
import time

from dprime_tf.errors import UserError
from dprime_tf.spaces.rnn import language_model_checks

STEP_LOGS = ("loss", "perplexity", "batch_loss", "lr", "seq_len", "grad_norm")


def rnn_checks(cfg) -> list[tuple[bool, str]]:
    """(condition, message) checks of the recurrent training settings."""
    return [
        (min(cfg.eval_batch_size, cfg.test_batch_size) >= 1, "--eval_batch_size and --test_batch_size must be >= 1"),
        (cfg.bptt >= 2, "--bptt must be >= 2"),
        (cfg.max_seq_len_delta >= 0, "--max_seq_len_delta must be >= 0"),
        *language_model_checks(cfg),
        (cfg.grad_clip > 0, "--grad_clip must be > 0"),
    ]


def _trainer_class():
    import keras
    import tensorflow as tf

    from dprime_tf.optimizers import CoupledSGD
    from dprime_tf.spaces.rnn.supernet import HiddenStates

    SUM = tf.distribute.ReduceOp.SUM

    class LanguageModelTrainer(keras.Model):
        """fit() for a recurrent LM: carries the hidden state across windows, NLL + TAR,
        clip, SGD with the learning rate scaled by seq_len / bptt (DARTS).

        Distribution as FinalTrainer's: `train_step` is cross-replica; each replica
        takes its rows of the global batch (its rows of the hidden state and of the
        dropout masks), all-reduces its gradients of the global loss once, clips
        the global gradient and applies it, so N replicas compute what one device
        computes on the same global batch."""

        def __init__(self, model, batch_size, bptt, learning_rate, weight_decay, grad_clip, **kwargs):
            super().__init__(**kwargs)
            self.lm, self.bptt, self.base_lr, self.grad_clip = model, int(bptt), float(learning_rate), float(grad_clip)
            self.states = HiddenStates(self, {"weight": batch_size}, model.nhid)
            self.step_counter = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False,
                                                name="step", aggregation="only_first_replica")
            self.window_lr = self.add_weight(shape=(), dtype="float32", trainable=False, name="window_lr",
                                             initializer=keras.initializers.Constant(self.base_lr),
                                             aggregation="only_first_replica")
            self.loss_tracker = keras.metrics.Mean(name="loss")
            optimizer = CoupledSGD(lambda: self.window_lr.value, momentum=0.0, l2=weight_decay,
                                   gradients_are_reduced=True)
            optimizer.build(model.trainable_weights)
            self.compile(optimizer=optimizer)
            self.built = True

        @property
        def metrics(self):
            return [self.loss_tracker]

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            return  # built in __init__

        def _replica_step(self, data):
            ctx = tf.distribute.get_replica_context()
            replicas = ctx.num_replicas_in_sync
            weights = self.lm.trainable_weights
            h0 = self.states.read("weight", data["reset"], tf.shape(data["x"])[0])
            with tf.GradientTape() as tape:
                terms, h = self.lm.window_terms(data, h0, True, "weight")
                loss = terms["loss_sum"] / (tf.cast(terms["count"], tf.float32) * replicas)  # this replica's share
                objective = loss + terms.get("penalty", 0.0) / replicas
            self.states.write("weight", h)
            grads = ctx.all_reduce(SUM, tape.gradient(objective, weights))
            grads, norm = tf.clip_by_global_norm(grads, self.grad_clip)
            self.optimizer.apply(grads, weights)
            return {"loss": loss, "grad_norm": norm / replicas}  # the norm is the same on every replica

        def train_step(self, data):
            strategy = self.distribute_strategy
            # Every replica's windows have the global batch's length.
            length = strategy.experimental_local_results(data["length"])[0][0]
            seq_len = tf.cast(length, tf.float32)
            lr = self.base_lr * seq_len / self.bptt
            self.window_lr.assign(lr)
            out = {k: strategy.reduce(SUM, v, axis=None)
                   for k, v in strategy.run(self._replica_step, args=(data,)).items()}
            self.step_counter.assign_add(1)
            self.loss_tracker.update_state(out["loss"])
            mean = self.loss_tracker.result()
            return {"loss": mean, "perplexity": tf.exp(mean), "batch_loss": out["loss"], "lr": lr,
                    "seq_len": seq_len, "grad_norm": out["grad_norm"]}

        def make_train_function(self, force=False):
            """One compiled step per call, whose body (train_step) is cross-replica."""
            if self.train_function is not None and not force:
                return self.train_function
            self.train_function = tf.function(lambda iterator: self.train_step(next(iterator)), autograph=False)
            return self.train_function

    return LanguageModelTrainer


def train_rnn(cfg, genotype, strategy=None, flags_text: str | None = None, extra_callbacks=()) -> dict:
    """Trains (or resumes) a recurrent LM; returns a summary dict (also in <run>/summary.json)."""
    import keras
    import tensorflow as tf

    from dprime_tf import plots, report, runs, tb_steps
    from dprime_tf.guard import NonFiniteGuard
    from dprime_tf.progress import ProgressBar
    from dprime_tf.data import text
    from dprime_tf.spaces.rnn.network import PerplexityEvaluator, RNNModel, count_parameters

    strategy = strategy or tf.distribute.get_strategy()
    started = time.time()
    corpus = text.load_corpus(cfg.dataset, cfg.data_dir)  # bad data fails before the run directory exists
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise UserError(f"--batch_size ({cfg.batch_size}) must be a multiple of the {replicas} replicas")
    for name, ids, batch in (("training", corpus.train, cfg.batch_size),
                             ("validation", corpus.valid, cfg.eval_batch_size)):
        if len(ids) // batch < 2:
            raise UserError(f"the {name} text ({len(ids)} tokens) is too short for batch size {batch}: "
                            "use a smaller batch size")
    run_dir = runs.prepare_run_dir(cfg.output_dir, cfg.resume)
    columns = len(corpus.train) // cfg.batch_size
    per_pass = text.windows_per_pass(columns, cfg.bptt, "train", cfg.seed, 0, cfg.max_seq_len_delta)
    steps_per_epoch = min(cfg.steps_per_epoch, per_pass) if cfg.steps_per_epoch else per_pass

    if cfg.deterministic:
        runs.make_deterministic()
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = RNNModel(corpus.vocab_size, genotype, cfg.emsize, cfg.nhid, cfg.dropout, cfg.dropouth, cfg.dropoutx,
                         cfg.dropouti, cfg.dropoute, cfg.tar_beta, vocab=corpus.vocab, seed=cfg.seed)
        trainer = _trainer_class()(model, cfg.batch_size, cfg.bptt, cfg.learning_rate, cfg.weight_decay,
                                   cfg.grad_clip)
    # Every variable by position (weights, the hidden state, the step counter, optimizer state).
    checkpoint = tf.train.Checkpoint(variables=list(trainer.weights), optimizer=list(trainer.optimizer.variables))
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(run_dir, "checkpoints"), max_to_keep=2)
    best_path = os.path.join(run_dir, "best.json")
    best = {"val_perplexity": None, "epoch": 0}
    start_step = 0
    from dprime_tf import validation
    settings = validation.identity(cfg, validation.TRAIN_IDENTITY)
    checked = runs.resume_record(run_dir, "train", settings, [*trainer.weights, *trainer.optimizer.variables],
                                 cfg.resume)
    if cfg.resume:
        runs.restore_latest(checkpoint, manager.directory, "resume with the run's own flags (they are re-read "
                            "from its flags.txt; do not change --emsize, --nhid or --batch_size)")
        runs.note_resumed(run_dir, "train", settings, checked)
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
    if flags_text is not None:  # after a successful restore: a failed resume keeps the run's flags
        runs.write_flags(run_dir, flags_text)
    if start_step > steps_per_epoch * cfg.epochs or (start_step == steps_per_epoch * cfg.epochs
                                                     and os.path.exists(os.path.join(run_dir, "summary.json"))):
        raise UserError(f"{run_dir} already finished its {cfg.epochs} epochs; raise --epochs to continue it")

    validate_ppl = PerplexityEvaluator(model, cfg.eval_batch_size, cfg.bptt)
    model_path = os.path.join(run_dir, "model.keras")

    def on_epoch_end(epoch, logs):
        val = validate_ppl(corpus.valid)["perplexity"]
        logs["val_perplexity"] = val
        logs["val_loss"] = math.log(val)
        improved = best["val_perplexity"] is None or val < best["val_perplexity"]
        if improved:
            best.update(val_perplexity=val, epoch=epoch + 1)
            runs.save_model(model, model_path)
            runs.atomic_write_json(best_path, best)
        if cfg.verbose:
            print(f"epoch {epoch + 1}: train ppl {logs.get('perplexity', float('nan')):.2f} valid ppl {val:.2f}"
                  f"{' (best)' if improved else ''}", flush=True)

    history_cb = runs.StepHistory(os.path.join(run_dir, "history.csv"), STEP_LOGS, trainer.step_counter,
                                  resume_step=start_step)
    # EpochSummary (validation) before TensorBoard, so TensorBoard logs val_perplexity.
    # The epoch's best model before its end-of-epoch checkpoint: a kill between them loses neither.
    callbacks = [history_cb,
                 NonFiniteGuard(("batch_loss", "grad_norm"), trainer.step_counter,
                                advice=": lower --learning_rate or --grad_clip, then --resume"),
                 runs.EpochSummary(on_epoch_end),
                 runs.StepCheckpoint(manager, trainer.step_counter, cfg.checkpoint_every,
                                     steps_per_epoch=steps_per_epoch),
                 keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch"),
                 tb_steps.for_rnn_training(run_dir, trainer, genotype),  # per-step TensorBoard scalars
                 report.report_callback(run_dir, "train", trainer.step_counter),  # report.html each epoch
                 *extra_callbacks]
    if cfg.verbose == 1:  # plain lines when stdout is not a terminal (Keras' bar writes ANSI escapes)
        callbacks.append(ProgressBar(("loss", "perplexity", "lr"), steps_per_epoch, cfg.epochs))
    runs.fit_run(trainer, lambda step: text.make_stream(corpus.train, cfg.batch_size, cfg.bptt, "train", cfg.seed,
                                                      start_batch=step, max_delta=cfg.max_seq_len_delta),
                 trainer.step_counter, start_step, steps_per_epoch, cfg.epochs, callbacks, closing=[history_cb],
                 verbose=2 if cfg.verbose == 2 else 0)

    from dprime_tf.spaces.rnn.network import load_model
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
    report.write_report(run_dir, "train", finished=True)
    summary["run_dir"] = run_dir
    return summary

"""Training a final (evaluation) network with the paper's recipe (SPEC section 7).

`FinalTrainer` wraps a network built from a genotype (anything whose
`call(x, training=True)` returns logits or `(logits, aux_logits)`, e.g.
`dprime_tf.networks.build_cifar_network`) and overrides `train_step` and
`test_step`, so `fit()` with its callbacks, progress bar and tf.distribute
strategies drives the training:

    loss = CE(logits) + auxiliary_weight * CE(aux_logits)     (DARTS: 0.4)
    gradients all-reduced, clipped to global norm `grad_clip` (5), then
    SGD with coupled L2 (3e-4), momentum 0.9, lr per-epoch cosine 0.025 -> 0

The reported training `loss` is that total (as DARTS's `objs`), `accuracy`
is the main head's top-1. `test_step` reports plain CE and top-1 of the main
head in inference mode (no auxiliary head, no drop-path), weighted by the
number of examples, so a partial last batch counts correctly.

Drop-path: `DropPathSchedule` assigns `network.drop_path_prob = p * e / E`
at the start of each epoch e (DARTS's linear schedule: 0 in epoch 0).

Distribution: as in `searcher.BilevelSearch`, `train_step` runs in the
cross-replica context and calls `strategy.run` on the replica step. Each
replica's loss is its CE sum over the *global* batch; the replica all-reduces
its gradients once, clips the global gradient and applies it (the optimizer
is told not to reduce again), so N replicas compute what one device computes
on the same global batch (batch norm statistics stay per replica, as in
DARTS's DataParallel).

Mixed precision (`loss_scale=True`, for a "mixed_float16" policy on GPUs):
the loss stays float32 (the networks' logits are float32); Keras'
`LossScaleOptimizer` wraps the SGD. Its `apply` unscales the gradients
itself, so the clipping sees scaled gradients: clipping `g * s` to norm
`c * s` is the same as clipping `g` to `c` (exact up to rounding), and a
non-finite gradient stays non-finite through the clip, so the optimizer still
skips that step and halves the scale. Skipped steps still count as steps
(the learning rate, the data stream and history.csv follow `trainer.step`,
not the optimizer's iteration counter).
"""

from __future__ import annotations

import time

import keras
import tensorflow as tf

from dprime_tf import fast_paths
from dprime_tf.optimizers import CoupledSGD, EpochCosineDecay
from dprime_tf.runs import StepHistory

_SUM = tf.distribute.ReduceOp.SUM

# Columns of history.csv (after "step").
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "lr", "drop_path_prob")


class FinalTrainer(keras.Model):
    def __init__(self, network, *, steps_per_epoch: int, epochs: int,
                 learning_rate: float = 0.025, learning_rate_min: float = 0.0,
                 momentum: float = 0.9, weight_decay: float = 3e-4, grad_clip: float = 5.0,
                 auxiliary_weight: float = 0.4, loss_scale: bool = False, jit_compile: bool = False, **kwargs):
        super().__init__(**kwargs)
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(f"steps_per_epoch and epochs must be >= 1, got {steps_per_epoch}, {epochs}")
        if grad_clip < 0 or auxiliary_weight < 0:
            raise ValueError("grad_clip and auxiliary_weight must be >= 0")
        self.network = network
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)
        self.grad_clip = float(grad_clip)
        self.auxiliary_weight = float(auxiliary_weight)
        self.loss_scale = bool(loss_scale)
        self._train_step_fn = fast_paths.compile_step(self._replica_train_step, jit_compile)  # --xla

        def state(name, value, dtype="float32"):
            return self.add_weight(shape=(), initializer=keras.initializers.Constant(value), dtype=dtype,
                                   trainable=False, name=name, aggregation="only_first_replica")
        self.step = state("train_step", 0, "int64")  # steps taken; the data stream's batch number
        self.batch_loss = state("batch_loss", float("nan"))  # the last step's values (history.csv)
        self.batch_accuracy = state("batch_accuracy", float("nan"))

        self.lr_schedule = EpochCosineDecay(learning_rate, learning_rate_min, steps_per_epoch, epochs)
        # The learning rate of the step being taken follows `self.step` (see the module docstring).
        sgd = CoupledSGD(lambda: self.lr_schedule(self.step), momentum=momentum, l2=weight_decay,
                         gradients_are_reduced=True)
        self.sgd = sgd
        optimizer = keras.optimizers.LossScaleOptimizer(sgd) if self.loss_scale else sgd
        # Built now: lazy slot creation inside the compiled, distributed step fails.
        optimizer.build(network.trainable_weights)
        self._loss_tracker = keras.metrics.Mean(name="loss")
        self._accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.compile(optimizer=optimizer, auto_scale_loss=False)
        self.built = True

    def call(self, images, training=False):
        return self.network(images, training=training)

    @property
    def metrics(self):
        return [self._loss_tracker, self._accuracy_tracker]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        return  # everything is built in __init__ (see searcher.BilevelSearch)

    # -- losses ---------------------------------------------------------------
    def loss_sums(self, y, outputs):
        """(CE sum of the main head, CE sum of the auxiliary head or 0, correct top-1 count)."""
        logits, aux_logits = (outputs if isinstance(outputs, (tuple, list)) else (outputs, None))
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        ce = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=y, logits=tf.cast(logits, tf.float32)))
        aux = tf.constant(0.0)
        if aux_logits is not None:
            aux = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y, logits=tf.cast(aux_logits, tf.float32)))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32))
        return ce, aux, correct

    # -- training ---------------------------------------------------------------
    def _replica_train_step(self, data):
        ctx = tf.distribute.get_replica_context()
        x, y = data[0], data[1]
        global_batch = tf.cast(tf.shape(x)[0] * ctx.num_replicas_in_sync, tf.float32)
        weights = self.network.trainable_weights
        with tf.GradientTape() as tape:
            ce, aux, correct = self.loss_sums(y, self.network(x, training=True))
            loss = (ce + self.auxiliary_weight * aux) / global_batch  # this replica's share
            scaled = self.optimizer.scale_loss(loss) if self.loss_scale else loss
        grads = ctx.all_reduce(_SUM, tape.gradient(scaled, weights))
        if self.grad_clip > 0:
            clip = self.grad_clip
            if self.loss_scale:
                clip = clip * tf.cast(self.optimizer.dynamic_scale, tf.float32)
            grads, _ = tf.clip_by_global_norm(grads, clip)
        self.optimizer.apply(grads, weights)
        return {"loss": loss, "accuracy": correct / global_batch}

    def train_step(self, data):
        strategy = self.distribute_strategy
        lr = self.lr_schedule(self.step)
        out = {k: strategy.reduce(_SUM, v, axis=None)
               for k, v in strategy.run(self._train_step_fn, args=(data,)).items()}
        self.step.assign_add(1)
        self.batch_loss.assign(out["loss"])
        self.batch_accuracy.assign(out["accuracy"])
        self._loss_tracker.update_state(out["loss"])
        self._accuracy_tracker.update_state(out["accuracy"])
        # Running means over the epoch (the progress bar) and the step's learning rate.
        return {"loss": self._loss_tracker.result(), "accuracy": self._accuracy_tracker.result(), "lr": lr}

    def make_train_function(self, force=False):
        """One compiled step per call, whose body (train_step) is cross-replica."""
        if self.train_function is not None and not force:
            return self.train_function
        self.train_function = tf.function(lambda iterator: self.train_step(next(iterator)), autograph=False)
        return self.train_function

    # -- evaluation ---------------------------------------------------------------
    def _replica_test_step(self, data):
        x, y = data[0], data[1]
        ce, _, correct = self.loss_sums(y, self.network(x, training=False))
        return {"ce": ce, "correct": correct, "n": tf.cast(tf.shape(x)[0], tf.float32)}

    def test_step(self, data):
        strategy = self.distribute_strategy
        out = {k: strategy.reduce(_SUM, v, axis=None)
               for k, v in strategy.run(self._replica_test_step, args=(data,)).items()}
        n = tf.maximum(out["n"], 1.0)
        self._loss_tracker.update_state(out["ce"] / n, sample_weight=out["n"])
        self._accuracy_tracker.update_state(out["correct"] / n, sample_weight=out["n"])
        return {"loss": self._loss_tracker.result(), "accuracy": self._accuracy_tracker.result()}

    def make_test_function(self, force=False):
        """Cross-replica test step; the finite dataset's end ends the evaluation."""
        if self.test_function is not None and not force:
            return self.test_function
        step = tf.function(self.test_step, autograph=False, reduce_retracing=True)

        def function(iterator):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                raise StopIteration
            return step(optional.get_value())

        self.test_function = function
        return function


# -- callbacks ------------------------------------------------------------------------
class DropPathSchedule(keras.callbacks.Callback):
    """Sets `network.drop_path_prob` to `drop_path_prob * epoch / epochs` as each epoch begins."""

    def __init__(self, network, drop_path_prob: float, epochs: int):
        super().__init__()
        self.network, self.drop_path_prob, self.epochs = network, float(drop_path_prob), int(epochs)

    def value(self, epoch: int) -> float:
        return self.drop_path_prob * epoch / self.epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.network.drop_path_prob.assign(self.value(epoch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:  # for TensorBoard and the epoch summary
            logs["drop_path_prob"] = float(self.network.drop_path_prob.numpy())


class TrainHistory(StepHistory):
    """history.csv: step, epoch, and the step's own loss/accuracy (not the
    epoch's running means the progress bar shows), lr and drop-path probability."""

    def __init__(self, path, trainer: FinalTrainer, resume_step: int = 0, flush_every: int = 1):
        super().__init__(path, HISTORY_COLUMNS, trainer.step, resume_step=resume_step, flush_every=flush_every)
        self.trainer = trainer
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        super().on_train_batch_end(batch, {
            "epoch": self._epoch,
            "loss": self.trainer.batch_loss.numpy(),
            "accuracy": self.trainer.batch_accuracy.numpy(),
            "lr": logs.get("lr"),
            "drop_path_prob": self.trainer.network.drop_path_prob.numpy(),
        })


class WallClock(keras.callbacks.Callback):
    """Accumulates training wall time (seconds) in a variable that the checkpoint
    saves, so the total survives a resume. Must come before the checkpoint callback."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable
        self._start = None

    def on_train_begin(self, logs=None):
        self._start, self._base = time.monotonic(), float(self.variable.numpy())

    def _update(self):
        if self._start is not None:
            self.variable.assign(self._base + time.monotonic() - self._start)

    def on_train_batch_end(self, batch, logs=None):
        self._update()

    def on_epoch_end(self, epoch, logs=None):
        self._update()

    def on_train_end(self, logs=None):
        self._update()
        self._start = None


# -- evaluation of a trained network ----------------------------------------------------
def evaluate_model(model, dataset) -> dict:
    """Top-1 accuracy and mean CE of `model` (images -> logits, inference mode)
    over a finite dataset of (normalized images, labels) batches."""
    @tf.function(reduce_retracing=True)
    def step(x, y):
        logits = tf.cast(model(x, training=False), tf.float32)
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        ce = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.int64))
        return ce, correct

    ce_sum, correct, n = 0.0, 0, 0
    for x, y in dataset:
        ce, c = step(x, y)
        ce_sum += float(ce)
        correct += int(c)
        n += int(tf.shape(y)[0])
    if n == 0:
        raise ValueError("the dataset is empty")
    return {"accuracy": correct / n, "loss": ce_sum / n, "correct": correct, "examples": n}

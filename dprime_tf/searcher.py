"""The bilevel DARTS-PRIME search loop as a Keras model (SPEC section 3).

`BilevelSearch` wraps a supernet and overrides `train_step`/`test_step`, so
`fit()` with its callbacks, progress bar and tf.distribute strategies drives
the search. The loop knows nothing of images or text; a supernet provides:

- `alphas`: its architecture variables (non-trainable Keras variables);
- `trainable_weights`: the network weights (alphas excluded);
- `loss_terms(data, training, stream)`: this replica's sums for one batch,
  {"loss_sum": summed NLL, "count": examples or tokens, optionally
  "correct": right predictions, "penalty": an extra term of the weight loss
  (e.g. activation regularization)}; `stream` is "weight", "alpha" or
  "eval", so a recurrent model can carry a hidden state per stream;
- `discretize_kwargs()` (the genotype rule for the penalties) and `genotype()`.

One step, in the SPEC's order:
1. the schedule decides (from the synced FI EWMA and tau) whether to take an
   alpha step; if so, the next alpha-stream batch gives CE + regularizer and
   Adam steps alpha;
2. weight step on the training batch with plain CE;
3. FI = sum of squared weight gradients (all-reduced, before clipping and
   before L2), then the schedule state is updated.

Distribution: a synchronization point (an all-reduce, an optimizer apply)
inside a `tf.cond` in a replica function fails under tf.distribute, so here
`train_step` runs in the *cross-replica* context: it makes the schedule
decision on the mirrored state and a `tf.cond` picks one of two
`strategy.run` calls (with or without the alpha step). Inside a replica the
gradients are all-reduced once; FI, clipping and the optimizers see the
global gradients (the optimizers are told not to reduce again), and batch
norm uses global-batch statistics, so N replicas compute what one device
computes on the same global batch.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from dprime_tf import fast_paths, prime
from dprime_tf.optimizers import CoupledAdam, CoupledSGD, EpochCosineDecay
from dprime_tf.spaces.layers import replica_sum

_SUM = tf.distribute.ReduceOp.SUM

# What each step reports (per-step values, also written to history.csv).
STEP_LOGS = ("batch_loss", "batch_accuracy", "batch_alpha_loss", "alpha_step", "alpha_steps", "fi",
             "fi_ewma", "tau", "lr", "progress")


class BilevelSearch(keras.Model):
    def __init__(self, supernet, *, steps_per_epoch: int, epochs: int,
                 schedule: str = "dynamic", regularizer: str = "prox",
                 rho: float = prime.RHO, schedfreq: int = prime.SCHEDFREQ,
                 threshold_multiplier: float = prime.THRESHOLD_MULTIPLIER,
                 fi_ewma_beta: float = prime.FI_EWMA_BETA,
                 learning_rate: float = 0.025, learning_rate_min: float = 0.001,
                 momentum: float = 0.9, weight_decay: float = 3e-4, grad_clip: float = 5.0,
                 arch_learning_rate: float = 3e-4, arch_beta_1: float = 0.5, arch_beta_2: float = 0.999,
                 arch_weight_decay: float = 1e-3, admm_freq: int = prime.ADMM_FREQ,
                 zu_ewma: float = prime.ZU_EWMA, init_alpha_threshold: float = prime.TAU_INIT,
                 loss_scale: bool = False, jit_compile: bool = False, **kwargs):
        super().__init__(**kwargs)
        if regularizer not in prime.REGULARIZERS:
            raise ValueError(f"unknown regularizer '{regularizer}' (use one of {', '.join(prime.REGULARIZERS)})")
        self.supernet = supernet
        self.schedule = prime.make_schedule(schedule, schedfreq, threshold_multiplier, fi_ewma_beta)
        self.schedule_name, self.regularizer = schedule, regularizer
        self.metric = getattr(supernet, "metric", "accuracy")  # "perplexity": language models
        self.rho, self.grad_clip = float(rho), float(grad_clip)
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)
        self.admm_freq, self.zu_ewma = int(admm_freq), float(zu_ewma)
        self.lr_schedule = EpochCosineDecay(learning_rate, learning_rate_min, steps_per_epoch, epochs)
        self.weight_optimizer = CoupledSGD(
            self.lr_schedule,
            momentum=momentum, l2=weight_decay, gradients_are_reduced=True)
        self.alpha_optimizer = CoupledAdam(arch_learning_rate, arch_beta_1, arch_beta_2, l2=arch_weight_decay,
                                           gradients_are_reduced=True, name="alpha_adam")
        self.loss_scale = bool(loss_scale)
        if self.loss_scale:  # fp16: each optimizer unscales, skips a non-finite step and adapts its own scale
            self.weight_optimizer = keras.optimizers.LossScaleOptimizer(self.weight_optimizer, name="weight_scale")
            self.alpha_optimizer = keras.optimizers.LossScaleOptimizer(self.alpha_optimizer, name="alpha_scale")
        self._weight_step_fn = fast_paths.compile_step(self._replica_weight_step, jit_compile)
        self._alpha_step_fn = fast_paths.compile_step(self._replica_alpha_step, jit_compile)
        # Both optimizers are built now: lazy slot creation inside the compiled,
        # distributed step fails.
        self.weight_optimizer.build(supernet.trainable_weights)
        self.alpha_optimizer.build(supernet.alphas)

        def state(name, value, dtype="float32"):
            return self.add_weight(shape=(), initializer=keras.initializers.Constant(value), dtype=dtype,
                                   trainable=False, name=name, aggregation="only_first_replica")
        self.search_step = state("search_step", 0, "int64")
        self.alpha_steps = state("alpha_steps", 0, "int64")
        self.fi_ewma = state("fi_ewma", 0.0)  # 0 means unset
        self.tau = state("tau", init_alpha_threshold)
        if regularizer == "admm":
            self.admm_counter = state("admm_counter", 0, "int64")  # alpha steps since the last Z/U update
            self.admm_z = [self.add_weight(shape=a.shape, initializer="zeros", trainable=False,
                                           name=f"admm_z_{i}", aggregation="only_first_replica")
                           for i, a in enumerate(supernet.alphas)]
            self.admm_u = [self.add_weight(shape=a.shape, initializer="zeros", trainable=False,
                                           name=f"admm_u_{i}", aggregation="only_first_replica")
                           for i, a in enumerate(supernet.alphas)]
            for z, a in zip(self.admm_z, supernet.alphas):
                z.assign(a)  # SPEC: Z starts at alpha, U at 0
        self._trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "accuracy", "alpha_loss")}
        self._val_trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "accuracy")}
        self._alpha_iterator = None
        self.compile(optimizer=self.weight_optimizer)
        self.built = True

    # -- data ---------------------------------------------------------------
    def set_alpha_stream(self, dataset: tf.data.Dataset):
        """The (infinite) dataset of alpha-step batches; one batch per alpha step."""
        self._alpha_iterator = iter(self.distribute_strategy.experimental_distribute_dataset(dataset))

    def call(self, images, training=False):
        return self.supernet(images, training=training)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Everything is built in __init__. Keras' symbolic build would pull a
        # batch and reduce it eagerly, which fails under multi-worker
        # strategies (keras-team/keras#20585).
        return

    # -- losses ---------------------------------------------------------------
    def _progress(self):
        """t / T of this step (the official clock ticks before the step)."""
        return prime.progress(self.search_step, self.steps_per_epoch, self.epochs)

    def regularization(self, progress):
        kw = self.supernet.discretize_kwargs()
        alphas = [a.value for a in self.supernet.alphas]
        if self.regularizer == "prox":
            return tf.add_n([prime.proximity_penalty(a, progress, self.rho, **kw) for a in alphas])
        if self.regularizer == "admm":
            return tf.add_n([prime.admm_penalty(a, z, u, self.rho)
                             for a, z, u in zip(alphas, self.admm_z, self.admm_u)])
        return tf.constant(0.0)

    # -- one replica ----------------------------------------------------------
    def _replica_alpha_step(self, alpha_data, progress):
        """Alpha step on one alpha-stream batch: CE + regularizer, Adam with coupled L2."""
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync
        alpha_vars = [a.value for a in self.supernet.alphas]
        # Only the alphas are watched: a tape that also watched the weights it
        # reads would trace every weight gradient too (then pruned unused).
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(alpha_vars)
            terms = self.supernet.loss_terms(alpha_data, training=True, stream="alpha")
            alpha_loss = terms["loss_sum"] / _global(terms["count"], replicas) + self.regularization(progress) / replicas
            scaled = self.alpha_optimizer.scale_loss(alpha_loss) if self.loss_scale else alpha_loss
        grads = _sum_over_replicas(ctx, tape.gradient(scaled, alpha_vars))
        self.alpha_optimizer.apply(grads, self.supernet.alphas)
        return alpha_loss  # this replica's share; the shares sum to the global loss

    def _replica_weight_step(self, data):
        """Weight step with plain CE; returns this replica's shares of loss/accuracy and FI."""
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync
        weights = self.supernet.trainable_weights
        with tf.GradientTape() as tape:
            terms = self.supernet.loss_terms(data, training=True, stream="weight")
            count = _global(terms["count"], replicas)
            loss = terms["loss_sum"] / count
            objective = loss + terms.get("penalty", 0.0) / replicas
            if self.loss_scale:
                objective = self.weight_optimizer.scale_loss(objective)
        grads = _sum_over_replicas(ctx, tape.gradient(objective, weights))
        fi = prime.fisher_trace(grads)  # global gradients, before clipping and L2
        clip = self.grad_clip
        if self.loss_scale:
            # The gradients are scaled by s (the optimizer unscales them): FI is
            # their sum of squares / s^2, and clipping g*s to c*s is clipping g to c.
            scale = tf.cast(self.weight_optimizer.dynamic_scale, tf.float32)
            clip, fi = clip * scale, fi / tf.square(scale)
            grads, _ = tf.clip_by_global_norm(grads, clip, use_norm=tf.sqrt(fi) * scale)
        else:
            grads, _ = tf.clip_by_global_norm(grads, clip, use_norm=tf.sqrt(fi))
        self.weight_optimizer.apply(grads, weights)
        return {"loss": loss, "accuracy": terms.get("correct", 0.0) / count, "fi": fi / replicas}

    # -- the step (cross-replica) ---------------------------------------------
    def train_step(self, data):
        strategy = self.distribute_strategy
        if self._alpha_iterator is None:
            raise RuntimeError("call set_alpha_stream(dataset) before fit(): the search needs an alpha stream")
        progress = self._progress()
        step_in_epoch = tf.math.floormod(self.search_step, self.steps_per_epoch)
        take, new_tau = self.schedule.decide(step_in_epoch, self.fi_ewma, self.tau)
        self.tau.assign(new_tau)

        def alpha_step():
            alpha_data = next(self._alpha_iterator)
            share = strategy.run(self._alpha_step_fn, args=(alpha_data, progress))
            return strategy.reduce(_SUM, share, axis=None)

        # Only the alpha step is conditional, so the weight step is traced once.
        alpha_loss = tf.cond(take, alpha_step, lambda: tf.constant(float("nan")))
        out = {k: strategy.reduce(_SUM, v, axis=None)
               for k, v in strategy.run(self._weight_step_fn, args=(data,)).items()}
        self.alpha_steps.assign_add(tf.cast(take, tf.int64))
        admm_updated = self._admm_step(take) if self.regularizer == "admm" else tf.constant(False)
        # fp16 only: a step whose scaled gradients overflowed was skipped by the
        # optimizer; its FI is not a measurement and leaves the EWMA as it was.
        weight_step = tf.math.is_finite(out["fi"]) if self.loss_scale else tf.constant(True)
        self.fi_ewma.assign(tf.where(weight_step, self.schedule.observe(out["fi"], self.fi_ewma, self.search_step),
                                     self.fi_ewma))
        self.search_step.assign_add(1)
        self._trackers["loss"].update_state(out["loss"])
        self._trackers["accuracy"].update_state(out["accuracy"])
        if_taken = tf.cast(take, tf.float32)
        self._trackers["alpha_loss"].update_state(tf.where(take, alpha_loss, 0.0), sample_weight=if_taken)
        return self._metric_logs({
            # running means over the epoch (what the progress bar shows) ...
            **{name: t.result() for name, t in self._trackers.items()},
            # ... and this step's values (what history.csv records)
            "batch_loss": out["loss"], "batch_accuracy": out["accuracy"], "batch_alpha_loss": alpha_loss,
            "alpha_steps": tf.cast(self.alpha_steps, tf.float32), "alpha_step": if_taken,
            "fi": out["fi"], "fi_ewma": tf.identity(self.fi_ewma), "tau": tf.identity(self.tau),
            "lr": self.lr_schedule(self.search_step - 1), "progress": progress,
            "admm_update": tf.cast(admm_updated, tf.float32),
            "weight_step": tf.cast(weight_step, tf.float32),  # 0: skipped by fp16 loss scaling
        })

    def _admm_step(self, took_alpha_step):
        """After the weight step, when `prime.admm_due` says so: Z = discretize(softmax(alpha + U)),
        then U = zu*U + (alpha - Z). Returns whether Z and U moved."""
        due, counter = prime.admm_due(self.admm_counter + tf.cast(took_alpha_step, tf.int64), self.admm_freq)
        self.admm_counter.assign(counter)
        kw = self.supernet.discretize_kwargs()
        for a, z, u in zip(self.supernet.alphas, self.admm_z, self.admm_u):
            new_z, new_u = prime.admm_update(a.value, u.value, self.zu_ewma, **kw)
            z.assign(tf.where(due, new_z, z.value))
            u.assign(tf.where(due, new_u, u.value))
        return due

    def make_train_function(self, force=False):
        """One compiled step per call, whose body (train_step) is cross-replica."""
        if self.train_function is not None and not force:
            return self.train_function
        step = tf.function(lambda iterator: self.train_step(next(iterator)), autograph=False)
        self.train_function = step
        return step

    def test_step(self, data):
        """One replica's sums for one batch; `make_test_function` reduces and averages them."""
        terms = self.supernet.loss_terms(data, training=False, stream="eval")
        return {"loss_sum": terms["loss_sum"], "correct": tf.cast(terms.get("correct", 0.0), tf.float32),
                "count": tf.cast(terms["count"], tf.float32)}

    def make_test_function(self, force=False):
        """Validation in the cross-replica context: per-replica sums, one SUM reduction, exact global means.

        Keras' own test function averages per-replica scalars with a reduction
        that fails under MultiWorkerMirroredStrategy (keras-team/keras#20585)
        and weights replicas equally even when the last batch splits unevenly.
        """
        if self.test_function is not None and not force:
            return self.test_function
        strategy = self.distribute_strategy

        def step(iterator):
            optional = iterator.get_next_as_optional()  # agrees across workers on the end of the data

            def on_batch():
                sums = strategy.run(self.test_step, args=(optional.get_value(),))
                return [strategy.reduce(_SUM, sums[k], axis=None) for k in ("loss_sum", "correct", "count")]

            has_value = optional.has_value()
            loss_sum, correct, n = tf.cond(has_value, on_batch, lambda: [tf.constant(0.0)] * 3)
            # Outside the cond: with no batch left, n = 0 and the trackers do not move.
            self._val_trackers["loss"].update_state(tf.math.divide_no_nan(loss_sum, n), sample_weight=n)
            self._val_trackers["accuracy"].update_state(tf.math.divide_no_nan(correct, n), sample_weight=n)
            return has_value, self._metric_logs({k: t.result() for k, t in self._val_trackers.items()})

        compiled = tf.function(step, autograph=False)

        def test_function(iterator):
            has_value, logs = compiled(iterator)
            if not bool(has_value):
                raise StopIteration
            return logs

        self.test_function = test_function
        return test_function

    def reset_metrics(self):
        for t in list(self._trackers.values()) + list(self._val_trackers.values()):
            t.reset_state()

    def _metric_logs(self, logs):
        """Language models report perplexity, exp(mean NLL), in place of accuracy."""
        if self.metric != "perplexity":
            return logs
        return {k.replace("accuracy", "perplexity"): tf.exp(logs[k.replace("accuracy", "loss")]) if "accuracy" in k
                else v for k, v in logs.items()}

    def genotype(self):
        return self.supernet.genotype()


def _global(local_count, replicas):
    """Examples (or tokens) in the global batch; replicas get equal shares."""
    return tf.cast(local_count, tf.float32) * replicas


def _sum_over_replicas(ctx, grads):
    """The gradients summed over the replicas. Dense gradients go through
    `layers.replica_sum`: one collective op on one flat vector, from the
    replica's own thread; `ReplicaContext.all_reduce` hands off through
    merge_call and packs each tensor with its own reshape and size nodes
    (~2,000 graph nodes per replica for the supernet's 200 weights). Sparse
    gradients (a language model's embedding) and one replica take the public
    path."""
    if ctx.num_replicas_in_sync > 1 and all(isinstance(g, tf.Tensor) for g in grads):
        return replica_sum(grads)
    return ctx.all_reduce(_SUM, grads)

"""The DARTS-PRIME math (SPEC sections 2-5) as small pure functions.

Nothing here owns state: callers pass the state in and get the new state
back, so the same code runs eagerly in tests, inside the compiled
training step, and under tf.distribute.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

# SPEC constants and the method's choices (dprime_tf.constants: importable without
# TensorFlow, for the command lines' flag definitions and checks)
from dprime_tf.constants import (ADMM_FREQ, FI_EWMA_BETA, FI_EWMA_SEED_STEPS, REGULARIZERS, RHO,  # noqa: F401
                                 SCHEDFREQ, SCHEDULES, SPLITS, TAU_INIT, THRESHOLD_MULTIPLIER, ZU_EWMA)


# --------------------------------------------------------------------------
# Discretization (the genotype rule)
# --------------------------------------------------------------------------
def _steps_for(num_edges: int, num_inputs: int) -> int:
    steps, total = 0, 0
    while total < num_edges:
        total += num_inputs + steps
        steps += 1
    if total != num_edges:
        raise ValueError(f"{num_edges} edges do not form a cell with {num_inputs} inputs")
    return steps


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def select_edges(weights: np.ndarray, num_inputs: int = 2, keep: int = 2, none_index: int = 0):
    """Per intermediate node, the kept (input, op) pairs, strongest edge first.

    An edge's strength is its largest weight over non-`none` ops; each node
    keeps its `keep` strongest incoming edges (ties: lower input first, as
    Python's stable sort in the reference), each with its best non-`none` op.
    """
    weights = np.asarray(weights)
    masked = weights.astype(np.float64).copy()
    masked[:, none_index] = -np.inf
    steps = _steps_for(weights.shape[0], num_inputs)
    selection, start = [], 0
    for i in range(steps):
        n = num_inputs + i
        block = masked[start:start + n]
        strength = block.max(axis=1)
        order = sorted(range(n), key=lambda j: -strength[j])[:keep]
        selection.append([(j, int(np.argmax(block[j]))) for j in order])
        start += n
    return selection


def discretize(weights, num_inputs: int = 2, keep: int = 2, none_index: int = 0):
    """One-hot matrix of the genotype rule: 1 at (kept edge, its best op), else 0.

    TensorFlow version of `select_edges` for use inside the training step;
    the result carries no gradient.
    """
    weights = tf.stop_gradient(tf.convert_to_tensor(weights))
    num_edges, num_ops = weights.shape
    steps = _steps_for(num_edges, num_inputs)
    is_none = tf.one_hot(none_index, num_ops, dtype=tf.bool, on_value=True, off_value=False)
    masked = tf.where(is_none[None, :], tf.constant(-np.inf, weights.dtype), weights)
    rows, start = [], 0
    for i in range(steps):
        n = num_inputs + i
        block = masked[start:start + n]
        top = tf.math.top_k(tf.reduce_max(block, axis=1), k=min(keep, n)).indices
        kept = tf.reduce_any(tf.equal(tf.range(n)[:, None], top[None, :]), axis=1)
        best = tf.one_hot(tf.argmax(block, axis=1), num_ops, dtype=weights.dtype)
        rows.append(best * tf.cast(kept, weights.dtype)[:, None])
        start += n
    return tf.concat(rows, axis=0)


# --------------------------------------------------------------------------
# Regularizers of the alpha loss (SPEC section 5)
# --------------------------------------------------------------------------
def _frobenius(x):
    # sqrt with a floor: the norm's gradient is undefined at exactly zero.
    return tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(x)), 1e-24))


def proximity_penalty(alpha, progress, rho=RHO, **discretize_kw):
    """(t/T) * rho/2 * ||softmax(alpha) - z||_F with z = discretize(softmax(alpha)) held constant."""
    p = tf.nn.softmax(alpha, axis=-1)
    z = discretize(p, **discretize_kw)
    return tf.cast(progress, p.dtype) * (rho / 2.0) * _frobenius(p - z)


def admm_penalty(alpha, z, u, rho=RHO):
    """rho/2 * ||softmax(alpha) - Z + U||_F (Z and U are constants here)."""
    p = tf.nn.softmax(alpha, axis=-1)
    return (rho / 2.0) * _frobenius(p - tf.stop_gradient(z) + tf.stop_gradient(u))


def admm_update(alpha, u, zu_ewma=ZU_EWMA, **discretize_kw):
    """The Z/U step: Z = discretize(softmax(alpha + U)); U = zu_ewma * U + (alpha - Z)."""
    z = discretize(tf.nn.softmax(alpha + u, axis=-1), **discretize_kw)
    return z, zu_ewma * u + (alpha - z)


# --------------------------------------------------------------------------
# Schedules (SPEC section 4)
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FixedSchedule:
    """Alpha step when (step_in_epoch + 1) % schedfreq == 0; schedfreq 1 is original DARTS.

    The official loop counts steps within the epoch (SPEC section 9), so every
    epoch restarts the count.
    """
    schedfreq: int = SCHEDFREQ
    beta: float = FI_EWMA_BETA  # FI is still averaged, for the history

    def decide(self, step_in_epoch, fi_ewma, tau):
        """Returns (take_alpha_step, new_tau); called before the weight step."""
        take = tf.equal(tf.math.floormod(tf.cast(step_in_epoch, tf.int64) + 1, self.schedfreq), 0)
        return take, tf.convert_to_tensor(tau, tf.float32)

    def observe(self, fi, fi_ewma, observed=FI_EWMA_SEED_STEPS):
        return update_fi_ewma(fi, fi_ewma, self.beta, observed)


@dataclasses.dataclass(frozen=True)
class DynamicSchedule:
    """DARTS-PRIME's informed schedule: alpha step when 0 < FI_ewma < tau.

    tau shrinks by m^-schedfreq after an alpha step and grows by m otherwise,
    so about one step in schedfreq + 1 updates alpha, at low-gradient moments.
    """
    schedfreq: int = SCHEDFREQ
    m: float = THRESHOLD_MULTIPLIER
    beta: float = FI_EWMA_BETA

    def decide(self, step_in_epoch, fi_ewma, tau):
        fi_ewma = tf.convert_to_tensor(fi_ewma, tf.float32)
        tau = tf.convert_to_tensor(tau, tf.float32)
        take = tf.logical_and(fi_ewma > 0.0, fi_ewma < tau)
        # m^-schedfreq as the official code computes it (exp(-log(m) * schedfreq), in float64).
        divider = float(np.exp(-np.log(self.m) * self.schedfreq))
        new_tau = tf.where(take, tau * divider, tau * self.m)
        return take, new_tau

    def observe(self, fi, fi_ewma, observed=FI_EWMA_SEED_STEPS):
        return update_fi_ewma(fi, fi_ewma, self.beta, observed)


def update_fi_ewma(fi, fi_ewma, beta=FI_EWMA_BETA, observed=FI_EWMA_SEED_STEPS):
    """The FI EWMA after a weight step whose FI is `fi`.

    `observed` counts the FIs seen before this one. As in the official code,
    the EWMA is the raw FI after each of the first FI_EWMA_SEED_STEPS steps
    (FI_0, then FI_1), then beta * FI + (1 - beta) * FI_ewma.
    """
    fi = tf.convert_to_tensor(fi, tf.float32)
    fi_ewma = tf.convert_to_tensor(fi_ewma, tf.float32)
    seeding = tf.less(tf.cast(observed, tf.int64), FI_EWMA_SEED_STEPS)
    return tf.where(seeding, fi, beta * fi + (1.0 - beta) * fi_ewma)


def admm_due(alpha_counter, admm_freq=ADMM_FREQ):
    """(update Z and U now?, the counter afterwards), checked after every weight step.

    The official script's rule: `(alpha_counter + 1) % admm_freq == 0`, where
    alpha_counter counts alpha steps since the last update and is reset to 0
    by it; so Z and U move every admm_freq - 1 alpha steps.
    """
    counter = tf.cast(alpha_counter, tf.int64)
    due = tf.equal(tf.math.floormod(counter + 1, admm_freq), 0)
    return due, tf.where(due, tf.zeros_like(counter), counter)


def make_schedule(kind: str, schedfreq: int = SCHEDFREQ, m: float = THRESHOLD_MULTIPLIER,
                  beta: float = FI_EWMA_BETA):
    if kind == "fixed":
        return FixedSchedule(schedfreq, beta)
    if kind == "dynamic":
        return DynamicSchedule(schedfreq, m, beta)
    raise ValueError(f"unknown schedule '{kind}' (use one of {', '.join(SCHEDULES)})")


def weight_portion(split: str, schedfreq: int = SCHEDFREQ) -> float:
    """Fraction of the training set that trains w; the rest is the alpha stream."""
    if split == "half":
        return 0.5
    if split == "dynamic":
        return 1.0 - 1.0 / (1.0 + schedfreq)
    raise ValueError(f"unknown split '{split}' (use one of {', '.join(SPLITS)})")


def fisher_trace(grads) -> tf.Tensor:
    """FI = sum over all weights of (dL/dw)^2 (trace of the empirical Fisher)."""
    # L2Loss is sum(g^2) / 2 in one op per tensor (the graph stays small).
    with tf.name_scope("fisher_information"):
        return 2.0 * tf.add_n([tf.nn.l2_loss(tf.cast(g, tf.float32)) for g in grads if g is not None])


def epoch_cosine_lr(step, steps_per_epoch, epochs, lr_max, lr_min):
    """PyTorch's CosineAnnealingLR stepped at the *top* of every epoch, as the official
    scripts do (PyTorch >= 1.6): epoch e trains at cosine(e + 1), so the first epoch is
    already below lr_max and the last one is exactly lr_min."""
    epoch = tf.math.floordiv(tf.cast(step, tf.float32), float(steps_per_epoch)) + 1.0
    epoch = tf.minimum(epoch, float(epochs))
    return lr_min + (lr_max - lr_min) * 0.5 * (1.0 + tf.cos(math.pi * epoch / float(epochs)))


def progress(step, steps_per_epoch, epochs):
    """t / T at global step `step`: the official clock ticks 1/steps_per_epoch *before*
    each step, so step k sees t = (k + 1) / steps_per_epoch epochs."""
    return (tf.cast(step, tf.float32) + 1.0) / float(steps_per_epoch * epochs)

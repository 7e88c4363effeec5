"""Stops a run at its first non-finite step, before anything saves the bad state.

A search or training step that produces NaN or inf never recovers by itself:
clipping with a NaN norm makes every gradient NaN, a NaN FI EWMA never falls
below tau again, and the run would go on to write a genotype from frozen
alphas and checkpoints of a broken state. `NonFiniteGuard` sits in the
callback list *before* the checkpoint and epoch-end callbacks: at the first
step whose watched logs are not finite it raises a one-line `Diverged`
(a UserError: the command line prints it and exits non-zero), so the last
good checkpoints stay the newest and no epoch file is written for the bad
step. history.csv, written before the guard, shows the step with `nan`.
"""

from __future__ import annotations

import math

import keras

from dprime_tf.errors import UserError

# What the logs' names mean to a user.
QUANTITIES = {
    "batch_loss": "the weight loss",
    "loss": "the loss",
    "fi": "the gradient information FI (the squared weight-gradient norm)",
    "batch_alpha_loss": "the alpha loss",
}


class Diverged(UserError):
    """A step produced a non-finite loss, FI or gradient norm."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Raises `Diverged` at the first step whose `watch` logs are not finite.

    `applies_if` maps a log to the log that says whether it exists this step
    (the alpha loss only on alpha steps). `step_variable` numbers the step
    (after the step, so the step just taken is its value - 1); `advice` ends
    the message.
    """

    def __init__(self, watch, step_variable, applies_if: dict | None = None, advice: str = ""):
        super().__init__()
        self.watch, self.step_variable = tuple(watch), step_variable
        self.applies_if = dict(applies_if or {})
        self.advice = advice

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        for name in self.watch:
            if name not in logs:
                continue
            if name in self.applies_if and float(logs.get(self.applies_if[name], 0.0)) == 0.0:
                continue
            value = float(logs[name])
            if not math.isfinite(value):
                step = int(self.step_variable.numpy()) - 1
                self.model.stop_training = True
                raise Diverged(f"step {step}: {QUANTITIES.get(name, name)} is {value}; the run stopped "
                               f"without saving this state (the last good checkpoint is kept){self.advice}")

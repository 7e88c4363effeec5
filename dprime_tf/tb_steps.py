"""TensorBoard logs per step: the numbers of every training step (a search's FI,
FI EWMA, tau, alpha_step, lr and losses; a final training's loss, accuracy or
perplexity and lr) as scalars at that step, and per epoch the validation
numbers, alpha heatmaps as images and the genotype as text.

    <run>/tensorboard/steps/     this callback's events (tags as history.csv's columns)
    <run>/tensorboard/train/, validation/   Keras' own per-epoch scalars (epoch_*)

`tensorboard --logdir runs/`. The scalars come from the same step logs that
history.csv records (dprime_tf.searcher.STEP_LOGS for a search). A resumed run
logs the steps after its last checkpoint again (TensorBoard shows both copies
of those few steps).
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import tensorflow as tf

STEPS_DIR = "steps"


def _finite(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class StepTensorBoard(keras.callbacks.Callback):
    """Writes `keys` of each step's logs (and `values(logs)`, a dict of more per-step
    numbers) as scalars at the step just taken (`step_variable` - 1, as history.csv);
    NaNs (e.g. the alpha loss of a step without an alpha step) are left out. At each
    epoch end: the epoch's validation logs (`val_*`) as `epoch/<name>`, the images of
    `epoch_images()` ({name: (edges, ops) weights, primitives}) as alpha heatmaps and
    `epoch_text()` (the genotype) as text."""

    def __init__(self, log_dir: str, keys, step_variable, values=None, epoch_images=None, epoch_text=None):
        super().__init__()
        self.keys, self.step_variable = tuple(keys), step_variable
        self.values, self.epoch_images, self.epoch_text = values, epoch_images, epoch_text
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, STEPS_DIR))

    def _step(self) -> int:
        return int(self.step_variable.numpy()) - 1

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        numbers = {k: logs.get(k) for k in self.keys}
        if self.values is not None:
            numbers.update(self.values(logs))
        step = self._step()
        with self.writer.as_default():
            for name, value in numbers.items():
                value = _finite(value)
                if value is not None:
                    tf.summary.scalar(name, value, step=step)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        step = self._step()
        with self.writer.as_default():
            tf.summary.scalar("epoch/epoch", epoch + 1, step=step)
            for name, value in logs.items():
                value = _finite(value)
                if name.startswith("val_") and value is not None:
                    tf.summary.scalar(f"epoch/{name}", value, step=step)
            if self.epoch_images is not None:
                from dprime_tf import plots
                for name, (weights, primitives) in self.epoch_images().items():
                    png = plots.plot_alpha_heatmap(None, np.asarray(weights), primitives,
                                                   f"{name} cell: softmax(alpha) after epoch {epoch + 1}")
                    tf.summary.image(f"alphas/{name}", tf.image.decode_png(png, channels=3)[None], step=step)
            if self.epoch_text is not None:
                tf.summary.text("genotype", self.epoch_text(), step=step)
        self.writer.flush()

    def on_train_end(self, logs=None):
        self.writer.flush()


def for_search(run_dir: str, search, net, space, metric: str):
    """The callback of a search (dprime_tf.search_job): its STEP_LOGS every step; per
    epoch the mixing weights as heatmaps and the genotype."""
    from dprime_tf.searcher import STEP_LOGS

    def images():
        return {kind: (w, net.primitives) for kind, w in net.mixing_weights().items()}

    def text():
        lines = space.genotype_lines(net.genotype())
        return "\n\n".join(f"`{line}`" for line in lines) + f"\n\n```\n{net.genotype().to_json()}\n```"

    return StepTensorBoard(os.path.join(run_dir, "tensorboard"), [k.replace("accuracy", metric) for k in STEP_LOGS],
                           search.search_step, epoch_images=images, epoch_text=text)


def for_cnn_training(run_dir: str, trainer, net, genotype=None):
    """The callback of a final CNN's training: the step's own loss and accuracy, lr and
    drop-path probability every step; the genotype as text."""
    def values(logs):
        return {"batch_loss": trainer.batch_loss.numpy(), "batch_accuracy": trainer.batch_accuracy.numpy(),
                "drop_path_prob": net.drop_path_prob.numpy()}
    text = (lambda: f"```\n{genotype.to_json()}\n```") if genotype is not None else None
    return StepTensorBoard(os.path.join(run_dir, "tensorboard"), ("lr",), trainer.step, values=values,
                           epoch_text=text)


def for_rnn_training(run_dir: str, trainer, genotype=None):
    """The callback of a language model's training: the window's loss and perplexity, lr,
    window length and gradient norm every step; the genotype as text."""
    def values(logs):
        loss = _finite(logs.get("batch_loss"))
        return {"batch_perplexity": math.exp(min(loss, 50.0)) if loss is not None else None}
    text = (lambda: f"```\n{genotype.to_json()}\n```") if genotype is not None else None
    return StepTensorBoard(os.path.join(run_dir, "tensorboard"), ("batch_loss", "lr", "seq_len", "grad_norm"),
                           trainer.step_counter, values=values, epoch_text=text)

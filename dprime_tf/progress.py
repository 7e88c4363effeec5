"""A compact progress bar: the few numbers a user watches, with an ETA."""

from __future__ import annotations

import keras


class ProgressBar(keras.callbacks.Callback):
    """Keras' Progbar over one epoch showing only `keys` (Keras' own bar prints every log).

    Use with fit(verbose=0). Values are shown as they are logged (the search
    already logs epoch means for loss/accuracy and current values for the rest).
    """

    def __init__(self, keys, steps_per_epoch: int, epochs: int):
        super().__init__()
        self.keys, self.steps, self.epochs = tuple(keys), int(steps_per_epoch), int(epochs)
        self._bar = None

    def on_epoch_begin(self, epoch, logs=None):
        print(f"Epoch {epoch + 1}/{self.epochs}", flush=True)
        target = self.params.get("steps") if self.params else None
        self._bar = keras.utils.Progbar(target or self.steps, stateful_metrics=self.keys + ("val_loss", "val_accuracy"))

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self._bar.update(batch + 1, [(k, float(logs[k])) for k in self.keys if k in logs])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        values = [(k, float(logs[k])) for k in self.keys + ("val_loss", "val_accuracy") if k in logs]
        self._bar.update(self._bar.target, values, finalize=True)

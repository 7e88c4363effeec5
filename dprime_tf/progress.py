"""Progress of a run: the few numbers a user watches, with an ETA.

On a terminal, one line per epoch redrawn in place (carriage return). When
stdout is not a terminal (nohup, cluster jobs, CI, `> log.txt`), plain lines
only: no ANSI escape sequences, no carriage returns; one line every
`every` steps (default: about 10 per epoch) and one at each epoch's last step (before
validation and the run's own epoch line). Counts
(alpha steps, steps) are shown as integers.

    epoch 1/4 step 20/40 (50%) loss 2.2811 accuracy 0.1406 alpha_steps 3 fi_ewma 1.52 tau 1.6 ETA 41s
"""

from __future__ import annotations

import math
import sys
import time

import keras

COUNTS = ("alpha_steps", "alpha_step", "steps", "seq_len")  # shown as integers


def format_value(name: str, value) -> str:
    """A logged number for a progress line: counts as integers, others in 4-5 significant digits."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if name in COUNTS or name.endswith("_steps"):
        return str(int(round(value)))
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return f"{value:.3e}"


def format_duration(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    if seconds >= 60:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds}s"


class ProgressBar(keras.callbacks.Callback):
    """Progress of fit() showing only `keys` of the logs (use with fit(verbose=0)).

    `stream`: where to print (default sys.stdout, looked up at each print);
    `interactive`: redraw in place (default: whether the stream is a terminal);
    `every`: steps between plain lines when not interactive (0: about 10 per epoch).
    """

    def __init__(self, keys, steps_per_epoch: int, epochs: int, every: int = 0, stream=None,
                 interactive: bool | None = None):
        super().__init__()
        self.keys, self.steps, self.epochs = tuple(keys), int(steps_per_epoch), int(epochs)
        self.every, self._stream, self._interactive = int(every), stream, interactive
        self._epoch, self._start, self._width = 0, 0.0, 0

    @property
    def stream(self):
        return self._stream or sys.stdout

    @property
    def interactive(self) -> bool:
        if self._interactive is not None:
            return self._interactive
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def _target(self) -> int:
        target = self.params.get("steps") if self.params else None
        return int(target or self.steps)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._start, self._width = epoch, time.monotonic(), 0

    def _line(self, batch, logs, final=False) -> str:
        target = self._target()
        done = batch + 1
        elapsed = time.monotonic() - self._start
        parts = [f"epoch {self._epoch + 1}/{self.epochs}", f"step {done}/{target}"]
        if not final:
            parts[-1] += f" ({100 * done // max(target, 1)}%)"
        for key in self.keys:
            if key in logs:
                parts.append(f"{key} {format_value(key, logs[key])}")
        if final:
            parts.append(f"{format_duration(elapsed)}")
        elif done < target:
            parts.append(f"ETA {format_duration(elapsed / done * (target - done))}")
        return " ".join(parts)

    def _print(self, text: str, final: bool):
        if self.interactive:
            pad = " " * max(self._width - len(text), 0)
            self.stream.write("\r" + text + pad + ("\n" if final else ""))
            self._width = 0 if final else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def on_train_batch_end(self, batch, logs=None):
        target = self._target()
        if batch + 1 >= target:  # the epoch's line, before validation and the run's epoch summary
            self._print(self._line(batch, logs or {}, final=True), final=True)
            return
        if not self.interactive:
            every = self.every or max(target // 10, 1)
            if (batch + 1) % every:
                return
        self._print(self._line(batch, logs or {}), final=False)

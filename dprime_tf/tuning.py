"""keras-tuner over DARTS-PRIME's own hyperparameters.

`SearchHyperModel` is a keras-tuner `HyperModel` whose "model" is one
search run: `build(hp)` declares the hyperparameters (rho, schedfreq, the
threshold multiplier m, the weight and alpha learning rates, the
regularizer; see `SPACE`) and returns the trial's `SearchConfig`;
`fit(hp, config)` runs it with `run_search` (run directory, checkpoints,
resume, genotype) and returns the metrics. `SearchTuner` is a
`keras_tuner` `BaseTuner` driving it with any oracle (Random,
BayesianOptimization, Hyperband: `make_oracle`).

Objective: `val_accuracy` (maximized), the supernet's accuracy on (the
first `--val_steps` batches of) the alpha split at the end of the trial's
last epoch -- what `fit` reports from `BilevelSearch.test_step`; for the
recurrent search space, `val_perplexity` (minimized) on the validation text. It is the DARTS
"validation" accuracy of the weight-shared supernet with softmax-mixed edges,
not the accuracy of the discretized, retrained network: a cheap proxy. The
last epoch (not the best one) is used because a search's product is its final
genotype.

Trials: `<directory>/<project>/trial_<id>/search/` is a complete search run
directory. A trial interrupted by a kill is retried by keras-tuner when the
tuner is restarted with the same directory, and resumes from its own last
checkpoint. Hyperband trials run the schedules (cosine learning rate, prox
progress t/T) of the full `--epochs` and stop after `tuner/epochs`; a
continued trial copies its parent's run directory and resumes it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import shutil

import keras
import keras_tuner
import tensorflow as tf

from dprime_tf import prime, runs
from dprime_tf.errors import UserError
from dprime_tf.search_job import SearchConfig, run_search

TUNERS = ("random", "bayesian", "hyperband")
# What a trial reports, per search space: the supernet on the alpha split.
OBJECTIVES = {"cnn": ("val_accuracy", "max"), "rnn": ("val_perplexity", "min")}
OBJECTIVE = OBJECTIVES["cnn"][0]


@dataclasses.dataclass(frozen=True)
class Dim:
    """One tunable SearchConfig field: a float/int range or a choice."""
    kind: str  # "float", "int", "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: tuple = ()
    # active only when this other hyperparameter takes one of these values
    parent: tuple[str, tuple] | None = None


# Ranges around the paper's values (SPEC sections 3-6: rho 0.1, schedfreq 10,
# m 1.05, prox; CNN lr 0.025 and alpha lr 3e-4, RNN lr 20 and alpha lr 3e-3).
SPACE = {
    "reg": Dim("choice", values=tuple(prime.REGULARIZERS)),
    "rho": Dim("float", 0.01, 1.0, log=True, parent=("reg", ("prox", "admm"))),
    "schedfreq": Dim("int", 2, 20),
    "threshold_multiplier": Dim("float", 1.01, 1.2, log=True),
    "learning_rate": Dim("float", 0.005, 0.1, log=True),
    "arch_learning_rate": Dim("float", 1e-4, 1e-2, log=True),
}
RNN_SPACE = {**SPACE, "learning_rate": Dim("float", 5.0, 40.0, log=True),
             "arch_learning_rate": Dim("float", 3e-4, 3e-2, log=True)}


def search_space(cfg) -> str:
    return getattr(cfg, "search_space", "cnn")


def objective(cfg):
    name, direction = OBJECTIVES[search_space(cfg)]
    return keras_tuner.Objective(name, direction=direction)


class SearchHyperModel(keras_tuner.HyperModel):
    """A search over `base`'s settings with the `tune` fields chosen by keras-tuner."""

    def __init__(self, base: SearchConfig, tune=tuple(SPACE), strategy: tf.distribute.Strategy | None = None):
        super().__init__(name="dprime_search", tunable=True)
        unknown = [name for name in tune if name not in SPACE]
        if unknown:
            raise UserError(f"--tune: unknown hyperparameter(s) {', '.join(unknown)} (use {', '.join(SPACE)})")
        self.base, self.tune, self.strategy = base, tuple(tune), strategy
        self.space = RNN_SPACE if search_space(base) == "rnn" else SPACE
        self.objective = objective(base)

    def declare(self, hp: keras_tuner.HyperParameters) -> dict:
        """Declares the hyperparameters; returns the active values (name -> value)."""
        values = {}
        for name, dim in self.space.items():  # a parent before its children
            if name not in self.tune:
                continue
            if dim.parent and dim.parent[0] in self.tune:
                with hp.conditional_scope(dim.parent[0], list(dim.parent[1])):
                    value = _declare(hp, name, dim)
                if hp.is_active(name):
                    values[name] = value
            else:
                values[name] = _declare(hp, name, dim)
        return values

    def build(self, hp) -> SearchConfig:
        """The trial's search settings (a search run is this HyperModel's "model")."""
        return dataclasses.replace(self.base, **self.declare(hp))

    def fit(self, hp, model: SearchConfig, *, callbacks=(), **kwargs) -> dict:
        """Runs (or resumes) the search `model`; returns {val_accuracy, val_loss, ...} of its last epoch."""
        keras.backend.clear_session()
        gc.collect()
        summary = run_search(model, self.strategy, flags_text=flags_text(model), extra_callbacks=list(callbacks))
        return trial_metrics(summary, self.objective.name)


def _declare(hp, name, dim):
    if dim.kind == "float":
        return hp.Float(name, dim.low, dim.high, sampling="log" if dim.log else "linear")
    if dim.kind == "int":
        return hp.Int(name, int(dim.low), int(dim.high))
    return hp.Choice(name, list(dim.values))


def trial_metrics(summary: dict, name: str = OBJECTIVE) -> dict:
    metrics = {k: float(summary[k]) for k in ("val_accuracy", "val_loss", "val_perplexity")
               if summary.get(k) is not None}
    if name not in metrics or not math.isfinite(metrics[name]):
        raise keras_tuner.errors.FailedTrialError(f"the search reported no finite {name}")
    return metrics


class SearchTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """Runs each trial as a search run directory inside the trial's directory."""

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        config = self.hypermodel.build(hp)
        trial_dir = self.get_trial_dir(trial.trial_id)
        run_dir = os.path.join(trial_dir, "search")
        values = hp.values
        if "tuner/epochs" in values:  # Hyperband: a prefix of the full-length search
            config = dataclasses.replace(config, until_epoch=min(int(values["tuner/epochs"]), config.epochs))
            parent = values.get("tuner/trial_id")
            if parent and not _has_checkpoint(run_dir):
                parent_dir = os.path.join(self.get_trial_dir(parent), "search")
                if _has_checkpoint(parent_dir):
                    shutil.rmtree(run_dir, ignore_errors=True)
                    shutil.copytree(parent_dir, run_dir, ignore=shutil.ignore_patterns("tensorboard"))
        end_epoch = config.until_epoch or config.epochs
        summary_path = os.path.join(run_dir, "summary.json")
        if os.path.exists(summary_path):  # finished before an interruption: report it again
            with open(summary_path) as f:
                summary = json.load(f)
            if summary.get("epochs_done") == end_epoch:
                return trial_metrics(summary, self.hypermodel.objective.name)
        resume = _has_checkpoint(run_dir)
        if not resume and os.path.isdir(run_dir):  # killed before its first checkpoint
            shutil.rmtree(run_dir)
        if resume:
            print(f"trial {trial.trial_id}: resuming its search from the last checkpoint in {run_dir}", flush=True)
        config = dataclasses.replace(config, output_dir=run_dir, resume=resume)
        return self.hypermodel.fit(hp, config, *args, **kwargs)

    def save_model(self, trial_id, model, step=0):
        pass  # the trial's run directory holds its checkpoints and genotype

    def load_model(self, trial):
        """The trial's search summary (genotype, metrics, ...)."""
        with open(os.path.join(self.get_trial_dir(trial.trial_id), "search", "summary.json")) as f:
            return json.load(f)


def _has_checkpoint(run_dir):
    return runs.latest_checkpoint(os.path.join(run_dir, "checkpoints")) is not None


def make_oracle(name: str, objective: keras_tuner.Objective, *, max_trials: int, max_epochs: int,
                seed: int | None = None, hyperband_factor: int = 3, hyperband_iterations: int = 1,
                max_retries_per_trial: int = 0):
    common = dict(objective=objective, seed=seed, max_retries_per_trial=max_retries_per_trial)
    if name == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if name == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(max_trials=max_trials, **common)
    if name == "hyperband":
        return keras_tuner.oracles.HyperbandOracle(max_epochs=max_epochs, factor=hyperband_factor,
                                                   hyperband_iterations=hyperband_iterations, **common)
    raise UserError(f"unknown --tuner '{name}' (use one of {', '.join(TUNERS)})")


# -- flagfiles ------------------------------------------------------------------
# SearchConfig fields that describe one run, not a search's settings.
_NOT_FLAGS = {"output_dir", "resume", "until_epoch", "search_space"}


def flags_text(cfg, header: str = "", exclude=_NOT_FLAGS) -> str:
    """A run config (SearchConfig, TrainConfig) as a flagfile of its command
    (`python -m dprime_tf.search --flagfile=...`): every set field but `exclude`."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name in exclude or value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"--{field.name}" if value else f"--no{field.name}")
        elif isinstance(value, float):
            lines.append(f"--{field.name}={value:.8g}")
        else:
            lines.append(f"--{field.name}={value}")
    return "\n".join(lines) + "\n"


def oracle_address(environ, role: str) -> str | None:
    """keras-tuner's distributed mode: the oracle's address. With KERASTUNER_ORACLE_PORT but
    no KERASTUNER_ORACLE_IP, the chief binds (and the workers dial) 127.0.0.1: the oracle
    speaks plaintext gRPC without authentication, so it leaves this host only when an
    address is given. The chief prints one line naming what it listens on."""
    port = environ.get("KERASTUNER_ORACLE_PORT")
    if port is None:
        return None
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise UserError(f"KERASTUNER_ORACLE_PORT must be a port number in 1-65535, got {port!r}")
    if not environ.get("KERASTUNER_ORACLE_IP"):
        environ["KERASTUNER_ORACLE_IP"] = "127.0.0.1"
    address = f"{environ['KERASTUNER_ORACLE_IP']}:{port}"
    if "chief" in role:
        print(f"keras-tuner oracle listens on {address} (plaintext gRPC, unauthenticated: keep it on a private "
              "network)", flush=True)
    return address


def check_tuned(values: dict, space: dict) -> None:
    """The tuned values (from keras-tuner's oracle, possibly another process) inside the search
    space's ranges and choices: best.flags never carries a value the space does not allow."""
    for name, value in values.items():
        dim = space.get(name)
        if dim is None:
            raise UserError(f"best trial: {name}={value!r} is not a tunable hyperparameter")
        if dim.kind == "choice":
            ok = value in dim.values
        else:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and dim.low * (1 - 1e-9) <= value <= dim.high * (1 + 1e-9)
                  and (dim.kind != "int" or float(value).is_integer()))
        if not ok:
            raise UserError(f"best trial: {name}={value!r} is outside the search space "
                            f"({list(dim.values) if dim.kind == 'choice' else [dim.low, dim.high]}); "
                            "best.flags not written")


def write_best_flags(tuner: SearchTuner, path: str) -> dict:
    """The best trial's settings as a flagfile for dprime_tf.search; returns a short report."""
    best = tuner.oracle.get_best_trials(1)
    if not best:
        raise UserError("no trial completed: nothing to write (see the trials' errors above)")
    trial = best[0]
    cfg = tuner.hypermodel.build(trial.hyperparameters.copy())
    tuned = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
    check_tuned(tuned, tuner.hypermodel.space)
    from dprime_tf.search_job import validate
    validate(cfg)  # the settings as a whole, as `python -m dprime_tf.search --flagfile=<best.flags>` will
    header = (f"Best of {len(tuner.oracle.trials)} keras-tuner trials ({tuner.project_dir}):\n"
              f"trial {trial.trial_id}, {tuner.hypermodel.objective.name} {trial.score:.4f} "
              "(supernet, alpha split, last epoch).\n"
              f"Tuned: {', '.join(f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}' for k, v in tuned.items())}\n"
              "python -m dprime_tf.search --flagfile=<this file> --output_dir=runs/<name>")
    runs.atomic_write(path, flags_text(cfg, header))
    return {"trial_id": trial.trial_id, "objective": tuner.hypermodel.objective.name, "score": float(trial.score),
            "hyperparameters": tuned, "flagfile": path}

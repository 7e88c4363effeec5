"""The paper's experiment: methods x seeds -> search -> train -> test -> results.

A study is a grid over search methods (named presets, `METHODS`) and seeds,
optionally with baselines trained the same way (a published genotype such as
DARTS_V2, or `random`: a genotype drawn uniformly per seed, which is how a
search is shown to beat random sampling). Each trial

  1. searches a cell with the study's search settings and the method's switches
     (an ordinary search run directory, `trials/<method>/seed<N>/search/`);
  2. trains the found genotype with the study's training settings
     (`.../train/`, an ordinary training run directory);
  3. scores it on the dataset's held-out test split (images) or test text
     (a corpus), never used by the search or the training;

and leaves `.../result.json`. Both run directories continue from their last
checkpoint when a killed trial is run again, and a finished phase is not run
twice.

The engine is keras-tuner: a `GridSearchOracle` over (seed, method) hands out
the trials, records them (resumable: `<study_dir>/grid-<hash>/`), and in its
chief/worker mode spreads them over processes and hosts. Trial directories are
named by (method, seed), not by keras-tuner's trial id, so extending a study
(more seeds, another method) makes a new grid whose finished trials are
found on disk and reported again without rerunning them. `study.json` records
the search and training settings; rerunning a study directory with other
settings is an error (results of different settings must not be pooled).

Results (rewritten after every trial): `results.csv` (one row per finished
trial), `results.md` (mean +- std per method, as the paper's tables),
`plots/test_metric.png` (test error or perplexity per method, box + points),
`plots/alpha_step_rate.png`, `plots/search_time.png` and `report.html`.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import html
import io
import math
import os
import time

import keras_tuner
import numpy as np

from dprime_tf import runs
from dprime_tf.atomic import atomic_write, read_json_or
from dprime_tf.errors import UserError
# the study's settings (re-exported: dprime_tf.studies.Study, METHODS, ...)
from dprime_tf.study_config import (METHODS, RANDOM, TRAIN_PER_TRIAL, Study, check_settings,  # noqa: F401
                                    method_names, train_fields)

class PhaseClock:
    """Accumulates a phase's wall time in <trial>/timing.json across processes (a Keras
    callback: written at every epoch end, so a kill loses at most one epoch's time)."""

    def __init__(self, trial_dir: str, phase: str):
        self.path = os.path.join(trial_dir, "timing.json")
        self.phase = phase
        self.base = self.read().get(phase, 0.0)
        self.started = time.time()

    def read(self) -> dict:
        return read_json_or(self.path, {})

    def seconds(self) -> float:
        return self.base + time.time() - self.started

    def record(self) -> float:
        timing = self.read()
        timing[self.phase] = round(self.seconds(), 1)
        runs.atomic_write_json(self.path, timing)
        return timing[self.phase]

    def callback(self):
        import keras
        clock = self

        class _Record(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                clock.record()
        return _Record()


def _finished(run_dir: str, *files: str) -> dict | None:
    """The run's summary.json when the run finished (summary and `files` all written)."""
    if not all(os.path.isfile(os.path.join(run_dir, f)) for f in ("summary.json", *files)):
        return None
    return read_json_or(os.path.join(run_dir, "summary.json"))


def _resumable(run_dir: str) -> bool:
    from dprime_tf import runlock
    return os.path.isdir(run_dir) and runlock.looks_like_run(run_dir)


def _search_phase(study: Study, method: str, seed: int, strategy, log) -> dict:
    from dprime_tf import tuning
    from dprime_tf.search_job import run_search
    cfg = study.search_config(method, seed)
    summary = _finished(cfg.output_dir, "genotype.json")
    if summary is not None and summary.get("epochs_done") == cfg.epochs:
        return summary
    resume = _resumable(cfg.output_dir)
    log(f"{method} seed {seed}: {'resuming the' if resume else 'running its'} search ({cfg.output_dir})")
    clock = PhaseClock(os.path.dirname(cfg.output_dir), "search_seconds")
    summary = run_search(dataclasses.replace(cfg, resume=resume), strategy, flags_text=tuning.flags_text(cfg),
                         extra_callbacks=[clock.callback()])
    clock.record()
    return summary


def _train_phase(study: Study, method: str, seed: int, genotype: str, strategy, log) -> dict:
    from dprime_tf.train_job import run_training
    cfg = study.train_config(genotype, method, seed)
    summary = _finished(cfg.output_dir, "model.keras")
    if summary is not None:
        return summary
    resume = _resumable(cfg.output_dir)
    if resume:
        cfg = dataclasses.replace(cfg, genotype=None)  # the run's own copy decides
    log(f"{method} seed {seed}: {'resuming the' if resume else 'running its'} training ({cfg.output_dir})")
    clock = PhaseClock(os.path.dirname(cfg.output_dir), "train_seconds")
    from dprime_tf.tuning import flags_text
    summary = run_training(dataclasses.replace(cfg, resume=resume), strategy, flags_text=flags_text(cfg, exclude={"resume"}),
                           extra_callbacks=[clock.callback()])
    clock.record()
    return summary


def _baseline_genotype(study: Study, method: str, seed: int) -> str:
    """The baseline's genotype as a JSON file in the trial directory (drawn with the trial's seed)."""
    genotypes = study.space.genotype_class()
    genotype = genotypes.random(seed) if method == RANDOM else genotypes.published()[method]
    path = os.path.join(study.trial_dir(method, seed), "genotype.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    runs.atomic_write(path, genotype.to_json())
    return path


def run_trial(study: Study, method: str, seed: int, strategy=None, log=print) -> dict:
    """Runs (or resumes, or reads back) one trial; returns its result row (also result.json)."""
    trial_dir = study.trial_dir(method, seed)
    result_path = os.path.join(trial_dir, "result.json")
    done = read_json_or(result_path)
    if done is not None:
        return done
    import keras
    keras.backend.clear_session()
    gc.collect()
    search = None
    if method in METHODS:
        search = _search_phase(study, method, seed, strategy, log)
        genotype = os.path.join(study.search_config(method, seed).output_dir, "genotype.json")
    else:
        genotype = _baseline_genotype(study, method, seed)
    keras.backend.clear_session()
    gc.collect()
    train = _train_phase(study, method, seed, genotype, strategy, log)
    test = _test_metric(study, train, study.train_config(genotype, method, seed).output_dir)
    timing = read_json_or(os.path.join(trial_dir, "timing.json")) or {}
    row = result_row(study, method, seed, search, train, test, timing)
    runs.atomic_write_json(result_path, row)
    return row


def _test_metric(study: Study, train: dict, train_dir: str) -> float:
    """The trained network on the held-out test data."""
    if study.space.metric == "perplexity":
        value = train.get("test_perplexity")
        if value is None:
            raise UserError(f"--dataset={study.search.dataset} has no test text to score the trained model on")
        return float(value)
    from dprime_tf import evaluation
    return float(evaluation.score(train_dir, subset="test", quiet=True)["accuracy"])


def compact_genotype(genotype: dict) -> str:
    """A genotype dict as one short line (results.csv): `normal: op<-i ... | reduce: ...`."""
    parts = []
    for kind, gene in genotype.items():
        if isinstance(gene, list) and gene and isinstance(gene[0], list):
            parts.append(f"{kind}: " + " ".join(f"{op}<-{i}" for op, i in gene))
    return " | ".join(parts)


def result_row(study: Study, method: str, seed: int, search: dict | None, train: dict, test: float,
               timing: dict) -> dict:
    genotype_path = os.path.join(study.trial_dir(method, seed), "train", "genotype.json")
    genotype = read_json_or(genotype_path) or train.get("genotype") or {}
    decisive = (search or {}).get("decisiveness") or {}
    row = {
        "method": method, "seed": seed, "kind": "search" if search is not None else "baseline",
        "genotype": compact_genotype(genotype),
        "alpha_steps": search["alpha_steps"] if search else None,
        "steps": search["steps"] if search else None,
        "alpha_step_rate": search["alpha_step_rate"] if search else None,
        "search_seconds": timing.get("search_seconds") if search else None,
        "verdict": decisive.get("verdict"),
        "margin_ratio": decisive.get("margin_ratio"),
        "edge_margin_ratio": decisive.get("edge_margin_ratio"),
        "params": train.get("parameters"),
        "train_seconds": timing.get("train_seconds"),
        study.metric: test,
    }
    if study.space.metric == "accuracy":
        row["test_error"] = 1.0 - test
    return row


class StudyError(keras_tuner.errors.FatalError, UserError):
    """A trial's one-line UserError that stops the study (bad settings, missing data)."""


def _record_error(trial_dir: str) -> None:
    import traceback
    os.makedirs(trial_dir, exist_ok=True)
    atomic_write(os.path.join(trial_dir, "error.txt"), traceback.format_exc())


# -- keras-tuner: the grid -------------------------------------------------------------
class StudyHyperModel(keras_tuner.HyperModel):
    """The grid's hyperparameters: seed (outer), method (inner); a "model" is a (method, seed)."""

    def __init__(self, study: Study):
        super().__init__(name="dprime_study", tunable=True)
        self.study = study

    def build(self, hp):
        seed = hp.Choice("seed", list(self.study.seeds))
        method = hp.Choice("method", list(self.study.methods))
        return method, int(seed)


class StudyTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """Runs each grid point as a study trial; rewrites the study's results after each."""

    def __init__(self, study: Study, strategy=None, log=print, **kwargs):
        from keras_tuner.src import config as _kt_config
        _kt_config.DEBUG = False  # a failed trial is one line here, its traceback in error.txt
        self.study, self.strategy, self.log = study, strategy, log
        self.started = time.time()
        self.done_here = 0
        oracle = keras_tuner.oracles.GridSearchOracle(
            objective=keras_tuner.Objective(study.metric, direction=study.direction),
            max_retries_per_trial=kwargs.pop("max_retries_per_trial", 0))
        super().__init__(oracle, StudyHyperModel(study), directory=study.study_dir,
                         project_name=study.grid_name(), **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        method, seed = self.hypermodel.build(trial.hyperparameters)
        total = len(self.study.methods) * len(self.study.seeds)
        cached = os.path.exists(os.path.join(self.study.trial_dir(method, seed), "result.json"))
        started = time.time()
        try:
            row = run_trial(self.study, method, seed, self.strategy, self.log)
        except Exception as e:  # noqa: BLE001  (recorded in the trial directory, one line here)
            from dprime_tf.guard import Diverged
            _record_error(self.study.trial_dir(method, seed))
            if isinstance(e, UserError) and not isinstance(e, Diverged):
                raise StudyError(f"{method} seed {seed}: {e}") from None  # the settings: every trial would fail
            self.log(f"{method} seed {seed}: failed ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                     f"details in {self.study.trial_dir(method, seed)}/error.txt")
            raise keras_tuner.errors.FailedTrialError(str(e)) from None
        value = row[self.study.metric]
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise keras_tuner.errors.FailedTrialError(f"{method} seed {seed}: no finite {self.study.metric}")
        done = len(collect(self.study))
        if not cached:
            self.done_here += 1
        elapsed = time.time() - self.started
        eta = (elapsed / self.done_here * (total - done)) if self.done_here and done < total else 0.0
        metric = self.study.metric.replace("_", " ")
        self.log(f"trial {done}/{total} {method} seed {seed}: {metric} {value:.4f}"
                 + (f", {row['params'] / 1e6:.3f}M params" if row.get("params") else "")
                 + (f", alpha steps {row['alpha_steps']}/{row['steps']}" if row.get("steps") else "")
                 + ("" if cached else f", {time.time() - started:.0f} s")
                 + (f"; study ETA {eta / 60:.0f} min" if eta else ""))
        write_results(self.study)
        return {self.study.metric: float(value)}

    def save_model(self, trial_id, model, step=0):
        pass  # the trial's run directories hold the checkpoints and the trained model

    def load_model(self, trial):
        method, seed = self.hypermodel.build(trial.hyperparameters)
        return read_json_or(os.path.join(self.study.trial_dir(method, seed), "result.json"))


# -- results ---------------------------------------------------------------------------
def collect(study: Study) -> list[dict]:
    """The finished trials of the study's grid, in grid order (seed, then method)."""
    rows = []
    for seed in study.seeds:
        for method in study.methods:
            row = read_json_or(os.path.join(study.trial_dir(method, seed), "result.json"))
            if row is not None:
                rows.append(row)
    return rows


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1; 0 for a single value), as papers report over seeds."""
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not len(values):
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize(rows: list[dict], methods, metric: str) -> list[dict]:
    """Per method: n, the test metric's mean and std, params, alpha-step rate and search time."""
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        entry = {"method": method, "n": len(mine)}
        for key in (metric, "params", "alpha_step_rate", "search_seconds", "train_seconds"):
            entry[key] = mean_std([r.get(key) for r in mine])
        out.append(entry)
    return out


def _pm(pair, scale=1.0, digits=2) -> str:
    mean, std = pair
    if not math.isfinite(mean):
        return "-"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def results_markdown(study: Study, rows: list[dict]) -> str:
    """results.md: the paper-style table (mean ± std over seeds per method)."""
    accuracy = study.space.metric == "accuracy"
    head = "test error (%)" if accuracy else "test perplexity"
    lines = [f"| method | trials | {head} | params (M) | alpha-step rate | search time (s) | train time (s) |",
             "|---|---|---|---|---|---|---|"]
    for e in summarize(rows, study.methods, study.metric):
        metric = (_pm(((1 - e[study.metric][0]), e[study.metric][1]), 100) if accuracy
                  else _pm(e[study.metric], 1, 1))
        lines.append(f"| {e['method']} | {e['n']} | {metric} | {_pm(e['params'], 1e-6, 3)} | "
                     f"{_pm(e['alpha_step_rate'], 1, 3)} | {_pm(e['search_seconds'], 1, 0)} | "
                     f"{_pm(e['train_seconds'], 1, 0)} |")
    expected = len(study.methods) * len(study.seeds)
    notes = [f"{len(rows)} of {expected} trials finished; seeds {', '.join(map(str, study.seeds))}. "
             "Mean ± sample standard deviation over seeds."]
    if accuracy:
        notes.append("Test error on the dataset's held-out test split (never used by search or training).")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def _csv_value(value):
    if value is None:
        return ""
    return round(value, 10) if isinstance(value, float) else value  # 1 - 0.4744, not 0.5256000000000001


def write_results(study: Study) -> list[dict]:
    """Rewrites results.csv, results.md, the plots and report.html from the trials' result.json."""
    from dprime_tf import plots
    rows = collect(study)
    columns = ["method", "seed", "kind", study.metric, *(["test_error"] if study.space.metric == "accuracy" else []),
               "params", "alpha_steps", "steps", "alpha_step_rate", "search_seconds", "train_seconds", "verdict",
               "margin_ratio", "edge_margin_ratio", "genotype"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: _csv_value(r.get(k)) for k in columns} for r in rows])
    atomic_write(os.path.join(study.study_dir, "results.csv"), out.getvalue())
    table = results_markdown(study, rows)
    atomic_write(os.path.join(study.study_dir, "results.md"), table)
    pdir = os.path.join(study.study_dir, "plots")
    accuracy = study.space.metric == "accuracy"
    by_method = {m: [r for r in rows if r["method"] == m] for m in study.methods}
    plots.plot_per_method(os.path.join(pdir, "test_metric.png"),
                          {m: [(100 * r["test_error"]) if accuracy else r[study.metric] for r in rs]
                           for m, rs in by_method.items()},
                          "test error (%)" if accuracy else "test perplexity", "Test error per method" if accuracy
                          else "Test perplexity per method")
    plots.plot_per_method(os.path.join(pdir, "alpha_step_rate.png"),
                          {m: [r["alpha_step_rate"] for r in rs if r.get("alpha_step_rate") is not None]
                           for m, rs in by_method.items() if m in METHODS},
                          "alpha steps per weight step", "Alpha-step rate per method")
    plots.plot_per_method(os.path.join(pdir, "search_time.png"),
                          {m: [r["search_seconds"] for r in rs if r.get("search_seconds") is not None]
                           for m, rs in by_method.items() if m in METHODS},
                          "search time (s)", "Search wall time per method")
    _write_report(study, rows, table)
    return rows


def _write_report(study: Study, rows: list[dict], table: str) -> None:
    from dprime_tf.report import markdown_table_html
    name = html.escape(os.path.basename(os.path.abspath(study.study_dir)))
    links = []
    for r in rows:
        trial = os.path.relpath(study.trial_dir(r["method"], r["seed"]), study.study_dir)
        parts = [f"<a href='{html.escape(trial)}/{part}/report.html'>{part}</a>" for part in ("search", "train")
                 if os.path.exists(os.path.join(study.study_dir, trial, part, "report.html"))]
        value = r[study.metric]
        links.append(f"<tr><td>{html.escape(r['method'])}</td><td class='num'>{r['seed']}</td>"
                     f"<td class='num'>{value:.4f}</td><td>{' '.join(parts)}</td>"
                     f"<td><code>{html.escape(r.get('genotype', ''))}</code></td></tr>")
    figures = "".join(f"<figure><img src='plots/{f}' alt='{html.escape(c)}'><figcaption>{html.escape(c)}"
                      "</figcaption></figure>" for f, c in (("test_metric.png", "test metric per method"),
                                                            ("alpha_step_rate.png", "alpha-step rate"),
                                                            ("search_time.png", "search time")))
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>Study: {name}</title><style>"
            "body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em}"
            "th{background:#f5f5f5}td.num{text-align:right}figure{display:inline-block;margin:.5em}"
            "img{max-width:100%}code{font-size:.8em}</style></head><body>"
            f"<h1>Study: {name}</h1><p style='color:#666'>{html.escape(os.path.abspath(study.study_dir))}; "
            f"methods {html.escape(', '.join(study.methods))}; seeds {html.escape(', '.join(map(str, study.seeds)))}"
            f"</p>{markdown_table_html(table)}{figures}<h2>Trials</h2><table><tr><th>method</th><th>seed</th>"
            f"<th>{html.escape(study.metric)}</th><th>runs</th><th>genotype</th></tr>{''.join(links)}</table>"
            "<p><a href='results.csv'>results.csv</a> · <a href='results.md'>results.md</a></p></body></html>\n")
    atomic_write(os.path.join(study.study_dir, "report.html"), page)

"""A complete search run in any search space: data -> supernet -> bilevel fit ->
genotype + run directory.

Library entry point behind `python -m dprime_tf.search` (which maps flags to
a `SearchConfig`); keras-tuner and tests call `run_search` directly. What
differs between spaces (data, supernet, genotype drawing, extra artifacts)
comes from the space (dprime_tf.spaces), picked by the dataset.

Run directory: flags.txt, history.csv (one row per step), checkpoints/,
tensorboard/, genotype.json, genotypes/epoch_NNN.json, alphas.npz,
alpha_history.npz (softmax weights per epoch, one key per cell kind),
alphas_initial.npz (the mixing weights at initialisation), decisiveness.json
(per epoch: how far the search, not the initial alphas, decided the genotype;
dprime_tf.decisiveness), summary.json, plots/ (alphas_<kind>.png,
cell_<kind>.png, schedule.png), and what the space adds.
"""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf

from dprime_tf import decisiveness, fast_paths, plots, report, runlock, runs, spaces, tb_steps, validation
from dprime_tf.distribute import output_dirs
from dprime_tf.errors import UserError
from dprime_tf.guard import NonFiniteGuard
from dprime_tf.progress import ProgressBar
from dprime_tf.runs import make_deterministic
from dprime_tf.search_config import RNNSearchConfig, SearchConfig, resolve, validate  # noqa: F401  (public here)
from dprime_tf.searcher import STEP_LOGS, BilevelSearch

def bilevel_search(net, cfg: SearchConfig, steps_per_epoch: int, arch_beta_1: float = 0.5) -> BilevelSearch:
    """The BilevelSearch of a resolved config (call inside the strategy's scope)."""
    return BilevelSearch(
        net, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, schedule=cfg.schedule,
        regularizer=cfg.reg, rho=cfg.rho, schedfreq=cfg.schedfreq,
        threshold_multiplier=cfg.threshold_multiplier, fi_ewma_beta=cfg.fi_ewma_beta,
        learning_rate=cfg.learning_rate, learning_rate_min=cfg.learning_rate_min, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, arch_learning_rate=cfg.arch_learning_rate,
        arch_beta_1=arch_beta_1, arch_weight_decay=cfg.arch_weight_decay, admm_freq=cfg.admm_freq,
        zu_ewma=cfg.zu_ewma, init_alpha_threshold=cfg.init_alpha_threshold,
        loss_scale=fast_paths.loss_scaling(cfg.precision), jit_compile=cfg.xla)


def run_search(cfg: SearchConfig, strategy: tf.distribute.Strategy | None = None,
               flags_text: str | None = None, extra_callbacks=()) -> dict:
    """Runs (or resumes) a search; returns a summary dict (also in <run>/summary.json)."""
    cfg = resolve(cfg)
    validate(cfg)
    space = spaces.for_dataset(cfg.dataset)
    strategy = strategy or tf.distribute.get_strategy()
    fast_paths.configure_graph_optimizer()
    validation.check_replicas(cfg.batch_size, strategy.num_replicas_in_sync)
    data = space.load_search_data(cfg, strategy.num_replicas_in_sync)  # bad data: nothing written
    cfg = dataclasses.replace(cfg, resume=runlock.plan_resume(cfg.output_dir, cfg.resume, cfg.verbose))
    with output_dirs(strategy, cfg.output_dir, cfg.resume) as (chief, run_dir, worker_dir):
        job = SearchJob(cfg, space, data, strategy, chief, run_dir, worker_dir)
        return job.run(flags_text, extra_callbacks)


@dataclasses.dataclass
class SearchJob:
    """One search run's state, handed to the space's hooks."""

    cfg: SearchConfig
    space: spaces.SearchSpace
    data: spaces.SearchData
    strategy: tf.distribute.Strategy
    chief: bool
    run_dir: str
    worker_dir: str | None
    net: keras.Model | None = None
    search: BilevelSearch | None = None
    eval_data: tf.data.Dataset | None = None
    summary_extra: dict = dataclasses.field(default_factory=dict)

    def validation_logs(self) -> dict:
        return self.search.evaluate(self.eval_data, verbose=0, return_dict=True)

    def validation_perplexity(self) -> float:
        return float(np.exp(self.validation_logs()["loss"]))

    def run(self, flags_text, extra_callbacks):
        cfg, space, data, chief, run_dir = self.cfg, self.space, self.data, self.chief, self.run_dir
        started = time.time()
        steps_per_epoch = min(cfg.steps_per_epoch, data.steps_per_pass) if cfg.steps_per_epoch else data.steps_per_pass
        if cfg.deterministic:
            make_deterministic()
        keras.utils.set_random_seed(cfg.seed)
        with self.strategy.scope():
            with fast_paths.policy(cfg.precision):
                self.net = net = space.build_supernet(cfg, data)
            self.search = search = bilevel_search(net, cfg, steps_per_epoch, space.arch_beta_1)
        initial = self._initial_weights()  # before a resumed run restores its alphas
        manager, start_step = runs.search_checkpoint(search, run_dir, chief, self.worker_dir, cfg.resume,
                                                     cfg.verbose, steps_per_epoch,
                                                     validation.identity(cfg, validation.SEARCH_IDENTITY))
        end_epoch = cfg.until_epoch or cfg.epochs
        if start_step > steps_per_epoch * end_epoch or (start_step == steps_per_epoch * end_epoch and all(
                os.path.exists(os.path.join(run_dir, f)) for f in ("genotype.json", "alphas.npz", "summary.json"))):
            raise UserError(f"{run_dir} already finished its {end_epoch} epochs; raise --epochs to continue it")
        if chief and flags_text is not None:  # after a successful restore: a failed resume keeps the run's flags
            runs.write_flags(run_dir, flags_text)
        self.eval_data = data.eval_data.take(cfg.val_steps) if cfg.val_steps else data.eval_data
        self.summary_extra.update(space.before_search(self))

        alpha_path = os.path.join(run_dir, "alpha_history.npz")
        alpha_hist = dict(np.load(alpha_path)) if (cfg.resume and os.path.exists(alpha_path)) else {}
        last_logs = {}

        measures_path = os.path.join(run_dir, "decisiveness.json")
        measures = runs.read_json(measures_path) if cfg.resume else []
        best_path = os.path.join(run_dir, "best_validation.json")
        best = runs.read_json(best_path, {}) if cfg.resume else {}

        def on_epoch_end(epoch, logs):
            last_logs.update(epoch=epoch + 1, **{k: float(v) for k, v in logs.items() if k.startswith("val_")})
            genotype = net.genotype()
            measures[epoch:] = [{"epoch": epoch + 1, **self._decisiveness(initial)}]
            # into the epoch's logs: the callbacks after this one record them (epochs.json, TensorBoard)
            logs.update({k: v for k, v in measures[-1].items() if k in decisiveness.LOGGED})
            val_loss = float(logs.get("val_loss", float("nan")))
            improved = not best or val_loss < best["val_loss"] or best["epoch"] > epoch  # (> epoch: a rerun epoch)
            if improved and np.isfinite(val_loss):
                best.clear()
                best.update(epoch=epoch + 1, val_loss=val_loss, genotype=genotype.to_dict())
            for kind, weights in net.mixing_weights().items():
                prev = alpha_hist.get(kind, np.zeros((0,) + weights.shape))[:epoch]
                alpha_hist[kind] = np.concatenate([prev, weights[None]], 0)
            if chief:
                runs.atomic_write_json(measures_path, measures)
                if best:
                    runs.atomic_write_json(best_path, best)
                runs.atomic_savez(alpha_path, **alpha_hist)
                runs.atomic_write(os.path.join(run_dir, "genotypes", f"epoch_{epoch + 1:03d}.json"),
                                  genotype.to_json())
            if cfg.verbose:
                print(self._epoch_line(epoch, logs, genotype, measures[-1]), flush=True)

        metric = space.metric
        history_cb = runs.StepHistory(os.path.join(run_dir if chief else self.worker_dir, "history.csv"),
                                      [c.replace("accuracy", metric) for c in STEP_LOGS], search.search_step,
                                      resume_step=start_step, blank_unless={"batch_alpha_loss": "alpha_step"})
        # A diverged step stops the run before anything after the history saves it.
        diverged = NonFiniteGuard(("batch_loss", "fi", "batch_alpha_loss"), search.search_step,
                                  applies_if={"batch_alpha_loss": "alpha_step", "fi": "weight_step"},
                                  advice=": lower --learning_rate or --arch_learning_rate, then --resume")
        # The epoch's files before its end-of-epoch checkpoint: a kill between them never shifts them.
        callbacks = [history_cb, diverged, runs.EpochSummary(on_epoch_end),
                     runs.StepCheckpoint(manager, search.search_step, cfg.checkpoint_every, is_chief=chief,
                                         steps_per_epoch=steps_per_epoch), *extra_callbacks]
        done_epochs, offset = divmod(start_step, steps_per_epoch)
        if cfg.resume and done_epochs and not offset and validation.epoch_files_missing(
                run_dir, done_epochs, alpha_hist, measures):  # killed before the last epoch's files
            on_epoch_end(done_epochs - 1, {f"val_{k}": v for k, v in self.validation_logs().items()})
        if chief:
            # without the step's graph (as training): tens of thousands of nodes that TensorBoard's graph
            # tab does not draw usefully, 5 MB and ~1 s of a tiny search's first step to write
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch",
                                                         write_graph=False))
            # per-step TensorBoard scalars, alpha heatmaps and the genotype; report.html and the
            # search's own pictures at epoch ends, when the report's pacer redraws
            callbacks += [tb_steps.for_search(run_dir, search, net, space, metric),
                          report.report_callback(run_dir, "search", search.search_step,
                                                 draw_first=lambda: self._write_plots(alpha_hist, net.genotype()))]
        if cfg.verbose == 1 and chief:  # a bar with the numbers that matter, not every log
            callbacks.append(ProgressBar(("loss", metric, "alpha_steps", "fi_ewma", "tau"), steps_per_epoch,
                                         cfg.epochs))
        runs.fit_run(search, data.weight_stream, search.search_step, start_step, steps_per_epoch, end_epoch,
                     callbacks, closing=[history_cb],
                     before_segment=lambda: search.set_alpha_stream(data.alpha_stream(int(search.alpha_steps.numpy()))),
                     validation_data=self.eval_data, verbose=2 if (cfg.verbose == 2 and chief) else 0)

        if "val_loss" not in last_logs:  # nothing left to run (a finished run writing its missing files)
            last_logs.update({f"val_{k}": float(v) for k, v in self.validation_logs().items()})
        self.summary_extra.update(space.after_search(self))
        genotype = last_genotype = net.genotype()
        if space.keeps_best_validation_genotype and best:
            genotype = type(last_genotype).from_dict(best["genotype"])
            self.summary_extra.update(best_val_epoch=best["epoch"], best_val_loss=best["val_loss"],
                                      genotype_last=last_genotype.to_dict())
        steps_done = int(search.search_step.numpy())
        summary = {
            "search_space": space.name,
            "genotype": genotype.to_dict(),
            "steps": steps_done,
            "alpha_steps": int(search.alpha_steps.numpy()),
            "alpha_step_rate": float(search.alpha_steps.numpy()) / max(steps_done, 1),
            "fi_ewma": float(search.fi_ewma.numpy()), "tau": float(search.tau.numpy()),
            "wall_seconds_this_process": round(time.time() - started, 1),
            "network_weights": int(sum(np.prod(w.shape) for w in net.trainable_weights)),
            **data.summary, "steps_per_epoch": steps_per_epoch,
            "epochs_done": steps_done // steps_per_epoch,
            # the supernet on the validation data at the end of the last epoch run (keras-tuner's objective)
            **{k: v for k, v in last_logs.items() if k.startswith("val_")},
            **self.summary_extra,
            "decisiveness": self._decisiveness(initial),
        }
        if chief:
            runs.atomic_savez(os.path.join(run_dir, "alphas.npz"), **space.alpha_arrays(net))
            runs.atomic_write(os.path.join(run_dir, "genotype.json"), genotype.to_json())
            if space.keeps_best_validation_genotype:
                runs.atomic_write(os.path.join(run_dir, "genotype_last.json"), last_genotype.to_json())
            runs.atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
            self._write_plots(alpha_hist, genotype)
            report.write_report(run_dir, "search", finished=True)  # + schedule.png, curves, heatmaps
        summary["run_dir"] = run_dir
        return summary

    def _initial_weights(self) -> dict:
        """The supernet's mixing weights at initialisation (alphas_initial.npz; a resumed
        run reads them back)."""
        path = os.path.join(self.run_dir, "alphas_initial.npz")
        if self.cfg.resume and os.path.exists(path):
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        weights = self.net.mixing_weights()
        if self.chief and not self.cfg.resume:
            runs.atomic_savez(path, **weights)
        return weights

    def _decisiveness(self, initial) -> dict:
        return decisiveness.decisiveness(self.net.mixing_weights(), initial, **self.net.discretize_kwargs())

    def _epoch_line(self, epoch, logs, genotype, measure):
        metric, fmt = self.space.metric, self.space.format_metric
        nan = float("nan")
        val = f" val_{metric} {fmt(logs[f'val_{metric}'])}" if f"val_{metric}" in logs else ""
        cells = "".join(f"\n  {line}" for line in self.space.genotype_lines(genotype))
        return (f"epoch {epoch + 1}: loss {logs.get('loss', nan):.4f} {metric} {fmt(logs.get(metric, nan))}{val} "
                f"alpha steps {int(self.search.alpha_steps.numpy())}/{int(self.search.search_step.numpy())} "
                f"{decisiveness.describe(measure)}{cells}")

    def _write_plots(self, alpha_hist, genotype):
        """The search's own pictures: each cell's op weights over the epochs and the
        genotype's cells (write_report draws the rest, schedule.png included)."""
        pdir = os.path.join(self.run_dir, "plots")
        for kind, hist in alpha_hist.items():
            if len(hist):
                plots.plot_alpha_history(os.path.join(pdir, f"alphas_{kind}.png"), hist, self.net.primitives,
                                         f"{kind} cell: mixing weights per edge", x=np.arange(1, len(hist) + 1))
        self.space.draw_genotype(pdir, genotype)

"""python -m dprime_tf.tune: keras-tuner over DARTS-PRIME's hyperparameters.

    python -m dprime_tf.tune --flagfile=configs/tune.flags          # tiny random search, a few minutes
    python -m dprime_tf.tune --flagfile=configs/tune.flags --tuner=hyperband --epochs=9
    python -m dprime_tf.search --flagfile=<tune_dir>/best.flags     # a search with the best settings

Every search flag (--dataset, --layers, --epochs, ...) sets the base search
that each trial runs; --tune picks the hyperparameters keras-tuner varies
(ranges in dprime_tf/tuning.py: SPACE). Results: <tune_dir>/<project>/
(keras-tuner's oracle.json, one trial_<id>/ per trial with trial.json and the
trial's search run directory), <tune_dir>/best.flags (a flagfile for
dprime_tf.search), <tune_dir>/best.json, and the trials as a table and a plot
(<tune_dir>/trials.csv, plots/trials.png, report.html). Rerunning the same command
resumes: finished trials are kept, an interrupted one resumes from its last
checkpoint. --overwrite starts over.

Distributed tuning (keras-tuner's own): one chief process runs the oracle,
workers run trials; all share --tune_dir (a shared filesystem across hosts):

    KERASTUNER_TUNER_ID=chief   KERASTUNER_ORACLE_IP=<chief ip> KERASTUNER_ORACLE_PORT=8000 python -m dprime_tf.tune ...
    KERASTUNER_TUNER_ID=tuner0  KERASTUNER_ORACLE_IP=<chief ip> KERASTUNER_ORACLE_PORT=8000 python -m dprime_tf.tune ...
"""

from __future__ import annotations

from dprime_tf.cli import prepare_tensorflow, run_main

prepare_tensorflow()  # TensorFlow itself loads in main(), after the flags are checked

from absl import flags  # noqa: E402

from dprime_tf import search as _search_flags  # noqa: E402,F401  (defines the search flags)

FLAGS = flags.FLAGS

_TUNABLE = ("reg", "rho", "schedfreq", "threshold_multiplier", "learning_rate", "arch_learning_rate")
flags.DEFINE_enum("tuner", "random", ("random", "bayesian", "hyperband"), "keras-tuner algorithm.")
flags.DEFINE_list("tune", list(_TUNABLE), f"Hyperparameters to tune (any of {', '.join(_TUNABLE)}); the others "
                  "keep their flag values.")
flags.DEFINE_integer("max_trials", 10, "Trials (random, bayesian). Hyperband's count follows from --epochs, "
                     "--hyperband_factor and --hyperband_iterations.")
flags.DEFINE_integer("hyperband_factor", 3, "Hyperband: reduction factor between rounds.")
flags.DEFINE_integer("hyperband_iterations", 1, "Hyperband: brackets iterations.")
flags.DEFINE_integer("max_retries_per_trial", 0, "Retries of a trial that failed with an error.")
flags.DEFINE_string("tune_dir", None, "Results directory (default runs/tune-<timestamp>).")
flags.DEFINE_string("project_name", "dprime", "keras-tuner project (a sub-directory of --tune_dir).")
flags.DEFINE_bool("overwrite", False, "Discard an existing project in --tune_dir instead of resuming it.")
flags.DEFINE_string("best_flags", None, "Where to write the best settings (default <tune_dir>/best.flags).")


def main(argv):
    from dprime_tf.cli import no_positional_arguments
    from dprime_tf.errors import UserError
    no_positional_arguments(argv)
    if FLAGS.resume:
        raise UserError("--resume is not a tuning flag: rerun the same command (same --tune_dir) to resume")
    if FLAGS.strategy == "multi_worker":
        raise UserError("--strategy=multi_worker is not supported inside trials: run several tuner workers "
                        "(KERASTUNER_TUNER_ID, see --help) and/or --strategy=mirrored on multi-GPU hosts")
    import dataclasses
    import os
    import time

    from dprime_tf import cli
    from dprime_tf.search_config import validate
    tune_dir = os.path.abspath(FLAGS.tune_dir or cli.default_run_dir("tune"))
    base = dataclasses.replace(_search_flags.config_from_flags(), output_dir=os.path.join(tune_dir, "unused"))
    validate(base)  # before TensorFlow starts: bad input fails fast, in one line
    cli.import_tensorflow_quietly()

    from dprime_tf import runs, tuning
    from dprime_tf.distribute import make_strategy
    strategy = make_strategy(FLAGS.strategy, FLAGS.cpu_devices)
    hypermodel = tuning.SearchHyperModel(base, FLAGS.tune, strategy)
    oracle = tuning.make_oracle(FLAGS.tuner, hypermodel.objective, max_trials=FLAGS.max_trials, max_epochs=base.epochs, seed=base.seed,
                                hyperband_factor=FLAGS.hyperband_factor,
                                hyperband_iterations=FLAGS.hyperband_iterations,
                                max_retries_per_trial=FLAGS.max_retries_per_trial)
    role = os.environ.get("KERASTUNER_TUNER_ID", "")
    tuning.oracle_address(os.environ, role)  # 127.0.0.1 unless KERASTUNER_ORACLE_IP gives one; prints the port
    distributed = "KERASTUNER_ORACLE_IP" in os.environ
    chief = not distributed or "chief" in role
    started = time.time()
    try:
        tuner = tuning.SearchTuner(oracle, hypermodel, directory=tune_dir, project_name=FLAGS.project_name,
                                   overwrite=FLAGS.overwrite and chief)
    except RuntimeError as e:  # e.g. a project made with another --tune/--tuner
        raise UserError(f"{e}") from None
    if chief and tuner.remaining_trials is not None:
        print(f"tuning in {tuner.project_dir}: {FLAGS.tuner}, {len(tuner.oracle.trials)} trial(s) on record")
    tuner.search(verbose=FLAGS.verbose)
    print(f"tuner {role or 'local'} done in {time.time() - started:.0f} s")
    if not chief:
        return  # the chief writes the results
    report = tuning.write_best_flags(tuner, FLAGS.best_flags or os.path.join(tune_dir, "best.flags"))
    runs.atomic_write_json(os.path.join(tune_dir, "best.json"), report)
    from dprime_tf import tuning_report  # trials.csv, plots/trials.png, report.html
    print(tuning_report.write(tune_dir, tuner.project_dir, report, hypermodel.objective.direction))
    print(f"best trial {report['trial_id']}: {report['objective']} {report['score']:.4f} "
          f"{json_line(report['hyperparameters'])}")
    print(f"best flags: {report['flagfile']}")
    print(f"  python -m dprime_tf.search --flagfile={report['flagfile']} --output_dir=runs/<name>")


def json_line(obj):
    import json
    return json.dumps(obj, default=str)


def console_main():
    """The `dprime-tune` console script: `python -m dprime_tf.tune`."""
    run_main(main)


if __name__ == "__main__":
    run_main(main)

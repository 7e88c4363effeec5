"""python -m dprime_tf.study: the paper's experiment, methods x seeds -> search -> train -> test.

    python -m dprime_tf.study --flagfile=configs/study_smoke.flags --study_dir=runs/smoke   # minutes
    python -m dprime_tf.study --flagfile=configs/study_cpu.flags --study_dir=runs/study     # ~1 hour, 2 cores
    python -m dprime_tf.study --flagfile=configs/study_cifar.flags --study_dir=/shared/study  # GPUs, days

Every trial searches a cell with one method (--methods: darts, prime, and the
ablations dynamic, prox, admm; see dprime_tf/study_config.py METHODS) and one seed
(--seeds), trains the found genotype (the --train_* flags; unset ones take
`python -m dprime_tf.train`'s defaults), and scores it on the dataset's
held-out test split. --baselines adds trials that train a published genotype
(DARTS_V2) or a random one per seed. The search flags (--dataset, --epochs,
--layers, ...) are shared by all trials; --seed is per trial (--seeds).

Results in --study_dir: results.csv, results.md (mean +- std per method),
plots/, report.html, and trials/<method>/seed<N>/{search,train}/ (ordinary run
directories). Rerunning the same command resumes (finished trials are kept; an
interrupted one continues from its checkpoints); adding seeds or methods
extends the study.

Distributed (keras-tuner's chief/worker mode; all processes share --study_dir):

    KERASTUNER_TUNER_ID=chief  KERASTUNER_ORACLE_IP=<chief ip> KERASTUNER_ORACLE_PORT=8000 python -m dprime_tf.study ...
    KERASTUNER_TUNER_ID=tuner0 KERASTUNER_ORACLE_IP=<chief ip> KERASTUNER_ORACLE_PORT=8000 python -m dprime_tf.study ...
"""

from __future__ import annotations

from dprime_tf.cli import prepare_tensorflow, run_main

prepare_tensorflow()  # TensorFlow itself loads in main(), after the flags are checked

from absl import flags  # noqa: E402

from dprime_tf import search as _search_flags  # noqa: E402,F401  (defines the search flags)
from dprime_tf import spaces, study_config  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("study_dir", None, "The study's directory (default runs/study-<timestamp>); rerun with the same "
                    "one to resume or extend it.")
flags.DEFINE_list("methods", ["darts", "prime"], f"Search methods (any of {', '.join(study_config.METHODS)}).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: each method searches (and each baseline trains) once per seed.")
flags.DEFINE_list("baselines", [], "Genotypes trained like the searched ones: random (drawn per seed) and/or "
                  "published names (DARTS_V2, DARTS_V1).")
flags.DEFINE_integer("max_retries_per_trial", 0, "Retries of a trial that failed with an error.")


def _define_train_flags():
    for field in study_config.train_fields():
        kind = str(field.type)
        name, helptext = f"train_{field.name}", f"Training: --{field.name} of python -m dprime_tf.train."
        if "bool" in kind:
            flags.DEFINE_bool(name, None, helptext)
        elif "int" in kind:
            flags.DEFINE_integer(name, None, helptext)
        elif "float" in kind:
            flags.DEFINE_float(name, None, helptext)
        else:
            flags.DEFINE_string(name, None, helptext)


_define_train_flags()


def _seeds(values) -> tuple[int, ...]:
    from dprime_tf.errors import UserError
    try:
        seeds = tuple(int(v) for v in values)
    except ValueError:
        raise UserError(f"--seeds must be integers, got {','.join(values)}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must be distinct integers >= 0, got {','.join(values)}")
    return seeds


def study_from_flags() -> study_config.Study:
    import dataclasses
    import os

    from dprime_tf import cli
    from dprime_tf.errors import UserError
    from dprime_tf.search_config import validate
    for name, why in (("resume", "rerun the same command (same --study_dir) to resume"),
                      ("output_dir", "trials live in --study_dir"), ("seed", "seeds are per trial: use --seeds")):
        if FLAGS[name].present:
            raise UserError(f"--{name} is not a study flag: {why}")
    if FLAGS.strategy == "multi_worker":
        raise UserError("--strategy=multi_worker is not supported inside trials: run several study workers "
                        "(KERASTUNER_TUNER_ID, see --help) and/or --strategy=mirrored on multi-GPU hosts")
    study_dir = os.path.abspath(FLAGS.study_dir or cli.default_run_dir("study"))
    if os.path.exists(study_dir) and not os.path.isdir(study_dir):
        raise UserError(f"--study_dir {study_dir} is a file, not a directory")
    search = dataclasses.replace(_search_flags.config_from_flags(), output_dir=os.path.join(study_dir, "unused"))
    seeds = _seeds(FLAGS.seeds)
    space = spaces.for_dataset(search.dataset)
    methods = tuple(study_config.method_names(FLAGS.methods, FLAGS.baselines, space))
    train = {f.name: FLAGS[f"train_{f.name}"].value for f in study_config.train_fields()
             if FLAGS[f"train_{f.name}"].value is not None}
    study = study_config.Study(study_dir, methods, seeds, search, train)
    unused = os.path.join(study_dir, "unused")  # settings only: trial directories may hold runs already
    for method in methods:  # every trial's settings, before anything runs
        if method in study_config.METHODS:
            validate(dataclasses.replace(study.search_config(method, seeds[0]), output_dir=unused))
    from dprime_tf import train_job
    train_job.validate(dataclasses.replace(study.train_config("DARTS_V2", methods[0], seeds[0]), output_dir=unused))
    return study


def main(argv):
    import os
    import time

    from dprime_tf.cli import import_tensorflow_quietly, no_positional_arguments
    from dprime_tf.errors import UserError
    no_positional_arguments(argv)
    study = study_from_flags()  # before TensorFlow starts: bad input fails fast, in one line
    import_tensorflow_quietly()
    from dprime_tf import studies, tuning
    from dprime_tf.distribute import make_strategy
    role = os.environ.get("KERASTUNER_TUNER_ID", "")
    tuning.oracle_address(os.environ, role)
    chief = "KERASTUNER_ORACLE_IP" not in os.environ or "chief" in role
    if not chief and not os.path.exists(os.path.join(study.study_dir, "study.json")):
        raise UserError(f"{study.study_dir}/study.json is missing: start the chief first")
    studies.check_settings(study)
    strategy = make_strategy(FLAGS.strategy, FLAGS.cpu_devices)
    total = len(study.methods) * len(study.seeds)
    started = time.time()
    print(f"study in {study.study_dir}: {', '.join(study.methods)} x seeds {', '.join(map(str, study.seeds))} "
          f"({total} trials, {len(studies.collect(study))} finished before)", flush=True)
    try:
        tuner = studies.StudyTuner(study, strategy, log=lambda line: print(line, flush=True),
                                   max_retries_per_trial=FLAGS.max_retries_per_trial)
    except RuntimeError as e:
        raise UserError(f"{e}") from None
    tuner.search(verbose=0)
    rows = studies.write_results(study)
    print(f"study {role or 'local'} done in {time.time() - started:.0f} s: {len(rows)}/{total} trials finished")
    if chief:
        with open(os.path.join(study.study_dir, "results.md")) as f:
            print(f.read(), end="")
        print(f"results: {study.study_dir}/results.csv, results.md, report.html")
        if len(rows) < total:
            raise UserError(f"{total - len(rows)} trial(s) failed (see above); rerun the command to retry them")


def console_main():
    """The `dprime-study` console script: `python -m dprime_tf.study`."""
    run_main(main)


if __name__ == "__main__":
    run_main(main)

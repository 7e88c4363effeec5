"""python -m dprime_tf.search: a DARTS-PRIME cell search.

    python -m dprime_tf.search                                   # embedded sample, small and quick
    python -m dprime_tf.search --flagfile=configs/cifar.flags    # the paper's CIFAR-10 search
    python -m dprime_tf.search --output_dir=runs/x --resume      # continue an interrupted run
    python -m dprime_tf.search --flagfile=configs/ptb_quick.flags  # a recurrent cell on embedded PTB text
"""

from __future__ import annotations

from dprime_tf import cli
from dprime_tf.cli import prepare_tensorflow, run_main

prepare_tensorflow()  # TensorFlow itself loads in main(), after the flags are checked

from absl import flags  # noqa: E402

from dprime_tf import constants  # noqa: E402
from dprime_tf import fast_paths  # noqa: E402
from dprime_tf.constants import STRATEGIES  # noqa: E402

FLAGS = flags.FLAGS

# Data
flags.DEFINE_string("dataset", "sample", "sample (embedded CIFAR-10 subset), cifar10, cifar100, or folder:<path> "
                    "(one sub-folder of images per class); a text corpus searches a recurrent cell: ptb_sample "
                    "(embedded Penn Treebank text), ptb (ptb.*.txt in --data_dir) or textdir:<path>.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory for cifar10/cifar100.")
flags.DEFINE_integer("image_size", None, "Resize folder images to this size (default 32; CIFAR is 32).")
# Run
flags.DEFINE_string("output_dir", None, "Run directory (default runs/search-<timestamp>).")
flags.DEFINE_bool("resume", False, "Continue the interrupted run in --output_dir from its last checkpoint.")
flags.DEFINE_integer("epochs", 50, "Search epochs (T).")
flags.DEFINE_integer("steps_per_epoch", 0, "Cap on steps per epoch (0: one pass over the weight split).")
flags.DEFINE_integer("batch_size", 64, "Global batch size (split across replicas).")
flags.DEFINE_integer("seed", 2, "Random seed (weights, alphas, data order, augmentation).")
flags.DEFINE_integer("val_steps", 0, "Validation batches per epoch from the alpha split (0: all).")
flags.DEFINE_integer("checkpoint_every", 50, "Checkpoint every N steps (and at each epoch end).")
flags.DEFINE_bool("deterministic", False, "Bitwise reproducible runs (also across --resume): op determinism, one "
                  "thread per op and, on CPUs, oneDNN kernels off. Slower.")
flags.DEFINE_integer("verbose", 1, "0 silent, 1 progress bar, 2 one line per epoch.")
flags.DEFINE_enum("strategy", "auto", STRATEGIES, "tf.distribute strategy: auto (all GPUs of this host), "
                  "default (one device), mirrored, multi_worker (TF_CONFIG).")
flags.DEFINE_integer("worker_timeout", 60, "multi_worker: seconds without a heartbeat from a worker before the "
                     "others stop with an error (also bounds the wait for all workers at start-up: 10x).")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into N logical devices (to exercise the multi-replica "
                     "path without GPUs).")
# Network
flags.DEFINE_integer("layers", 8, "Cells in the search network (L).")
flags.DEFINE_integer("init_channels", 16, "Initial channels (C).")
# The flags only one search space has (the recurrent one's: --emsize, --bptt, ...)
import importlib  # noqa: E402

from dprime_tf import spaces  # noqa: E402

for _space in spaces.registered():
    if _space.search_flags_module:
        flags.adopt_module_key_flags(importlib.import_module(_space.search_flags_module))
# Method
flags.DEFINE_enum("schedule", "dynamic", constants.SCHEDULES, "Alpha-step schedule: dynamic (DARTS-PRIME) or fixed.")
flags.DEFINE_enum("split", "dynamic", constants.SPLITS, "Train/alpha split: dynamic (1-1/(1+schedfreq)) or half.")
flags.DEFINE_enum("reg", "prox", constants.REGULARIZERS, "Alpha-loss regularizer: prox (DARTS-PRIME), admm, none.")
flags.DEFINE_float("rho", constants.RHO, "Regularization strength rho.")
flags.DEFINE_integer("schedfreq", constants.SCHEDFREQ, "Fixed: alpha step every N steps. Dynamic: target ratio 1/(N+1).")
flags.DEFINE_float("threshold_multiplier", constants.THRESHOLD_MULTIPLIER, "Dynamic schedule's threshold multiplier m.")
flags.DEFINE_float("init_alpha_threshold", constants.TAU_INIT, "Dynamic schedule's starting threshold tau.")
flags.DEFINE_float("fi_ewma_beta", constants.FI_EWMA_BETA, "EWMA weight of the newest FI (search space default: "
                   "0.2 for images, 1.0 = raw FI for text, as the official scripts).")
flags.DEFINE_integer("admm_freq", constants.ADMM_FREQ, "ADMM: Z/U update every N alpha steps.")
flags.DEFINE_float("zu_ewma", constants.ZU_EWMA, "ADMM: U decay (1.0, as the official script runs it).")
# Optimizers
flags.DEFINE_float("learning_rate", 0.025, "Weight SGD learning rate (cosine-annealed per epoch).")
flags.DEFINE_float("learning_rate_min", 0.001, "Final weight learning rate.")
flags.DEFINE_float("momentum", 0.9, "Weight SGD momentum.")
flags.DEFINE_float("weight_decay", 3e-4, "Weight L2 (added to the gradient, as the reference).")
flags.DEFINE_float("grad_clip", 5.0, "Global-norm clip of the weight gradients.")
flags.DEFINE_float("arch_learning_rate", 3e-4, "Alpha Adam learning rate.")
flags.DEFINE_float("arch_weight_decay", 1e-3, "Alpha L2 (added to the gradient).")
# GPU fast paths (image searches)
fast_paths.define_flags(flags)
fast_paths.define_recompute_flag(flags)
flags.adopt_module_key_flags(fast_paths)  # recorded in the run's flags.txt, re-read by --resume


def config_from_flags():
    """The SearchConfig of the flags. Settings the command line leaves unset take
    the search space's defaults (the recurrent space's batch size, learning
    rates, ...), written back into the flags so that flags.txt records them."""
    import dataclasses

    from dprime_tf.search_config import SearchConfig, resolve
    values = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(SearchConfig) if f.name in FLAGS}
    unset = {name for name in values if not FLAGS[name].present}
    values.update({name: None for name in unset if name in spaces.base.SPACE_DEFAULTED})
    values["output_dir"] = values.get("output_dir") or cli.default_run_dir("search")
    cfg = resolve(SearchConfig(**values))
    for name in unset:
        FLAGS[name].value = getattr(cfg, name)
    return cfg


def main(argv):
    import os
    import sys

    from dprime_tf.errors import UserError
    cli.no_positional_arguments(argv)
    cli.reload_flags_for_resume(FLAGS)
    if FLAGS.strategy == "multi_worker" and not FLAGS.output_dir:
        raise UserError("--strategy=multi_worker needs --output_dir (the same on every worker; the chief writes it)")
    from dprime_tf.search_config import validate
    cfg = config_from_flags()
    validate(cfg)  # before TensorFlow starts: bad input fails fast, in one line
    if FLAGS.strategy == "multi_worker":
        from dprime_tf.tf_config import read_tf_config
        read_tf_config()  # (the run directory is the chief's: checked by the chief)
    else:
        from dprime_tf import runlock
        runlock.check_run_dir(cfg.output_dir, cfg.resume)
    cli.import_tensorflow_quietly()
    # The strategy comes next: MultiWorkerMirroredStrategy must be created
    # before any other TensorFlow op (nothing above runs one).
    from dprime_tf.distribute import is_chief, make_strategy
    strategy = make_strategy(FLAGS.strategy, FLAGS.cpu_devices, worker_timeout=FLAGS.worker_timeout)
    from dprime_tf.search_job import run_search
    if cfg.deterministic:
        from dprime_tf.runs import make_deterministic
        make_deterministic()
    flags_text = cli.module_flags_text(FLAGS, __name__, exclude={"resume"},
                                       extra=[] if FLAGS.output_dir else [f"--output_dir={os.path.abspath(cfg.output_dir)}"])
    from dprime_tf.distribute import WORKER_FAILURES, is_multi_worker, is_worker_failure, worker_failure_message
    try:
        summary = run_search(cfg, strategy, flags_text=flags_text)
    except WORKER_FAILURES as e:
        if not (is_multi_worker(strategy) and is_worker_failure(e)):
            raise
        # Exit now: a normal interpreter exit would wait in TensorFlow's
        # shutdown (its coordination service) for the worker that is gone.
        print(f"error: {worker_failure_message(e)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)
    if not is_chief(strategy):
        print(f"\nworker done; the chief wrote the run directory {summary['run_dir']}")
        return
    print(f"\nrun directory: {summary['run_dir']}")
    print(f"alpha steps: {summary['alpha_steps']} of {summary['steps']} steps ({summary['alpha_step_rate']:.3f})")
    print("genotype:", __import__("json").dumps(summary["genotype"]))
    from dprime_tf.decisiveness import advice
    print(advice(summary["decisiveness"]))


def console_main():
    """The `dprime-search` console script: `python -m dprime_tf.search`."""
    run_main(main)


if __name__ == "__main__":
    run_main(main)

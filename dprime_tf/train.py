"""python -m dprime_tf.train: train a final network from a genotype (SPEC section 7).

    python -m dprime_tf.train --genotype=DARTS_V2 --flagfile=configs/cifar_eval.flags   # the paper's recipe
    python -m dprime_tf.train --genotype=runs/search-X --flagfile=configs/train_quick.flags  # minutes, on the sample
    python -m dprime_tf.train --output_dir=runs/train-X --resume [--epochs=N]           # continue a run

--genotype: a published name (DARTS_V2, DARTS_V1), a genotype JSON file, or a
search run directory holding genotype.json. The run directory (see
dprime_tf/train_job.py) ends with model.keras (for `python -m export`) and
summary.json; `python -m dprime_tf.evaluate --model=<run>` scores it.
"""

from __future__ import annotations

from dprime_tf import cli
from dprime_tf.cli import (module_flags_text, no_positional_arguments, quiet_tensorflow, reload_flags_for_resume,
                           run_main)

quiet_tensorflow()

import os  # noqa: E402

from absl import flags  # noqa: E402

from dprime_tf.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("genotype", None, "Architecture: a published name (DARTS_V2, DARTS_V1), a genotype JSON "
                    "file, or a search run directory holding genotype.json.")
# Data
flags.DEFINE_string("dataset", "sample", "sample (embedded CIFAR-10 subset), cifar10, cifar100, or folder:<path> "
                    "(one sub-folder of images per class).")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory for cifar10/cifar100.")
flags.DEFINE_integer("image_size", None, "Resize images to this size (default: native; 32 for folders). "
                     "The auxiliary head needs 32 (or --noauxiliary).")
flags.DEFINE_float("val_fraction", 0.1, "Hold out this fraction of the training images (the last ones; "
                   "class-balanced) for per-epoch validation; 0 = none.")
# Run
flags.DEFINE_string("output_dir", None, "Run directory (default runs/train-<timestamp>).")
flags.DEFINE_bool("resume", False, "Continue the run in --output_dir from its last checkpoint (its flags.txt "
                  "is re-read; flags given here override it, e.g. a larger --epochs).")
flags.DEFINE_integer("epochs", 600, "Training epochs.")
flags.DEFINE_integer("steps_per_epoch", 0, "Cap on steps per epoch (0: one pass over the training images).")
flags.DEFINE_integer("batch_size", 96, "Global batch size.")
flags.DEFINE_integer("seed", 0, "Random seed (weights, data order, augmentation).")
flags.DEFINE_integer("checkpoint_every", 200, "Checkpoint every N steps (and at each epoch end).")
flags.DEFINE_integer("verbose", 1, "0 silent, 1 progress bar + epoch line, 2 Keras' epoch line + epoch line.")
flags.DEFINE_bool("deterministic", False, "Bitwise reproducible runs (also across --resume): op determinism, one "
                  "thread per op and, on CPUs, oneDNN kernels off. Slower.")
flags.DEFINE_bool("mixed_precision", False, "Keras 'mixed_float16' policy with loss scaling (for GPUs; slow on CPUs).")
flags.DEFINE_enum("strategy", "auto", ("auto", "default", "mirrored"), "tf.distribute strategy: auto (all GPUs "
                  "of this host), default (one device), mirrored.")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into N logical devices (exercises the multi-replica path).")
# Network
flags.DEFINE_integer("init_channels", 36, "Initial channels (C).")
flags.DEFINE_integer("layers", 20, "Cells (L).")
flags.DEFINE_bool("auxiliary", True, "Auxiliary head after cell 2L/3.")
flags.DEFINE_float("auxiliary_weight", 0.4, "Weight of the auxiliary head's loss.")
flags.DEFINE_float("drop_path_prob", 0.2, "Drop-path probability, scaled linearly from 0 over the epochs.")
flags.DEFINE_integer("cutout", 16, "Cutout length (0 = off).")
# Optimizer
flags.DEFINE_float("learning_rate", 0.025, "SGD learning rate (cosine-annealed per epoch).")
flags.DEFINE_float("learning_rate_min", 0.0, "Final learning rate (DARTS: 0).")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 3e-4, "L2 added to the gradient (as the reference).")
flags.DEFINE_float("grad_clip", 5.0, "Global-norm gradient clip (0 = none).")


def _flags_text(run_dir):
    """This module's flags as a flagfile (without --resume), pointing at the run's own genotype copy."""
    return module_flags_text(FLAGS, __name__, exclude={"resume", "genotype", "output_dir", "cpu_devices"},
                             extra=[f"--genotype={os.path.join(run_dir, 'genotype.json')}", f"--output_dir={run_dir}"])


def config_from_flags():
    from dprime_tf.train_job import TrainConfig
    return cli.config_from_flags(FLAGS, TrainConfig, "train")


def main(argv):
    no_positional_arguments(argv)
    reload_flags_for_resume(FLAGS)
    if FLAGS.cpu_devices > 1 and FLAGS.strategy != "mirrored":
        raise UserError("--cpu_devices needs --strategy=mirrored")
    from dprime_tf.train_job import import_tensorflow_quietly, validate
    cfg = config_from_flags()
    validate(cfg)  # before TensorFlow starts: bad input fails fast, in one line
    import_tensorflow_quietly()

    from dprime_tf.distribute import make_strategy
    from dprime_tf.train_job import run_training
    strategy = make_strategy(FLAGS.strategy, FLAGS.cpu_devices)
    summary = run_training(cfg, strategy, flags_text=_flags_text(os.path.abspath(cfg.output_dir)))
    val = (f"val_acc {summary['val_accuracy']:.4f} val_loss {summary['val_loss']:.4f} "
           f"({summary['val_images']} held-out images), " if summary["val_accuracy"] is not None else "")
    print(f"\nrun directory: {summary['run_dir']}")
    print(f"{val}{summary['parameters'] / 1e6:.3f}M parameters, {summary['wall_time_seconds']:.0f}s training")
    print(f"model: {summary['model']}")


if __name__ == "__main__":
    run_main(main)

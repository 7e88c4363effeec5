"""python -m dprime_tf.train: train a final network from a genotype (SPEC section 7),
a CNN on images or a recurrent language model on text.

    python -m dprime_tf.train --genotype=DARTS_V2 --flagfile=configs/cifar_eval.flags   # the paper's CNN recipe
    python -m dprime_tf.train --genotype=runs/search-X --flagfile=configs/train_quick.flags  # minutes, on the sample
    python -m dprime_tf.train --genotype=runs/search-rnn-X --flagfile=configs/ptb_train_quick.flags  # a language model
    python -m dprime_tf.train --output_dir=runs/train-X --resume [--epochs=N]          # continue a run

--genotype: a published name (DARTS_V2, DARTS_V1), a genotype JSON file, or a
search run directory holding genotype.json. The search space comes from
--dataset when given (a text corpus trains a language model), else from the
genotype (a recurrent genotype file; a published name means the CNN cell).
Settings left unset take the space's defaults (600 epochs, batch 96, lr 0.025
for CNNs; 8000 epochs, batch 64, lr 20 for language models), recorded in the
run's flags.txt. The run directory ends with model.keras (for
`python -m export` and `python -m dprime_tf.evaluate --model=<run>`) and
summary.json.
"""

from __future__ import annotations

from dprime_tf import cli
from dprime_tf.cli import (module_flags_text, no_positional_arguments, prepare_tensorflow, reload_flags_for_resume,
                           run_main)

prepare_tensorflow()  # TensorFlow itself loads in main(), after the flags are checked

import os  # noqa: E402

from absl import flags  # noqa: E402

from dprime_tf import fast_paths  # noqa: E402
from dprime_tf.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("genotype", None, "Architecture: a published name (DARTS_V2, DARTS_V1), a genotype JSON "
                    "file, or a search run directory holding genotype.json.")
# Data
flags.DEFINE_string("dataset", None, "Images: sample (embedded CIFAR-10 subset), cifar10, cifar100, or "
                    "folder:<path> (one sub-folder of images per class). Text: ptb_sample (embedded Penn Treebank), "
                    "ptb (ptb.*.txt in --data_dir) or textdir:<path>. Default: sample, or ptb_sample for a "
                    "recurrent genotype.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory for cifar10/cifar100; the ptb.*.txt folder.")
# Run
flags.DEFINE_string("output_dir", None, "Run directory (default runs/train-<timestamp>).")
flags.DEFINE_bool("resume", False, "Continue the run in --output_dir from its last checkpoint (its flags.txt "
                  "is re-read; flags given here override it, e.g. a larger --epochs).")
flags.DEFINE_integer("epochs", None, "Training epochs (default: 600 for CNNs, 8000 for language models).")
flags.DEFINE_integer("steps_per_epoch", 0, "Cap on steps per epoch (0: one pass over the training data).")
flags.DEFINE_integer("batch_size", None, "Global batch size (default: 96 for CNNs, 64 for language models).")
flags.DEFINE_integer("seed", None, "Random seed (weights, data order, augmentation, dropout masks; default: 0 "
                     "for CNNs, 1267 for language models).")
flags.DEFINE_integer("checkpoint_every", 200, "Checkpoint every N steps (and at each epoch end).")
flags.DEFINE_integer("verbose", 1, "0 silent, 1 progress bar + epoch line, 2 Keras' epoch line + epoch line.")
flags.DEFINE_bool("deterministic", False, "Bitwise reproducible runs (also across --resume): op determinism, one "
                  "thread per op and, on CPUs, oneDNN kernels off. Slower.")
flags.DEFINE_enum("strategy", "auto", ("auto", "default", "mirrored"), "tf.distribute strategy: auto (all GPUs "
                  "of this host), default (one device), mirrored.")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into N logical devices (exercises the multi-replica path).")
# Optimizer
flags.DEFINE_float("learning_rate", None, "SGD learning rate (default: 0.025 cosine-annealed per epoch for CNNs; "
                   "20 scaled by seq_len / bptt per window for language models).")
flags.DEFINE_float("weight_decay", None, "L2 added to the gradient (default: 3e-4 for CNNs, 8e-7 for language "
                   "models).")
flags.DEFINE_float("grad_clip", None, "Global-norm gradient clip (default: 5 for CNNs, 0.25 for language "
                   "models; CNNs: 0 = none).")
# GPU fast paths (CNN)
fast_paths.define_flags(flags)
flags.adopt_module_key_flags(fast_paths)  # recorded in the run's flags.txt, re-read by --resume
# CNN
flags.DEFINE_integer("image_size", None, "CNN: resize images to this size (default: native; 32 for folders). "
                     "The auxiliary head needs 32 (or --noauxiliary).")
flags.DEFINE_float("val_fraction", 0.1, "CNN: hold out this fraction of the training images (the last ones; "
                   "class-balanced) for per-epoch validation; 0 = none.")
flags.DEFINE_bool("mixed_precision", False, "CNN: the same as --precision=fp16 (the older spelling).")
flags.DEFINE_integer("init_channels", 36, "CNN: initial channels (C).")
flags.DEFINE_integer("layers", 20, "CNN: cells (L).")
flags.DEFINE_bool("auxiliary", True, "CNN: auxiliary head after cell 2L/3.")
flags.DEFINE_float("auxiliary_weight", 0.4, "CNN: weight of the auxiliary head's loss.")
flags.DEFINE_float("drop_path_prob", 0.2, "CNN: drop-path probability, scaled linearly from 0 over the epochs.")
flags.DEFINE_integer("cutout", 16, "CNN: cutout length (0 = off).")
flags.DEFINE_float("learning_rate_min", 0.0, "CNN: final learning rate of the cosine (DARTS: 0).")
flags.DEFINE_float("momentum", 0.9, "CNN: SGD momentum.")
# Language model
flags.DEFINE_integer("eval_batch_size", 10, "Language model: validation batch size.")
flags.DEFINE_integer("test_batch_size", 1, "Language model: test batch size.")
flags.DEFINE_integer("bptt", 35, "Language model: mean BPTT window length.")
flags.DEFINE_integer("max_seq_len_delta", 20, "Language model: longest window is bptt + this.")
flags.DEFINE_integer("emsize", 850, "Language model: embedding size (= --nhid: the decoder is tied to it).")
flags.DEFINE_integer("nhid", 850, "Language model: hidden size.")
flags.DEFINE_float("dropout", 0.75, "Language model: locked dropout on the cell outputs.")
flags.DEFINE_float("dropouth", 0.25, "Language model: dropout on the hidden state and the cell's states.")
flags.DEFINE_float("dropoutx", 0.75, "Language model: dropout on the cell input x_t.")
flags.DEFINE_float("dropouti", 0.2, "Language model: locked dropout on the embeddings.")
flags.DEFINE_float("dropoute", 0.1, "Language model: dropout of whole words of the embedding matrix.")
flags.DEFINE_float("tar_beta", 1e-3, "Language model: temporal activation regularization (slowness) weight.")


def _flags_text(run_dir):
    """This module's flags as a flagfile (without --resume), pointing at the run's own genotype copy."""
    return module_flags_text(FLAGS, __name__, exclude={"resume", "genotype", "output_dir", "cpu_devices"},
                             extra=[f"--genotype={os.path.join(run_dir, 'genotype.json')}", f"--output_dir={run_dir}"])


def config_from_flags():
    """The TrainConfig of the flags; settings left unset take the space's defaults,
    written back into the flags so that flags.txt records them."""
    import dataclasses

    from dprime_tf.train_job import TrainConfig, resolve
    values = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(TrainConfig) if f.name in FLAGS}
    values["output_dir"] = values.get("output_dir") or cli.default_run_dir("train")
    cfg = resolve(TrainConfig(**values))
    for name in values:
        if getattr(FLAGS, name) is None and getattr(cfg, name) is not None:
            FLAGS[name].value = getattr(cfg, name)
    return cfg


def main(argv):
    no_positional_arguments(argv)
    reload_flags_for_resume(FLAGS)
    if FLAGS.cpu_devices > 1 and FLAGS.strategy != "mirrored":
        raise UserError("--cpu_devices needs --strategy=mirrored")
    from dprime_tf.train_job import validate
    cfg = config_from_flags()
    validate(cfg)  # before TensorFlow starts: bad input fails fast, in one line
    cli.import_tensorflow_quietly()

    from dprime_tf.distribute import make_strategy
    from dprime_tf.train_job import run_training
    strategy = make_strategy(FLAGS.strategy, FLAGS.cpu_devices)
    summary = run_training(cfg, strategy, flags_text=_flags_text(os.path.abspath(cfg.output_dir)))
    print(f"\nrun directory: {summary['run_dir']}")
    if cfg.search_space == "rnn":
        test = (f", test perplexity {summary['test_perplexity']:.2f} ({summary['test_tokens']} tokens)"
                if summary["test_perplexity"] is not None else "")
        print(f"validation perplexity {summary['val_perplexity']:.2f} (best epoch {summary['best_epoch']}){test}; "
              f"{summary['parameters'] / 1e6:.3f}M parameters, {summary['wall_seconds_this_process']:.0f}s")
    else:
        val = (f"val_accuracy {summary['val_accuracy']:.4f} val_loss {summary['val_loss']:.4f} "
               f"({summary['val_images']} held-out images), " if summary["val_accuracy"] is not None else "")
        print(f"{val}{summary['parameters'] / 1e6:.3f}M parameters, {summary['wall_time_seconds']:.0f}s training")
    print(f"model: {summary['model']}")


def console_main():
    """The `dprime-train` console script: `python -m dprime_tf.train`."""
    run_main(main)


if __name__ == "__main__":
    run_main(main)

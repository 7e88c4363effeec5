"""python -m dprime_tf.evaluate: score a trained network: top-1 accuracy and loss of
a CNN, perplexity of a language model.

    python -m dprime_tf.evaluate --model=runs/train-X                  # the run's dataset, held-out test subset
    python -m dprime_tf.evaluate --model=model.keras --dataset=folder:/data/imgs
    python -m dprime_tf.evaluate --model=runs/train-X --dataset=cifar10 --subset=test --output_json=eval.json
    python -m dprime_tf.evaluate --model=runs/train-rnn-X              # perplexity on the run's test text
    python -m dprime_tf.evaluate --model=runs/train-rnn-X --text_file=ptb.test.txt --batch_size=1

--model: a training run directory (its model.keras) or a .keras file; the
kind of model (CNN or language model) decides what is measured.
--dataset: default the dataset the run trained on (from its flags.txt), else
the embedded sample (sample / ptb_sample). --subset: default test (the
sample's and a folder's held-out last 10% per class, never used in training;
CIFAR's test split; a corpus's test text). A language model scores any
PTB-format --text_file instead (one sentence a line; words it does not know
count as <unk>), in --batch_size rows and --bptt windows with the hidden
state carried over (DARTS's evaluate(); batch 1 scores every token but the
first); perplexity = exp(mean negative log-likelihood per scored token).
"""

from __future__ import annotations

from dprime_tf.cli import no_positional_arguments, prepare_tensorflow, run_main

prepare_tensorflow()  # TensorFlow itself loads in main(), after the flags are checked

import os  # noqa: E402

from absl import flags  # noqa: E402

from dprime_tf.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("model", None, "A training run directory (holding model.keras) or a .keras file.")
flags.DEFINE_string("dataset", None, "sample, cifar10, cifar100, folder:<path>; ptb_sample, ptb, textdir:<path> "
                    "(default: the run's dataset, else the embedded sample).")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory for cifar10/cifar100; the ptb.*.txt folder "
                    "(default: the run's).")
flags.DEFINE_integer("image_size", None, "CNN: resize images to this size (default: the run's training size).")
flags.DEFINE_enum("subset", "test", ("train", "valid", "test"), "Which part of the dataset (test: held out from "
                  "training; valid: a text corpus's validation text).")
flags.DEFINE_alias("split", "subset")  # its name before 0.3 (--split means the weight/alpha split in search)
flags.DEFINE_string("text_file", None, "Language model: score this PTB-format text file instead of --dataset.")
flags.DEFINE_integer("batch_size", None, "Evaluation batch size (default: 256 images; 10 rows of text).")
flags.DEFINE_integer("bptt", 35, "Language model: window length.")
flags.DEFINE_string("output_json", None, "Also write the results to this JSON file.")


def main(argv):
    no_positional_arguments(argv)
    if not FLAGS.model:
        raise UserError("--model is required: a training run directory or a .keras file")
    if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    if FLAGS.bptt < 1:
        raise UserError(f"--bptt must be >= 1, got {FLAGS.bptt}")
    if FLAGS.image_size is not None and FLAGS.image_size < 8:
        raise UserError(f"--image_size must be >= 8, got {FLAGS.image_size}")
    if FLAGS.text_file and not os.path.isfile(FLAGS.text_file):
        raise UserError(f"--text_file {FLAGS.text_file} does not exist")
    from dprime_tf import evaluation
    evaluation.model_file(FLAGS.model)  # before TensorFlow's start-up
    from dprime_tf.cli import import_tensorflow_quietly
    import_tensorflow_quietly()
    result = evaluation.score(FLAGS.model, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, image_size=FLAGS.image_size,
                              subset=FLAGS.subset, batch_size=FLAGS.batch_size, bptt=FLAGS.bptt,
                              text_file=FLAGS.text_file)
    if FLAGS.output_json:
        from dprime_tf.runs import atomic_write_json
        atomic_write_json(FLAGS.output_json, result)


def console_main():
    """The `dprime-evaluate` console script: `python -m dprime_tf.evaluate`."""
    run_main(main)


if __name__ == "__main__":
    run_main(main)

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

from dprime_tf.cli import no_positional_arguments, quiet_tensorflow, run_main

quiet_tensorflow()

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


def _run_flags(run_dir):
    """--dataset/--data_dir/--image_size of the run's flags.txt (what it trained on)."""
    values = {}
    path = os.path.join(run_dir, "flags.txt")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key in ("--dataset", "--data_dir", "--image_size") and value:
                    values[key[2:]] = value
    return values


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
    path = os.path.abspath(FLAGS.model)
    run_dir = path if os.path.isdir(path) else None
    model_path = os.path.join(path, "model.keras") if run_dir else path
    if not os.path.isfile(model_path):
        what = (f"{model_path} does not exist (the run has not finished: model.keras is written at the end)"
                if run_dir else f"{model_path} does not exist")
        raise UserError(f"--model: {what}")
    trained = _run_flags(run_dir) if run_dir else {}
    from dprime_tf.cli import import_tensorflow_quietly
    import_tensorflow_quietly()

    import keras

    import dprime_tf.networks  # noqa: F401  (registers the network classes for loading)
    from dprime_tf.spaces.rnn.network import RNNModel
    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as e:  # Keras raises many kinds for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"cannot load --model {model_path} ({type(e).__name__}: {first[:200]})") from None
    if isinstance(model, RNNModel):
        result = _perplexity(model, trained)
    else:
        result = _accuracy(model, trained)
    result["model"] = model_path
    if FLAGS.output_json:
        from dprime_tf.runs import atomic_write_json
        atomic_write_json(FLAGS.output_json, result)


def _accuracy(model, trained):
    import dataclasses

    from dprime_tf import spaces
    from dprime_tf.data import images
    from dprime_tf.spaces.cnn.trainer import evaluate_model
    if FLAGS.text_file:
        raise UserError("--text_file is for language models; --model is an image classifier")
    dataset = FLAGS.dataset or trained.get("dataset", "sample")
    spaces.get("cnn").check_dataset(dataset)
    if FLAGS.subset == "valid":
        raise UserError("--subset=valid is a text corpus's; image datasets have train and test")
    image_size = FLAGS.image_size or (int(trained["image_size"]) if "image_size" in trained else None)
    data = images.load_images(dataset, FLAGS.data_dir or trained.get("data_dir"), image_size, split=FLAGS.subset)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and num_classes != data.num_classes:
        raise UserError(f"the model has {num_classes} classes but --dataset={dataset} has {data.num_classes}")
    # Normalized as in training: with the statistics the model records (CIFAR-10's if none).
    mean, std = images.model_statistics(model)
    data = dataclasses.replace(data, mean=mean, std=std)
    result = evaluate_model(model, images.make_eval_dataset(data, FLAGS.batch_size or 256))
    result.update(dataset=data.name, split=FLAGS.subset, image_size=int(data.images.shape[1]),
                  normalization={"mean": list(data.mean), "std": list(data.std)})
    print(f"{data.name} {FLAGS.subset} ({result['examples']} images): top-1 accuracy {result['accuracy']:.4f} "
          f"({result['correct']}/{result['examples']}), loss {result['loss']:.4f}")
    return result


def _perplexity(model, trained):
    from dprime_tf import spaces
    from dprime_tf.data import text
    from dprime_tf.spaces.rnn.network import PerplexityEvaluator
    if model.vocab is None:
        raise UserError("--model has no vocabulary in its config (it was not saved by dprime_tf.train)")
    batch_size = FLAGS.batch_size or 10
    if FLAGS.text_file:
        source = os.path.abspath(FLAGS.text_file)
        ids, unknown = text.encode(text.read_tokens(FLAGS.text_file), model.vocab, allow_unknown=True)
    else:
        dataset = FLAGS.dataset or trained.get("dataset", "ptb_sample")
        spaces.get("rnn").check_dataset(dataset)
        corpus = text.load_corpus(dataset, FLAGS.data_dir or trained.get("data_dir"))
        part = getattr(corpus, FLAGS.subset)
        if part is None:
            raise UserError(f"--dataset={dataset} has no {FLAGS.subset} text (pass --text_file)")
        source = f"{corpus.name} {FLAGS.subset}"
        words = [corpus.vocab[i] for i in part]  # the corpus's own ids -> the model's vocabulary
        ids, unknown = text.encode(words, model.vocab, allow_unknown=True)
    if len(ids) // batch_size < 2:
        raise UserError(f"the text has {len(ids)} tokens: too few for --batch_size {batch_size} "
                        "(each row needs 2 tokens)")
    result = PerplexityEvaluator(model, batch_size, FLAGS.bptt)(ids)
    result.update(text=source, unknown_words=unknown, batch_size=batch_size, bptt=FLAGS.bptt)
    if FLAGS.text_file:
        result["text_file"] = source
    print(f"perplexity {result['perplexity']:.2f} (mean NLL {result['nll']:.4f} over {result['tokens']} tokens of "
          f"{source}; {unknown} unknown words scored as <unk>)")
    return result


def console_main():
    """The `dprime-evaluate` console script: `python -m dprime_tf.evaluate`."""
    run_main(main)


if __name__ == "__main__":
    run_main(main)

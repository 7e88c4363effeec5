"""python -m dprime_tf.evaluate: top-1 accuracy and loss of a trained network.

    python -m dprime_tf.evaluate --model=runs/train-X                  # the run's dataset, held-out test split
    python -m dprime_tf.evaluate --model=model.keras --dataset=folder:/data/imgs
    python -m dprime_tf.evaluate --model=runs/train-X --dataset=cifar10 --split=test --output_json=eval.json

--model: a training run directory (its model.keras) or a .keras file.
--dataset: default the dataset the run trained on (from its flags.txt), else
the embedded sample. --split: default test (the sample's and a folder's
held-out last 10% per class, never used in training; CIFAR's test split).
"""

from __future__ import annotations

from dprime_tf.cli import no_positional_arguments, quiet_tensorflow, run_main

quiet_tensorflow()

import json  # noqa: E402
import os  # noqa: E402

from absl import flags  # noqa: E402

from dprime_tf.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("model", None, "A training run directory (holding model.keras) or a .keras file.")
flags.DEFINE_string("dataset", None, "sample, cifar10, cifar100 or folder:<path> (default: the run's dataset, "
                    "else sample).")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory for cifar10/cifar100 (default: the run's).")
flags.DEFINE_integer("image_size", None, "Resize images to this size (default: the run's training size).")
flags.DEFINE_enum("split", "test", ("train", "test"), "Dataset split (test: held out from training).")
flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
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
    if FLAGS.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    if FLAGS.image_size is not None and FLAGS.image_size < 8:
        raise UserError(f"--image_size must be >= 8, got {FLAGS.image_size}")
    path = os.path.abspath(FLAGS.model)
    run_dir = path if os.path.isdir(path) else None
    model_path = os.path.join(path, "model.keras") if run_dir else path
    if not os.path.isfile(model_path):
        what = (f"{model_path} does not exist (the run has not finished: model.keras is written at the end)"
                if run_dir else f"{model_path} does not exist")
        raise UserError(f"--model: {what}")
    trained = _run_flags(run_dir) if run_dir else {}
    dataset = FLAGS.dataset or trained.get("dataset", "sample")
    data_dir = FLAGS.data_dir or trained.get("data_dir")
    image_size = FLAGS.image_size or (int(trained["image_size"]) if "image_size" in trained else None)
    from dprime_tf.train_job import check_dataset_spec, import_tensorflow_quietly
    check_dataset_spec(dataset)
    import_tensorflow_quietly()

    import keras

    import dprime_tf.networks  # noqa: F401  (registers the network classes for loading)
    from dprime_tf.data import images
    from dprime_tf.trainer import evaluate_model

    try:
        model = keras.models.load_model(model_path)
    except Exception as e:  # Keras raises many kinds for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"cannot load --model {model_path} ({type(e).__name__}: {first[:200]})") from None
    data = images.load_images(dataset, data_dir, image_size, split=FLAGS.split)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and num_classes != data.num_classes:
        raise UserError(f"the model has {num_classes} classes but --dataset={dataset} has {data.num_classes}")
    result = evaluate_model(model, images.make_eval_dataset(data, FLAGS.batch_size))
    result.update(model=model_path, dataset=data.name, split=FLAGS.split, image_size=int(data.images.shape[1]))
    print(f"{data.name} {FLAGS.split} ({result['examples']} images): top-1 accuracy {result['accuracy']:.4f} "
          f"({result['correct']}/{result['examples']}), loss {result['loss']:.4f}")
    if FLAGS.output_json:
        from dprime_tf.runs import atomic_write_json
        atomic_write_json(FLAGS.output_json, result)


if __name__ == "__main__":
    run_main(main)

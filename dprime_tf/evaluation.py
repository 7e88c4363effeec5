"""Scoring a trained network (library side of `python -m dprime_tf.evaluate`).

`score(model_path, ...)` loads a saved final network and measures it on a
dataset's held-out data: top-1 accuracy and loss of an image classifier,
perplexity of a language model (the model's class decides). Unset settings
come from the training run's flags.txt when `model_path` is a run directory,
so a run is scored on the data and image size it trained with. It defines no
flags: the study (dprime_tf.study) and tests call it beside other commands.
"""

from __future__ import annotations

import dataclasses
import os

from dprime_tf.errors import UserError

SUBSETS = ("train", "valid", "test")


def run_flags(run_dir: str) -> dict:
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


def model_file(model: str) -> tuple[str, str | None]:
    """(the .keras file, the run directory or None) of --model; UserError if missing."""
    path = os.path.abspath(model)
    run_dir = path if os.path.isdir(path) else None
    model_path = os.path.join(path, "model.keras") if run_dir else path
    if not os.path.isfile(model_path):
        what = (f"{model_path} does not exist (the run has not finished: model.keras is written at the end)"
                if run_dir else f"{model_path} does not exist")
        raise UserError(f"--model: {what}")
    return model_path, run_dir


def score(model: str, *, dataset: str | None = None, data_dir: str | None = None, image_size: int | None = None,
          subset: str = "test", batch_size: int | None = None, bptt: int = 35, text_file: str | None = None,
          quiet: bool = False) -> dict:
    """Scores the network of `model` (a training run directory or a .keras file); returns the results."""
    if subset not in SUBSETS:
        raise UserError(f"unknown subset {subset!r}: use one of {', '.join(SUBSETS)}")
    if text_file and not os.path.isfile(text_file):
        raise UserError(f"--text_file {text_file} does not exist")
    model_path, run_dir = model_file(model)
    trained = run_flags(run_dir) if run_dir else {}

    import keras

    import dprime_tf.networks  # noqa: F401  (registers the network classes for loading)
    from dprime_tf.spaces.rnn.network import RNNModel
    try:
        net = keras.models.load_model(model_path, compile=False)
    except Exception as e:  # Keras raises many kinds for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"cannot load --model {model_path} ({type(e).__name__}: {first[:200]})") from None
    settings = dict(dataset=dataset, data_dir=data_dir, subset=subset, batch_size=batch_size, quiet=quiet)
    if isinstance(net, RNNModel):
        result = _perplexity(net, trained, bptt=bptt, text_file=text_file, **settings)
    else:
        if text_file:
            raise UserError("--text_file is for language models; --model is an image classifier")
        result = _accuracy(net, trained, image_size=image_size, **settings)
    result["model"] = model_path
    return result


def _accuracy(model, trained, *, dataset, data_dir, image_size, subset, batch_size, quiet):
    from dprime_tf import spaces
    from dprime_tf.data import images
    from dprime_tf.spaces.cnn.trainer import evaluate_model
    dataset = dataset or trained.get("dataset", "sample")
    spaces.get("cnn").check_dataset(dataset)
    if subset == "valid":
        raise UserError("--subset=valid is a text corpus's; image datasets have train and test")
    image_size = image_size or (int(trained["image_size"]) if "image_size" in trained else None)
    data = images.load_images(dataset, data_dir or trained.get("data_dir"), image_size, split=subset)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and num_classes != data.num_classes:
        raise UserError(f"the model has {num_classes} classes but --dataset={dataset} has {data.num_classes}")
    # Normalized as in training: with the statistics the model records (CIFAR-10's if none).
    mean, std = images.model_statistics(model)
    data = dataclasses.replace(data, mean=mean, std=std)
    result = evaluate_model(model, images.make_eval_dataset(data, batch_size or 256))
    result.update(dataset=data.name, split=subset, image_size=int(data.images.shape[1]),
                  normalization={"mean": list(data.mean), "std": list(data.std)})
    if not quiet:
        print(f"{data.name} {subset} ({result['examples']} images): top-1 accuracy {result['accuracy']:.4f} "
              f"({result['correct']}/{result['examples']}), loss {result['loss']:.4f}")
    return result


def _perplexity(model, trained, *, dataset, data_dir, subset, batch_size, bptt, text_file, quiet):
    from dprime_tf import spaces
    from dprime_tf.data import text
    from dprime_tf.spaces.rnn.network import PerplexityEvaluator
    if model.vocab is None:
        raise UserError("--model has no vocabulary in its config (it was not saved by dprime_tf.train)")
    batch_size = batch_size or 10
    if text_file:
        source = os.path.abspath(text_file)
        ids, unknown = text.encode(text.read_tokens(text_file), model.vocab, allow_unknown=True)
    else:
        dataset = dataset or trained.get("dataset", "ptb_sample")
        spaces.get("rnn").check_dataset(dataset)
        corpus = text.load_corpus(dataset, data_dir or trained.get("data_dir"))
        part = getattr(corpus, subset)
        if part is None:
            raise UserError(f"--dataset={dataset} has no {subset} text (pass --text_file)")
        source = f"{corpus.name} {subset}"
        words = [corpus.vocab[i] for i in part]  # the corpus's own ids -> the model's vocabulary
        ids, unknown = text.encode(words, model.vocab, allow_unknown=True)
    if len(ids) // batch_size < 2:
        raise UserError(f"the text has {len(ids)} tokens: too few for --batch_size {batch_size} "
                        "(each row needs 2 tokens)")
    result = PerplexityEvaluator(model, batch_size, bptt)(ids)
    result.update(text=source, unknown_words=unknown, batch_size=batch_size, bptt=bptt)
    if text_file:
        result["text_file"] = source
    if not quiet:
        print(f"perplexity {result['perplexity']:.2f} (mean NLL {result['nll']:.4f} over {result['tokens']} tokens "
              f"of {source}; {unknown} unknown words scored as <unk>)")
    return result

"""python -m dprime_tf.evaluate_rnn: perplexity of a trained recurrent language model on a text file.

    python -m dprime_tf.evaluate_rnn --model=runs/train-rnn-X --text_file=ptb.test.txt
    python -m dprime_tf.evaluate_rnn --model=model.keras --text_file=my.txt --batch_size=1 --output_json=eval.json

--model: a training run directory (its model.keras) or a .keras file (the
vocabulary is in the model). --text_file: any PTB-format text (one sentence
a line, words separated by spaces; <eos> is added after every line; .gz is
read too). Words the model does not know count as <unk>. The file is cut
into --batch_size rows scored in --bptt windows with the hidden state carried
over (DARTS's evaluate(); batch 1 scores every token but the first);
perplexity = exp(mean negative log-likelihood per scored token).
"""

from __future__ import annotations

from dprime_tf.cli import no_positional_arguments, quiet_tensorflow, run_main

quiet_tensorflow()

import os  # noqa: E402

from absl import flags  # noqa: E402

from dprime_tf.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("model", None, "A recurrent training run directory (holding model.keras) or a .keras file.")
flags.DEFINE_string("text_file", None, "The PTB-format text to score.")
flags.DEFINE_integer("batch_size", 10, "Rows the text is cut into (DARTS: 10 for validation, 1 for test).")
flags.DEFINE_integer("bptt", 35, "Window length.")
flags.DEFINE_string("output_json", None, "Also write the results to this JSON file.")


def main(argv):
    no_positional_arguments(argv)
    if not FLAGS.model:
        raise UserError("--model is required: a recurrent training run directory or a .keras file")
    if not FLAGS.text_file:
        raise UserError("--text_file is required: the PTB-format text to score")
    if FLAGS.batch_size < 1 or FLAGS.bptt < 1:
        raise UserError("--batch_size and --bptt must be >= 1")
    if not os.path.isfile(FLAGS.text_file):
        raise UserError(f"--text_file {FLAGS.text_file} does not exist")
    path = os.path.join(FLAGS.model, "model.keras") if os.path.isdir(FLAGS.model) else FLAGS.model
    if not os.path.isfile(path):
        raise UserError(f"--model: {path} does not exist")
    from dprime_tf.cli import import_tensorflow_quietly
    import_tensorflow_quietly()

    from dprime_tf.data import text
    from dprime_tf.networks.rnn import PerplexityEvaluator, load_model
    model = load_model(path)
    if model.vocab is None:
        raise UserError(f"--model {path} has no vocabulary in its config (it was not saved by train_rnn)")
    tokens = text.read_tokens(FLAGS.text_file)
    ids, unknown = text.encode(tokens, model.vocab, allow_unknown=True)
    if len(ids) // FLAGS.batch_size < 2:
        raise UserError(f"--text_file has {len(ids)} tokens: too few for --batch_size {FLAGS.batch_size} "
                        "(each row needs 2 tokens)")
    result = PerplexityEvaluator(model, FLAGS.batch_size, FLAGS.bptt)(ids)
    result.update(model=os.path.abspath(path), text_file=os.path.abspath(FLAGS.text_file),
                  unknown_words=unknown, batch_size=FLAGS.batch_size, bptt=FLAGS.bptt)
    print(f"perplexity {result['perplexity']:.2f} (mean NLL {result['nll']:.4f} over {result['tokens']} tokens; "
          f"{unknown} unknown words scored as <unk>)")
    if FLAGS.output_json:
        from dprime_tf.runs import atomic_write_json
        atomic_write_json(FLAGS.output_json, result)
        print(f"wrote {FLAGS.output_json}")


if __name__ == "__main__":
    run_main(main)

"""Deprecated (kept for one release): `python -m dprime_tf.evaluate` scores language
models too (the same flags; --text_file is optional there)."""

from dprime_tf import evaluate
from dprime_tf.cli import run_main
from dprime_tf.errors import UserError


def main(argv):
    print("note: dprime_tf.evaluate_rnn is deprecated; use python -m dprime_tf.evaluate (the same flags)",
          )  # stdout: errors stay one line on stderr
    if not evaluate.FLAGS.text_file:
        raise UserError("--text_file is required: the PTB-format text to score")
    return evaluate.main(argv)


if __name__ == "__main__":
    run_main(main)

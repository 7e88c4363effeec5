"""Deprecated (kept for one release): `python -m dprime_tf.train` trains language
models too; this alias runs it with --dataset=ptb_sample and --genotype=DARTS_V2
as defaults, as train_rnn had."""

from dprime_tf import train
from dprime_tf.cli import run_main

train.FLAGS.set_default("dataset", "ptb_sample")
train.FLAGS.set_default("genotype", "DARTS_V2")


def main(argv):
    print("note: dprime_tf.train_rnn is deprecated; use python -m dprime_tf.train (the same flags)")  # stdout: errors stay one line on stderr
    return train.main(argv)


if __name__ == "__main__":
    run_main(main)

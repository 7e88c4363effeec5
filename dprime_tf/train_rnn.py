"""python -m dprime_tf.train_rnn: train a recurrent language model from a recurrent genotype.

    python -m dprime_tf.train_rnn --flagfile=configs/ptb_train.flags --data_dir=<ptb>   # the paper's recipe
    python -m dprime_tf.train_rnn --flagfile=configs/ptb_train_quick.flags --genotype=runs/search-X
    python -m dprime_tf.train_rnn --output_dir=runs/train-rnn-X --resume [--epochs=N]      # continue a run

--genotype: a published recurrent genotype (DARTS_V2, DARTS_V1), a genotype
JSON file, or a recurrent search's run directory. The run directory (see
dprime_tf/train_job_rnn.py) ends with model.keras (the best validation
epoch) and summary.json (validation and test perplexity);
`python -m dprime_tf.evaluate_rnn --model=<run> --text_file=<file>` scores
any PTB-format text with it.
"""

from __future__ import annotations

from dprime_tf import cli
from dprime_tf.cli import (module_flags_text, no_positional_arguments, quiet_tensorflow, reload_flags_for_resume,
                           run_main)

quiet_tensorflow()

import os  # noqa: E402

from absl import flags  # noqa: E402


FLAGS = flags.FLAGS

flags.DEFINE_string("genotype", "DARTS_V2", "Recurrent cell: a published name (DARTS_V2, DARTS_V1), a genotype "
                    "JSON file, or a recurrent search's run directory holding genotype.json.")
flags.DEFINE_string("dataset", "ptb_sample", "ptb_sample (embedded Penn Treebank text), ptb "
                    "(ptb.{train,valid,test}.txt in --data_dir) or textdir:<path> (train.txt, valid.txt[, test.txt]).")
flags.DEFINE_string("data_dir", None, "Directory of the ptb.*.txt files for --dataset=ptb.")
flags.DEFINE_string("output_dir", None, "Run directory (default runs/train-rnn-<timestamp>).")
flags.DEFINE_bool("resume", False, "Continue the run in --output_dir from its last checkpoint (its flags.txt "
                  "is re-read; flags given here override it, e.g. a larger --epochs).")
flags.DEFINE_integer("epochs", 8000, "Training epochs (DARTS: 8000).")
flags.DEFINE_integer("steps_per_epoch", 0, "Cap on steps per epoch (0: one pass over the training text).")
flags.DEFINE_integer("batch_size", 64, "Training batch size (rows of the batchified text).")
flags.DEFINE_integer("eval_batch_size", 10, "Validation batch size.")
flags.DEFINE_integer("test_batch_size", 1, "Test batch size.")
flags.DEFINE_integer("bptt", 35, "Mean BPTT window length.")
flags.DEFINE_integer("max_seq_len_delta", 20, "Longest window: bptt + this.")
flags.DEFINE_integer("emsize", 850, "Embedding size (= --nhid: the decoder is tied to the embedding).")
flags.DEFINE_integer("nhid", 850, "Hidden size.")
flags.DEFINE_float("dropout", 0.75, "Locked dropout on the cell outputs.")
flags.DEFINE_float("dropouth", 0.25, "Dropout on the hidden state and the cell's states.")
flags.DEFINE_float("dropoutx", 0.75, "Dropout on the cell input x_t.")
flags.DEFINE_float("dropouti", 0.2, "Locked dropout on the embeddings.")
flags.DEFINE_float("dropoute", 0.1, "Dropout of whole words of the embedding matrix.")
flags.DEFINE_float("tar_beta", 1e-3, "Temporal activation regularization (slowness) weight.")
flags.DEFINE_float("learning_rate", 20.0, "SGD learning rate (scaled by seq_len / bptt per window).")
flags.DEFINE_float("weight_decay", 8e-7, "L2 added to the gradient.")
flags.DEFINE_float("grad_clip", 0.25, "Global-norm gradient clip.")
flags.DEFINE_integer("seed", 1267, "Random seed (weights, window lengths, dropout masks).")
flags.DEFINE_integer("checkpoint_every", 200, "Checkpoint every N steps (and at each epoch end).")
flags.DEFINE_integer("verbose", 1, "0 silent, 1 progress bar + epoch line, 2 Keras' epoch line + epoch line.")


def _flags_text(run_dir):
    return module_flags_text(FLAGS, __name__, exclude={"resume", "genotype", "output_dir"},
                             extra=[f"--genotype={os.path.join(run_dir, 'genotype.json')}", f"--output_dir={run_dir}"])


def config_from_flags():
    from dprime_tf.train_job_rnn import RNNTrainConfig
    return cli.config_from_flags(FLAGS, RNNTrainConfig, "train-rnn")


def main(argv):
    no_positional_arguments(argv)
    reload_flags_for_resume(FLAGS)
    from dprime_tf.train_job_rnn import run_rnn_training, validate
    cfg = config_from_flags()
    validate(cfg)  # before TensorFlow starts: bad input fails fast, in one line
    from dprime_tf.cli import import_tensorflow_quietly
    import_tensorflow_quietly()
    summary = run_rnn_training(cfg, flags_text=_flags_text(os.path.abspath(cfg.output_dir)))
    print(f"\nrun directory: {summary['run_dir']}")
    test = (f", test perplexity {summary['test_perplexity']:.2f} ({summary['test_tokens']} tokens)"
            if summary["test_perplexity"] is not None else "")
    print(f"validation perplexity {summary['val_perplexity']:.2f} (best epoch {summary['best_epoch']}){test}; "
          f"{summary['parameters'] / 1e6:.3f}M parameters, {summary['wall_seconds_this_process']:.0f}s")
    print(f"model: {summary['model']}")


if __name__ == "__main__":
    run_main(main)

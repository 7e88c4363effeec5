"""DARTS's recurrent search space on text (Penn Treebank, a text folder, or the
embedded PTB sample): one recurrent cell of 8 nodes, 5 activations (SPEC section 6).

Differences from the image search, as DARTS's recurrent search:
- weights: plain SGD (no momentum), lr 20 kept constant (learning_rate_min
  defaults to learning_rate), coupled weight decay 5e-7, clip 0.25, and TAR
  (beta 1e-3) added to the weight loss; alpha: Adam lr 3e-3, betas
  (0.9, 0.999) (PyTorch's defaults, which DARTS's RNN architect uses),
  weight decay 1e-3;
- data: as the official search, all of the training text trains w and the
  alpha steps read the corpus's *validation* text (--alpha_text=valid;
  --alpha_text=train_split holds out the end of the training text instead,
  sized by --split); weight windows have DARTS's variable length (bptt, or
  bptt/2 with probability 0.05), alpha windows bptt; validation perplexity is
  measured on the valid text with batch 10 (DARTS's eval_batch_size);
- the genotype kept (genotype.json) is the one of the epoch with the best
  validation loss, as the official search; genotype_last.json is the last's;
- the FI EWMA's beta defaults to 1.0 (the raw FI), the official default;
- an epoch is one pass of the weight stream as drawn for pass 0 (passes
  differ by a few windows; the stream runs on across epochs and zeroes the
  hidden state at each pass start). Not reproduced: DARTS scales the
  learning rate by seq_len/bptt for the 5% half-length windows.

Its runs add vocab.txt and initial_validation.json (the supernet's validation
perplexity before the search) to the run directory; alpha_history.npz has the
key "recurrent" (epochs, 36, 5).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

from dprime_tf.errors import UserError
from dprime_tf.spaces.base import SearchData, SearchSpace

TEXT_DATASETS = ("ptb_sample", "ptb")


def is_text_dataset(spec) -> bool:
    """Whether a --dataset spec names a text corpus (see dprime_tf.data.text)."""
    key = str(spec or "").strip().lower()
    return key in TEXT_DATASETS or key.startswith("textdir:")


def language_model_checks(cfg) -> list[tuple[bool, str]]:
    """(condition, message) checks of the language model's settings, shared by the
    recurrent search and training configs."""
    return [
        (cfg.emsize >= 1 and cfg.nhid >= 1, "--emsize and --nhid must be >= 1"),
        (cfg.emsize == cfg.nhid, f"--emsize ({cfg.emsize}) must equal --nhid ({cfg.nhid}): "
                                 "the decoder is tied to the embedding"),
        (all(0 <= r < 1 for r in (cfg.dropout, cfg.dropouth, cfg.dropoutx, cfg.dropouti, cfg.dropoute)),
         "dropout rates (--dropout, --dropouth, --dropoutx, --dropouti, --dropoute) must be in [0, 1)"),
        (cfg.tar_beta >= 0, "--tar_beta must be >= 0"),
        (getattr(cfg, "precision", "float32") == "float32",
         f"--precision={getattr(cfg, 'precision', '')} is for image networks; language models run in float32 "
         "(drop --precision)"),
        (not getattr(cfg, "xla", False), "--xla is for image networks: a language model's windows vary in length "
                                         "and XLA would recompile for each (drop --xla)"),
        (not getattr(cfg, "recompute", False), "--recompute is for image networks (drop --recompute)"),
    ]


class RNNSpace(SearchSpace):
    name = "rnn"
    metric = "perplexity"
    genotype_kinds = ("recurrent",)
    search_flags_module = "dprime_tf.spaces.rnn.flags"
    search_defaults = {"batch_size": 256, "learning_rate": 20.0, "momentum": 0.0, "weight_decay": 5e-7,
                       "grad_clip": 0.25, "arch_learning_rate": 3e-3, "arch_weight_decay": 1e-3,
                       "fi_ewma_beta": 1.0}
    arch_beta_1 = 0.9  # PyTorch Adam's default, used by DARTS's recurrent architect
    keeps_best_validation_genotype = True  # as the official train_search_rnn.py

    train_defaults = {"dataset": "ptb_sample", "epochs": 8000, "batch_size": 64, "learning_rate": 20.0,
                      "weight_decay": 8e-7, "grad_clip": 0.25, "seed": 1267}

    def accepts_dataset(self, spec) -> bool:
        return is_text_dataset(spec)

    def check_dataset(self, spec):
        if not is_text_dataset(spec):
            raise UserError(f"--dataset={spec} is not a text corpus (use ptb_sample, ptb or textdir:<path>)")

    def genotype_class(self):
        from dprime_tf.spaces.rnn.genotype import RecurrentGenotype
        return RecurrentGenotype

    def train_checks(self, cfg):
        from dprime_tf.spaces.rnn.training import rnn_checks
        return rnn_checks(cfg)

    def train(self, cfg, genotype, strategy, flags_text, extra_callbacks):
        from dprime_tf.spaces.rnn.training import train_rnn
        return train_rnn(cfg, genotype, strategy, flags_text, extra_callbacks)

    def resolve_search_config(self, cfg):
        if cfg.learning_rate_min is None:  # constant, as DARTS
            lr = cfg.learning_rate if cfg.learning_rate is not None else self.search_defaults["learning_rate"]
            cfg = dataclasses.replace(cfg, learning_rate_min=lr)
        return super().resolve_search_config(cfg)

    def search_checks(self, cfg):
        return [(cfg.eval_batch_size >= 1, "--eval_batch_size must be >= 1"),
                (cfg.alpha_text in ("valid", "train_split"), "--alpha_text must be valid or train_split"),
                (cfg.bptt >= 2, "--bptt must be >= 2"),
                *language_model_checks(cfg)]

    def load_search_data(self, cfg, replicas):
        from dprime_tf import prime
        from dprime_tf.data import text
        from dprime_tf.data.images import split_indices
        corpus = text.load_corpus(cfg.dataset, cfg.data_dir)
        if cfg.batch_size % replicas or cfg.eval_batch_size % replicas:
            raise UserError(f"--batch_size ({cfg.batch_size}) and --eval_batch_size ({cfg.eval_batch_size}) must "
                            f"be multiples of the {replicas} replicas")
        if cfg.alpha_text == "valid":  # the official search: alpha steps on the validation text
            weight_ids, alpha_ids = corpus.train, corpus.valid
        else:
            weight_pos, alpha_pos = split_indices(len(corpus.train),
                                                  prime.weight_portion(cfg.split, cfg.schedfreq))
            weight_ids, alpha_ids = corpus.train[weight_pos], corpus.train[alpha_pos]
        for name, ids, batch in (("weight", weight_ids, cfg.batch_size), ("alpha", alpha_ids, cfg.batch_size),
                                 ("validation", corpus.valid, cfg.eval_batch_size)):
            if len(ids) // batch < 2:
                raise UserError(f"the {name} text ({len(ids)} tokens) is too short for batch size {batch}: "
                                "each row needs at least 2 tokens; use a smaller --batch_size/--eval_batch_size")
        columns = len(weight_ids) // cfg.batch_size
        return SearchData(
            name=corpus.name, steps_per_pass=text.windows_per_pass(columns, cfg.bptt, "search", cfg.seed, 0),
            weight_stream=lambda start: text.make_stream(weight_ids, cfg.batch_size, cfg.bptt, "search", cfg.seed,
                                                         start_batch=start),
            alpha_stream=lambda start: text.make_stream(alpha_ids, cfg.batch_size, cfg.bptt, "fixed", cfg.seed + 1,
                                                        start_batch=start),
            eval_data=text.make_eval_dataset(corpus.valid, cfg.eval_batch_size, cfg.bptt),
            network_args={"vocab_size": corpus.vocab_size},
            summary={"dataset": corpus.name, "vocab_size": corpus.vocab_size, "weight_tokens": int(len(weight_ids)),
                     "alpha_tokens": int(len(alpha_ids)), "alpha_text": cfg.alpha_text,
                     "valid_tokens": int(len(corpus.valid))},
            extra=corpus)

    def build_supernet(self, cfg, data):
        from dprime_tf.spaces.rnn.supernet import RecurrentSearchNetwork
        return RecurrentSearchNetwork(
            data.network_args["vocab_size"], cfg.emsize, cfg.nhid, cfg.dropout, cfg.dropouth, cfg.dropoutx,
            cfg.dropouti, cfg.dropoute, cfg.tar_beta, seed=cfg.seed,
            batch_sizes={"weight": cfg.batch_size, "alpha": cfg.batch_size, "eval": cfg.eval_batch_size})

    def before_search(self, job):
        """The supernet's validation perplexity before the search (initial_validation.json), vocab.txt."""
        from dprime_tf import runs
        path = os.path.join(job.run_dir, "initial_validation.json")
        if job.cfg.resume:
            initial = json.load(open(path)) if os.path.exists(path) else {}
        else:
            with _calibrated_batch_norm(job.net, job.strategy, job.data.weight_stream(0)):
                initial = {"val_perplexity": job.validation_perplexity()}
            if job.chief:
                runs.atomic_write_json(path, initial)
                runs.atomic_write(os.path.join(job.run_dir, "vocab.txt"),
                                  "".join(w + "\n" for w in job.data.extra.vocab))
            if job.cfg.verbose:
                print(f"validation perplexity before the search: {initial['val_perplexity']:.2f}", flush=True)
        return {"val_perplexity_initial": initial.get("val_perplexity")}

    def after_search(self, job):
        final = job.validation_perplexity()
        if job.cfg.verbose:
            before = job.summary_extra.get("val_perplexity_initial")
            print(f"validation perplexity: {before or float('nan'):.2f} before, {final:.2f} after", flush=True)
        return {"val_perplexity": final}

    def alpha_arrays(self, net):
        return {"alpha": net.alpha.numpy()}

    def draw_genotype(self, plot_dir, genotype):
        from dprime_tf import plots
        plots.plot_recurrent_cell(os.path.join(plot_dir, "cell_recurrent.png"), genotype, "recurrent cell")


@contextlib.contextmanager
def _calibrated_batch_norm(net, strategy, stream):
    """Batch norm's running statistics measured on one training window, restored on exit.

    They start at mean 0 / variance 1, which the un-normalized node sums of an
    untrained cell do not match: in inference mode its recurrence then blows up,
    so the perplexity "before the search" would be meaningless. One forward pass
    in training mode (no weight update; it carries no hidden state over) sets
    them (momentum 0.1 at 9 uses per time step forgets the start within a
    step); restoring them afterwards leaves the search's own start untouched.
    """
    import tensorflow as tf
    saved = [net.bn[k].numpy() for k in ("mean", "var")]
    batch = next(iter(strategy.experimental_distribute_dataset(stream)))

    def forward(b):
        h0 = tf.zeros(tf.stack([tf.shape(b["x"])[0], net.nhid]))
        return net.window_terms(b, h0, True, "weight")[0]["loss_sum"]

    strategy.run(forward, args=(batch,))
    try:
        yield
    finally:
        for k, value in zip(("mean", "var"), saved):
            net.bn[k].assign(value)

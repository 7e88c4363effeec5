"""Flags of the recurrent (Penn Treebank) search, added to `python -m dprime_tf.search`.

The recurrent search runs when --dataset is a text corpus (ptb_sample, ptb,
textdir:<path>). Flags it shares with the CNN search (batch size, learning
rates, clipping, ...) take the recurrent search's own defaults (SPEC section
6, `dprime_tf.spaces.rnn.RNNSpace.search_defaults`) when they are not given;
flags.txt records the values used.
"""

from absl import flags

flags.DEFINE_integer("emsize", 300, "Recurrent search: embedding size (the decoder is tied to it; = --nhid).")
flags.DEFINE_integer("nhid", 300, "Recurrent search: hidden size of the cell.")
flags.DEFINE_integer("bptt", 35, "Recurrent search: BPTT window length (half of it for 5% of the windows).")
flags.DEFINE_integer("eval_batch_size", 10, "Recurrent search: batch size of the validation perplexity.")
flags.DEFINE_float("dropout", 0.75, "Recurrent search: locked dropout on the cell outputs.")
flags.DEFINE_float("dropouth", 0.25, "Recurrent search: dropout on the hidden state and the cell's states.")
flags.DEFINE_float("dropoutx", 0.75, "Recurrent search: dropout on the cell input x_t.")
flags.DEFINE_float("dropouti", 0.2, "Recurrent search: locked dropout on the embeddings.")
flags.DEFINE_float("dropoute", 0.0, "Recurrent search: dropout of whole words of the embedding matrix.")
flags.DEFINE_enum("alpha_text", "valid", ("valid", "train_split"),
                  "Recurrent search: the text of the alpha steps: valid (the corpus's validation text, as the "
                  "official search; all of the training text trains the weights and --split is unused) or "
                  "train_split (the part of the training text that --split holds out).")
flags.DEFINE_float("tar_beta", 1e-3, "Recurrent search: temporal activation regularization (slowness) weight "
                   "in the weight loss.")

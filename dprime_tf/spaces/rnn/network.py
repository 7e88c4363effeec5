"""The final recurrent language model from a genotype (DARTS's RNNModel with DARTSCell).

Same embedding, tied decoder, dropouts and highway initial state as the
search model (`dprime_tf.spaces.rnn.supernet.RecurrentLM`); the cell keeps one
(op, predecessor) per node and has no batch norm:

    s0 = h + sigmoid(c0) * (tanh(h0) - h)
    s_i = s_p + sigmoid(c) * (f(h') - s_p),  (c, h') = split((s_p * h_mask) @ W_i),  p = predecessor of node i
    output = mean of the `concat` nodes

The model is a Keras model (save/load as `.keras`); its config carries the
genotype and, optionally, the vocabulary, so a saved file is all an
evaluation needs.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dprime_tf.spaces.rnn.genotype import RecurrentGenotype
from dprime_tf.spaces.rnn.supernet import RecurrentLM, activation


@keras.saving.register_keras_serializable("dprime_tf")
class RNNModel(RecurrentLM):
    """A recurrent language model with a DARTS cell from `genotype`."""

    def __init__(self, vocab_size, genotype, emsize=850, nhid=850, dropout=0.75, dropouth=0.25, dropoutx=0.75,
                 dropouti=0.2, dropoute=0.1, tar_beta=1e-3, vocab=None, seed=0, **kwargs):
        if isinstance(genotype, dict):
            genotype = RecurrentGenotype.from_dict(genotype)
        if not isinstance(genotype, RecurrentGenotype):
            raise TypeError(f"genotype must be a RecurrentGenotype or its dict, got {type(genotype).__name__}")
        super().__init__(vocab_size, emsize, nhid, dropout, dropouth, dropoutx, dropouti, dropoute, tar_beta,
                         genotype.steps, seed, **kwargs)
        if vocab is not None and len(vocab) != self.vocab_size:
            raise ValueError(f"vocab has {len(vocab)} words but vocab_size is {vocab_size}")
        self.genotype = genotype
        self.vocab = None if vocab is None else list(vocab)
        self._build_lm()
        self.built = True

    def _cell_step(self, x_t, h, masks, carry, training):
        hm = masks.get("h")
        states = [self._highway(x_t, h, masks)]
        for i, (op, pred) in enumerate(self.genotype.recurrent):
            s_prev = states[pred]
            fed = s_prev if hm is None else s_prev * hm
            c, hh = tf.split(tf.matmul(fed, self.ws[i]), 2, axis=-1)
            states.append(s_prev + tf.sigmoid(c) * (activation(op, hh) - s_prev))
        return tf.reduce_mean(tf.stack([states[i] for i in self.genotype.concat]), axis=0), carry

    def get_config(self):
        return {**super().get_config(), **self.lm_config(), "genotype": self.genotype.to_dict(),
                "vocab": self.vocab}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def count_parameters(model) -> int:
    """Trainable parameters (the decoder shares the embedding)."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def load_model(path: str) -> RNNModel:
    """A saved RNNModel (.keras file or a training run directory holding model.keras)."""
    import os

    from dprime_tf.errors import UserError
    file = os.path.join(path, "model.keras") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise UserError(f"--model {path}: no model.keras there (pass a training run directory or a .keras file)")
    try:
        model = keras.models.load_model(file, compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many kinds
        raise UserError(f"--model {file} is not a loadable Keras model: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(model, RNNModel):
        raise UserError(f"--model {file} is a {type(model).__name__}, not a recurrent language model")
    return model


class PerplexityEvaluator:
    """Perplexity of a recurrent LM on a token sequence, as DARTS's evaluate():
    rows of `batch_size`, fixed `bptt` windows, the hidden state carried from
    window to window; perplexity = exp(summed NLL / scored tokens).

    The compiled step is traced once per evaluator (windows have a fixed
    padded shape), so keep one evaluator for repeated evaluations.
    """

    def __init__(self, model: RNNModel, batch_size: int = 10, bptt: int = 35):
        self.model, self.batch_size, self.bptt = model, int(batch_size), int(bptt)
        self._step = tf.function(self._window, reduce_retracing=True)

    def _window(self, batch, h):
        terms, h = self.model.window_terms(batch, h, False, "eval")
        return terms["loss_sum"], tf.cast(terms["count"], tf.float32), h

    def __call__(self, ids) -> dict:
        from dprime_tf.data import text
        total, count = 0.0, 0.0
        h = tf.zeros([self.batch_size, self.model.nhid])
        for batch in text.make_eval_dataset(ids, self.batch_size, self.bptt):
            loss_sum, n, h = self._step(batch, h)
            total += float(loss_sum)
            count += float(n)
        nll = total / count
        return {"perplexity": float(np.exp(nll)), "nll": nll, "tokens": int(count)}

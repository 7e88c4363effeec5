"""The DARTS recurrent search space (SPEC section 6) as Keras models.

A word-level language model: embedding (tied with the decoder), one recurrent
cell, DARTS's dropouts, and a softmax over the vocabulary.

The cell (DARTS's DARTSCell / DARTSCellSearch): from the input x_t and the
previous hidden state h,
    (c0, h0) = split([x_t * x_mask, h * h_mask] @ W0);  s0 = h + sigmoid(c0) * (tanh(h0) - h)
(a highway step), then 8 nodes. In the search cell node i mixes an edge from
every earlier state s_j (j < i, s_0 included):
    (c, h') = split((s_j * h_mask) @ W_i);  out_k = s_j + sigmoid(c) * (f_k(h') - s_j)
    node_i = BN(sum_j sum_k softmax(alpha)[edge(i, j), k] * out_k)
over the ops f_k of RNN_PRIMITIVES (`none` contributes zero); s0 is batch
normalized too, by the same BN (no affine parameters; its running statistics
are updated at every use, as the reference's single nn.BatchNorm1d). The
output (and next hidden state) is the mean of the 8 nodes. alpha has one row
per edge: 1 + 2 + ... + 8 = 36 rows, 5 columns. The final cell (from a
genotype, `dprime_tf.spaces.rnn.network`) keeps one (op, predecessor) per node and
has no BN.

Dropouts (SPEC section 6; rates are drop probabilities, masks are scaled by
1/keep): `dropouti` on the embeddings and `dropout` on the cell outputs are
locked (one mask per sequence, the same at every time step); `dropoutx`
masks x_t and `dropouth` masks h and the states fed to every W_i, also one
mask per sequence; `dropoute` drops whole words of the embedding matrix.
Masks come from stateless RNGs seeded by (model seed, stream, mask kind,
window number) and are drawn for the global batch, each replica taking its
rows: runs are reproducible across resumes and N replicas draw what one
device draws.

Hidden state across windows: as DARTS, the hidden state carries over from one
BPTT window to the next without backpropagation through the earlier windows.
The search model keeps one hidden state per stream ("weight", "alpha",
"eval") in non-trainable variables, synchronized on read with SUM
aggregation: each replica writes its rows of the global (B, H) state and
zeros elsewhere, so a checkpoint saves the whole global state.

Recurrence: a tf.while_loop over the window's true length (one trace for
every length). Under several replicas in training, where batch norm
all-reduces its statistics (not allowed inside a while loop), the loop is
unrolled over the padded length and masked past the true length.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dprime_tf.spaces.layers import BN_EPS, BN_MOMENTUM, add_batch_norm, batch_moments
from dprime_tf.spaces.primitives import RNN_PRIMITIVES, num_edges

STEPS = 8
INIT_RANGE = 0.04
NUM_OPS = len(RNN_PRIMITIVES)
STREAMS = ("weight", "alpha", "eval")
_STREAM_IDS = {"weight": 0, "alpha": 1, "eval": 2, "train": 0}
_MASKS = ("embedding", "input", "x", "h", "output")  # mask kinds (seed offsets)


def activation(name, h):
    if name == "tanh":
        return tf.tanh(h)
    if name == "relu":
        return tf.nn.relu(h)
    if name == "sigmoid":
        return tf.sigmoid(h)
    if name == "identity":
        return h
    raise ValueError(f"unknown recurrent op {name!r}")


def edge_index(node: int, source: int) -> int:
    """Row of alpha for the edge from state `source` (0 = s0) into node `node` (1..8)."""
    return num_edges(1, node - 1) + source


def _replica():
    """(replica id, number of replicas in sync) of the current context."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # cross-replica context: computations here see the whole batch
        return 0, 1
    return ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync


class HiddenStates:
    """Per-stream hidden states of a recurrent model, as on-read variables of `owner`.

    The variables hold the *global* batch's state (batch_size rows); a replica
    reads and writes its rows (the rows tf.distribute gives it: replica r gets
    rows [r*b, (r+1)*b) of every batch). Writes are detached: no gradient
    flows into the next window.
    """

    def __init__(self, owner: keras.layers.Layer, batch_sizes: dict, units: int):
        self.batch_sizes = {k: int(v) for k, v in batch_sizes.items()}
        self.units = int(units)
        self.variables = {}
        for stream, rows in self.batch_sizes.items():
            with owner._open_name_scope():
                var = keras.Variable(initializer="zeros", shape=(rows, self.units), dtype="float32",
                                     trainable=False, name=f"hidden_{stream}", aggregation="sum",
                                     synchronization="on_read")
            owner._track_variable(var)
            self.variables[stream] = var

    def read(self, stream, reset, local_rows):
        var = self.variables[stream].value
        rid, replicas = _replica()
        if replicas > 1:
            var = var[rid * local_rows:(rid + 1) * local_rows]
        return tf.where(tf.reshape(reset, [-1, 1]), tf.zeros_like(var), var)

    def write(self, stream, h):
        var = self.variables[stream]
        h = tf.stop_gradient(h)
        rid, replicas = _replica()
        if replicas > 1:
            rows = tf.shape(h)[0]
            h = tf.pad(h, [[rid * rows, self.batch_sizes[stream] - (rid + 1) * rows], [0, 0]])
        var.assign(h)

    def reset(self):
        for var in self.variables.values():
            var.assign(tf.zeros(var.shape))


class RecurrentLM(keras.Model):
    """What the search and the final language models share: embedding + tied
    decoder, dropouts, the highway initial state, the recurrence loop and the loss.

    Subclasses define `_cell_step(x_t, h, masks, carry, training)` and
    `_initial_carry(training)` / `_final_carry(carry, training)` for state
    carried through time besides h (BN running statistics).
    """

    def __init__(self, vocab_size, emsize=300, nhid=300, dropout=0.75, dropouth=0.25, dropoutx=0.75,
                 dropouti=0.2, dropoute=0.0, tar_beta=1e-3, steps=STEPS, seed=0, **kwargs):
        super().__init__(**kwargs)
        if int(emsize) != int(nhid):
            raise ValueError(f"the decoder is tied to the embedding, so emsize ({emsize}) must equal nhid ({nhid})")
        for name, rate in (("dropout", dropout), ("dropouth", dropouth), ("dropoutx", dropoutx),
                           ("dropouti", dropouti), ("dropoute", dropoute)):
            if not 0.0 <= float(rate) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")
        self.vocab_size, self.emsize, self.nhid = int(vocab_size), int(emsize), int(nhid)
        self.dropout, self.dropouth, self.dropoutx = float(dropout), float(dropouth), float(dropoutx)
        self.dropouti, self.dropoute = float(dropouti), float(dropoute)
        self.tar_beta = float(tar_beta)
        self.steps = int(steps)
        self.seed = int(seed)

    def _init(self):
        return keras.initializers.RandomUniform(-INIT_RANGE, INIT_RANGE)

    def _build_lm(self):
        self.embedding = self.add_weight(shape=(self.vocab_size, self.emsize), initializer=self._init(),
                                         name="embedding")
        self.decoder_bias = self.add_weight(shape=(self.vocab_size,), initializer="zeros", name="decoder_bias")
        self.w0 = self.add_weight(shape=(self.emsize + self.nhid, 2 * self.nhid), initializer=self._init(),
                                  name="w0")
        self.ws = [self.add_weight(shape=(self.nhid, 2 * self.nhid), initializer=self._init(), name=f"w{i + 1}")
                   for i in range(self.steps)]

    # -- dropout masks --------------------------------------------------------
    def _mask(self, kind, stream, index, rows, width, rate, per_row=True):
        """A (rows, width) keep/scale mask for this replica's rows of the global batch, or None.

        per_row=False: one mask shared by all rows and replicas (the embedding's word mask)."""
        if rate <= 0.0:
            return None
        rid, replicas = _replica() if per_row else (0, 1)
        seed = tf.stack([tf.constant(self.seed * 1000 + _STREAM_IDS.get(stream, 3) * 16 + _MASKS.index(kind),
                                     tf.int64), tf.cast(index, tf.int64)])
        global_rows = rows * replicas
        keep = 1.0 - rate
        u = tf.random.stateless_uniform(tf.stack([global_rows, width]), seed=seed)
        mask = tf.cast(u < keep, tf.float32) / keep
        if replicas > 1:
            mask = mask[rid * rows:(rid + 1) * rows]
        return mask

    def _masks(self, stream, index, rows, training):
        if not training:
            return {}
        return {"x": self._mask("x", stream, index, rows, self.emsize, self.dropoutx),
                "h": self._mask("h", stream, index, rows, self.nhid, self.dropouth)}

    # -- the cell ---------------------------------------------------------------
    def _highway(self, x_t, h, masks):
        xm, hm = masks.get("x"), masks.get("h")
        xh = tf.concat([x_t if xm is None else x_t * xm, h if hm is None else h * hm], axis=-1)
        c0, h0 = tf.split(tf.matmul(xh, self.w0), 2, axis=-1)
        return h + tf.sigmoid(c0) * (tf.tanh(h0) - h)

    def _initial_carry(self, training):
        return ()

    def _final_carry(self, carry, training):
        return None

    def _cell_step(self, x_t, h, masks, carry, training):
        raise NotImplementedError

    def _unrolled(self, training):
        """Whether the recurrence must be a Python loop (cross-replica syncs in the step)."""
        return False

    def _recur(self, xs, h, length, masks, training):
        """Runs the cell over xs[:length] (time-major); returns (outputs (T, B, H), last h)."""
        carry = self._initial_carry(training)
        max_len = xs.shape[0]
        if self._unrolled(training):
            outputs = []
            for t in range(max_len):
                h_new, carry_new = self._cell_step(xs[t], h, masks, carry, training)
                valid = t < length
                h = tf.where(valid, h_new, h)
                carry = tf.nest.map_structure(lambda a, b: tf.where(valid, a, b), carry_new, carry)
                outputs.append(h_new)
            outputs = tf.stack(outputs)[:length]
        else:
            ta = tf.TensorArray(tf.float32, size=length, element_shape=h.shape)

            def body(t, h, carry, ta):
                h, carry = self._cell_step(tf.gather(xs, t), h, masks, carry, training)
                return t + 1, h, carry, ta.write(t, h)

            _, h, carry, ta = tf.while_loop(lambda t, *_: t < length, body, (tf.constant(0), h, carry, ta),
                                            maximum_iterations=max_len)
            outputs = ta.stack()
        self._final_carry(carry, training)
        return outputs, h

    # -- the language model -----------------------------------------------------
    def forward(self, x, h0, length=None, index=0, training=False, stream="weight"):
        """One window: x (B, L) int token ids, h0 (B, H) -> (logits (T, B, V), h_T, raw outputs (T, B, H)).

        Only the first `length` (default L) positions are computed; outputs are time-major.
        """
        x = tf.cast(tf.convert_to_tensor(x), tf.int32)
        rows = tf.shape(x)[0]
        length = tf.shape(x)[1] if length is None else tf.cast(length, tf.int32)
        emb_matrix = self.embedding.value
        if training and self.dropoute > 0:
            word_mask = self._mask("embedding", stream, index, 1, self.vocab_size, self.dropoute, per_row=False)
            emb_matrix = emb_matrix * tf.reshape(word_mask, [-1, 1])
        emb = tf.gather(emb_matrix, tf.transpose(x))  # (L, B, E)
        if training:
            m = self._mask("input", stream, index, rows, self.emsize, self.dropouti)
            if m is not None:
                emb = emb * m[None]
        outputs, h = self._recur(emb, h0, length, self._masks(stream, index, rows, training), training)
        dropped = outputs
        if training:
            m = self._mask("output", stream, index, rows, self.nhid, self.dropout)
            if m is not None:
                dropped = outputs * m[None]
        flat = tf.reshape(dropped, [-1, self.nhid])
        logits = tf.matmul(flat, emb_matrix, transpose_b=True) + self.decoder_bias
        logits = tf.reshape(logits, tf.concat([tf.shape(dropped)[:2], [self.vocab_size]], 0))
        return logits, h, outputs

    def window_terms(self, data, h0, training, stream):
        """Loss terms of one window batch and its last hidden state."""
        x, y = data["x"], data["y"]
        length = tf.cast(data["length"][0], tf.int32)
        index = data["index"][0]
        logits, h, outputs = self.forward(x, h0, length, index, training, stream)
        targets = tf.transpose(tf.cast(y, tf.int32)[:, :length])  # (T, B)
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
        terms = {"loss_sum": tf.reduce_sum(nll), "count": tf.size(targets)}
        if training and self.tar_beta > 0:
            # DARTS's TAR (slowness): beta * mean((h_{t+1} - h_t)^2) of the raw outputs.
            diff = outputs[1:] - outputs[:-1]
            terms["penalty"] = self.tar_beta * tf.reduce_sum(tf.square(diff)) / tf.cast(
                tf.maximum(tf.size(diff), 1), tf.float32)
        return terms, h

    def call(self, x, training=False):
        """Logits (B, T, V) of token ids x (B, T) from a zero hidden state."""
        x = tf.cast(tf.convert_to_tensor(x), tf.int32)
        h0 = tf.zeros(tf.stack([tf.shape(x)[0], self.nhid]))
        logits, _, _ = self.forward(x, h0, training=training)
        return tf.transpose(logits, [1, 0, 2])

    def lm_config(self):
        return {"vocab_size": self.vocab_size, "emsize": self.emsize, "nhid": self.nhid,
                "dropout": self.dropout, "dropouth": self.dropouth, "dropoutx": self.dropoutx,
                "dropouti": self.dropouti, "dropoute": self.dropoute, "tar_beta": self.tar_beta,
                "seed": self.seed}


@keras.saving.register_keras_serializable("dprime_tf")
class RecurrentSearchNetwork(RecurrentLM):
    """The DARTS recurrent supernet with its architecture parameters.

    `alpha` (36 x 5, 1e-3 * N(0, 1)) is a non-trainable variable (stepped by the
    search's alpha optimizer, kept out of the weight optimizer and FI).
    `batch_sizes` are the global batch sizes of the streams, which fix the
    shapes of the carried hidden states.
    """

    search_space = "rnn"
    metric = "perplexity"

    def __init__(self, vocab_size, emsize=300, nhid=300, dropout=0.75, dropouth=0.25, dropoutx=0.75,
                 dropouti=0.2, dropoute=0.0, tar_beta=1e-3, batch_sizes=None, seed=0, **kwargs):
        super().__init__(vocab_size, emsize, nhid, dropout, dropouth, dropoutx, dropouti, dropoute, tar_beta,
                         STEPS, seed, **kwargs)
        self.batch_sizes = dict(batch_sizes or {"weight": 256, "alpha": 256, "eval": 10})
        self._build_lm()
        self.bn = add_batch_norm(self, "bn", (self.nhid,), affine=False)
        self.alpha = self.add_weight(shape=(num_edges(1, STEPS), NUM_OPS), trainable=False, name="alpha",
                                     initializer=keras.initializers.RandomNormal(stddev=1e-3))
        self.states = HiddenStates(self, self.batch_sizes, self.nhid)
        self.built = True

    @property
    def alphas(self):
        return [self.alpha]

    @property
    def primitives(self):
        return RNN_PRIMITIVES

    # -- cell -----------------------------------------------------------------------
    def _unrolled(self, training):
        return bool(training) and _replica()[1] > 1

    def _initial_carry(self, training):
        return (self.bn["mean"].value + 0.0, self.bn["var"].value + 0.0)

    def _final_carry(self, carry, training):
        if training:
            self.bn["mean"].value.assign(carry[0])
            self.bn["var"].value.assign(carry[1])

    def _batch_norm(self, s, running, training):
        if not training:
            return (s - running[0]) * tf.math.rsqrt(running[1] + BN_EPS), running
        if _replica()[1] == 1:
            # One fused op (forward and gradient), which also returns the updated
            # running statistics (unbiased variance, momentum 0.1).
            y, new_mean, new_var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=tf.reshape(s, [-1, 1, 1, self.nhid]), scale=tf.ones([self.nhid]), offset=tf.zeros([self.nhid]),
                mean=running[0], variance=running[1], epsilon=BN_EPS, exponential_avg_factor=BN_MOMENTUM,
                data_format="NHWC", is_training=True)
            return tf.reshape(y, tf.shape(s)), (tf.stop_gradient(new_mean), tf.stop_gradient(new_var))
        mean, var, count = batch_moments(s, [0])
        unbiased = tf.stop_gradient(var * count / tf.maximum(count - 1.0, 1.0))
        running = (running[0] + BN_MOMENTUM * (tf.stop_gradient(mean) - running[0]),
                   running[1] + BN_MOMENTUM * (unbiased - running[1]))
        return (s - mean) * tf.math.rsqrt(var + BN_EPS), running

    def _masks(self, stream, index, rows, training):
        # softmax(alpha) once per window, handed to every cell step with the masks
        return {**super()._masks(stream, index, rows, training), "probs": tf.nn.softmax(self.alpha, axis=-1)}

    def _cell_step(self, x_t, h, masks, running, training):
        probs = masks["probs"]
        s0, running = self._batch_norm(self._highway(x_t, h, masks), running, training)
        hm = masks.get("h")
        states = s0[None]  # (n, B, H): the states so far
        offset = 0
        for i in range(self.steps):
            n = i + 1
            fed = states if hm is None else states * hm[None]
            ch = tf.reshape(tf.matmul(tf.reshape(fed, [-1, self.nhid]), self.ws[i]), [n, -1, 2 * self.nhid])
            c, hh = tf.split(ch, 2, axis=-1)
            c = tf.sigmoid(c)
            p = probs[offset:offset + n, 1:]  # (n, ops without none)
            # sum_k p_k (s + c (f_k(h') - s)) = P (1 - c) s + c F with P = sum_k p_k and
            # F = sum_k p_k f_k(h') (k over the ops but `none`), summed over the edges.
            pk = [p[:, k, None, None] for k in range(NUM_OPS - 1)]
            f_mix = tf.add_n([w * activation(name, hh) for w, name in zip(pk, RNN_PRIMITIVES[1:])])
            p_sum = tf.add_n(pk)
            s = tf.reduce_sum(p_sum * (1.0 - c) * states + c * f_mix, axis=0)
            s, running = self._batch_norm(s, running, training)
            states = tf.concat([states, s[None]], axis=0)
            offset += n
        return tf.reduce_mean(states[1:], axis=0), running

    # -- the searcher's interface -------------------------------------------------------
    def loss_terms(self, data, training=False, stream="weight"):
        """Summed NLL and token count of one window batch (+ TAR when training), carrying
        the stream's hidden state from the previous window."""
        x = data["x"]
        h0 = self.states.read(stream, data["reset"], tf.shape(x)[0])
        terms, h = self.window_terms(data, h0, training, stream)
        self.states.write(stream, h)
        return terms

    def mixing_weights(self):
        return {"recurrent": tf.nn.softmax(self.alpha, axis=-1).numpy()}

    def genotype(self):
        from dprime_tf.spaces.rnn.genotype import derive_recurrent_genotype
        return derive_recurrent_genotype(self.alpha.numpy())

    def discretize_kwargs(self):
        return dict(num_inputs=1, keep=1, none_index=RNN_PRIMITIVES.index("none"))

    def get_config(self):
        return {**super().get_config(), **self.lm_config(), "batch_sizes": self.batch_sizes}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def count_parameters(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))

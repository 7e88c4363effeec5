"""Text corpora for the recurrent search and language-model training (PTB format).

Dataset specs (the `--dataset` flag of the recurrent commands):
  ptb_sample       the embedded default: the Penn Treebank *validation* split
                   (Mikolov's preprocessing, 3,370 lines, 73,760 tokens with
                   <eos>) shipped gzipped in `ptb_sample.txt.gz` next to this
                   file. Split by lines: the first 80% are `train`, the next 10%
                   `valid`, the last 10% `test` (never seen by search/training).
  ptb              the standard files ptb.train.txt, ptb.valid.txt, ptb.test.txt
                   in `--data_dir` (no download: the machine may be offline).
  textdir:<path>   a user's corpus in PTB format: train.txt and valid.txt (and
                   optionally test.txt), or ptb.train.txt / ptb.valid.txt /
                   ptb.test.txt, in <path>.

PTB format: one sentence a line, tokens separated by spaces; every line ends
with an `<eos>` token (also empty lines, as the reference's Corpus does). The
vocabulary is every word of train, valid and test in order of first
appearance (the reference's Dictionary), so a corpus has no unknown words; a
trained model reading another file maps words it does not know to `<unk>`.

Streams (DARTS's `batchify` + `get_batch`): a token sequence of length n is
cut into B rows of n // B consecutive tokens (row b holds tokens
[b*N, (b+1)*N)); a batch is a window of columns [i, i + len) of all rows,
with targets shifted by one. The hidden state carries over from one window
to the next (each row continues its own text), so every batch says whether
it starts a pass (`reset`: the hidden state is zeroed first).

Window lengths (`length_mode`):
  fixed    bptt every time (evaluation; DARTS's alpha stream);
  search   bptt with probability 0.95, else bptt // 2 (DARTS's search);
  train    as DARTS's final training: bptt' = bptt (p 0.95) or bptt / 2, then
           len = max(5, int(N(bptt', 5))), capped at bptt + max_delta.
Variable lengths and tf.function: every batch has the *fixed* padded shape
(B, max_len) plus its true `length`; the models run their recurrence for
`length` steps (a tf.while_loop with a tensor trip count on one device; an
unrolled max_len loop that masks the steps past `length` under several
replicas). So the compiled step is traced once, whatever the lengths.

Batches are dicts of per-row tensors (per-row so tf.distribute can split a
global batch between replicas by rows):
  x (B, max_len) int32   inputs (positions >= length hold unused tokens)
  y (B, max_len) int32   targets (x shifted by one)
  length (B,) int32      the window's length, the same in every row
  reset (B,) bool        first window of a pass: zero the hidden state
  index (B,) int64       the window's number in the stream (seeds dropout)

The streams are pure functions of (seed, window number): pass p draws its
lengths from a stateless RNG seeded by (seed, p), and `start_batch=k` yields
exactly the windows k, k+1, ... (resume after a kill).
"""

from __future__ import annotations

import dataclasses
import gzip
import os

import numpy as np
import tensorflow as tf

from dprime_tf.errors import UserError

EOS = "<eos>"
UNK = "<unk>"
SAMPLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ptb_sample.txt.gz")
SAMPLE_SPLIT = (0.8, 0.1)  # train, valid fractions of the sample's lines; the rest is test
LENGTH_MODES = ("fixed", "search", "train")
MIN_TRAIN_LEN = 5
DATASETS_HELP = "ptb_sample (embedded), ptb (ptb.{train,valid,test}.txt in --data_dir) or textdir:<path>"


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    vocab: tuple          # index -> word
    train: np.ndarray     # int32 token ids
    valid: np.ndarray
    test: np.ndarray | None
    name: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


# ------------------------------------------------------------------ reading
def tokenize_lines(lines) -> list:
    """PTB tokens of an iterable of lines: words split on whitespace, <eos> after each line."""
    out = []
    for line in lines:
        out.extend(line.split())
        out.append(EOS)
    return out


def read_tokens(path: str) -> list:
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            return tokenize_lines(f)
    except FileNotFoundError:
        raise UserError(f"text file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a text file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def build_vocab(*token_lists) -> tuple:
    """Words in order of first appearance (the reference's Dictionary)."""
    seen = {}
    for tokens in token_lists:
        for w in tokens:
            if w not in seen:
                seen[w] = len(seen)
    return tuple(seen)


def encode(tokens, vocab, allow_unknown=False):
    """Token ids; unknown words become <unk> when allowed (and in the vocabulary).

    Returns (ids int32, number of words mapped to <unk>).
    """
    index = {w: i for i, w in enumerate(vocab)}
    unk = index.get(UNK)
    ids = np.empty(len(tokens), np.int32)
    unknown = 0
    for k, w in enumerate(tokens):
        i = index.get(w)
        if i is None:
            if not allow_unknown or unk is None:
                hint = "" if unk is not None else f" and the vocabulary has no {UNK} to map it to"
                raise UserError(f"word {w!r} is not in the model's vocabulary{hint}")
            i = unk
            unknown += 1
        ids[k] = i
    return ids, unknown


def load_corpus(spec: str, data_dir: str | None = None) -> Corpus:
    """A dataset spec (see the module docstring) as a Corpus; UserError (one line) on bad input."""
    text = str(spec).strip()
    key = text.lower()
    if key == "ptb_sample":
        with gzip.open(SAMPLE_PATH, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
        n_train = int(len(lines) * SAMPLE_SPLIT[0])
        n_valid = int(len(lines) * SAMPLE_SPLIT[1])
        parts = (tokenize_lines(lines[:n_train]), tokenize_lines(lines[n_train:n_train + n_valid]),
                 tokenize_lines(lines[n_train + n_valid:]))
        name = "ptb_sample"
    elif key == "ptb":
        if not data_dir:
            raise UserError("--dataset=ptb reads ptb.train.txt, ptb.valid.txt and ptb.test.txt from "
                            "--data_dir: pass --data_dir (nothing is downloaded), or --dataset=ptb_sample")
        parts = tuple(read_tokens(os.path.join(data_dir, f"ptb.{s}.txt")) for s in ("train", "valid", "test"))
        name = "ptb"
    elif key.startswith("textdir:"):
        parts = _read_textdir(text[len("textdir:"):])
        name = text
    else:
        raise UserError(f"unknown --dataset={text} for a recurrent model: use {DATASETS_HELP}")
    train, valid, test = parts
    for split, tokens in (("train", train), ("valid", valid)):
        if len(tokens) < 2 or all(t == EOS for t in tokens):
            raise UserError(f"the {split} text of --dataset={text} has no words")
    vocab = build_vocab(train, valid, test or [])
    ids = [encode(t, vocab)[0] if t is not None else None for t in (train, valid, test)]
    return Corpus(vocab, ids[0], ids[1], ids[2], name)


def _read_textdir(path):
    if not os.path.isdir(path):
        raise UserError(f"--dataset=textdir:{path}: no such directory")
    for names in (("train.txt", "valid.txt", "test.txt"), ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")):
        files = [os.path.join(path, n) for n in names]
        if os.path.isfile(files[0]) and os.path.isfile(files[1]):
            test = read_tokens(files[2]) if os.path.isfile(files[2]) else None
            return read_tokens(files[0]), read_tokens(files[1]), test
    raise UserError(f"--dataset=textdir:{path} needs train.txt and valid.txt (optionally test.txt), "
                    "or ptb.train.txt and ptb.valid.txt, one sentence a line")


# ------------------------------------------------------------------ streams
def batchify(ids, batch_size: int) -> np.ndarray:
    """(B, n // B): row b holds tokens [b * N, (b + 1) * N); the remainder is dropped."""
    ids = np.asarray(ids, np.int32).reshape(-1)
    per_row = len(ids) // batch_size
    if per_row < 2:
        raise UserError(f"batch size {batch_size} is too large for a text of {len(ids)} tokens "
                        f"(each of the {batch_size} rows needs at least 2 tokens): use a smaller batch size")
    return ids[:per_row * batch_size].reshape(batch_size, per_row)


def max_length(bptt: int, length_mode: str = "fixed", max_delta: int = 20) -> int:
    """The padded window length of a stream."""
    if length_mode == "train":
        return max(int(bptt) + int(max_delta), MIN_TRAIN_LEN)
    return int(bptt)


def window_schedule(columns: int, bptt: int, length_mode: str, seed: int, pass_number,
                    max_delta: int = 20):
    """(starts, lengths) int32 tensors of the windows of one pass over `columns` columns.

    As DARTS: training passes (search/train) advance i by the drawn length while
    i < columns - 2; fixed passes (evaluation) use i = 0, bptt, ... < columns - 1.
    A window's length is min(drawn, columns - 1 - i).
    """
    if length_mode not in LENGTH_MODES:
        raise ValueError(f"unknown length_mode {length_mode!r}")
    bptt = int(bptt)
    if length_mode == "fixed":
        starts = tf.range(0, columns - 1, bptt, dtype=tf.int32)
        return starts, tf.minimum(bptt, columns - 1 - starts)
    shortest = max(1, bptt // 2) if length_mode == "search" else MIN_TRAIN_LEN
    n_max = (columns - 2) // shortest + 2
    seed2 = tf.stack([tf.cast(seed, tf.int64), tf.cast(pass_number, tf.int64)])
    u_seed, n_seed = tf.unstack(tf.random.experimental.stateless_split(seed2, 2))
    half = tf.random.stateless_uniform([n_max], seed=u_seed) >= 0.95
    if length_mode == "search":
        lengths = tf.where(half, bptt // 2, bptt)
    else:
        mean = tf.where(half, bptt / 2.0, float(bptt))
        drawn = tf.cast(mean + 5.0 * tf.random.stateless_normal([n_max], seed=n_seed), tf.int32)  # int() truncates
        lengths = tf.minimum(tf.maximum(MIN_TRAIN_LEN, drawn), bptt + int(max_delta))
    lengths = tf.cast(tf.maximum(lengths, 1), tf.int32)
    starts = tf.cumsum(lengths, exclusive=True)
    keep = starts < columns - 2
    starts, lengths = tf.boolean_mask(starts, keep), tf.boolean_mask(lengths, keep)
    return starts, tf.minimum(lengths, columns - 1 - starts)


def windows_per_pass(columns, bptt, length_mode, seed, pass_number, max_delta=20) -> int:
    return int(window_schedule(columns, bptt, length_mode, seed, pass_number, max_delta)[0].shape[0])


def make_stream(ids, batch_size: int, bptt: int, length_mode: str = "search", seed: int = 0,
                start_batch: int = 0, max_delta: int = 20, repeat: bool = True) -> tf.data.Dataset:
    """Dataset of window batches (see the module docstring) over the token ids.

    repeat=True: infinite passes (training streams); False: one pass (evaluation).
    """
    rows = batchify(ids, batch_size)
    columns = rows.shape[1]
    max_len = max_length(bptt, length_mode, max_delta)
    if max_len > columns - 1 and length_mode == "fixed":
        max_len = columns - 1  # a short evaluation text: one window of all of it
    padded = tf.constant(np.pad(rows, [(0, 0), (0, max_len + 1)]))
    start_pass, offset = 0, int(start_batch)
    if offset and not repeat:
        raise ValueError("start_batch needs a repeating stream")
    while offset:  # find the pass holding window start_batch
        n = windows_per_pass(columns, bptt, length_mode, seed, start_pass, max_delta)
        if offset < n:
            break
        offset -= n
        start_pass += 1

    def one_pass(p):
        starts, lengths = window_schedule(columns, bptt, length_mode, seed, p, max_delta)
        first = tf.cast(p == start_pass, tf.int32) * offset
        n = tf.shape(starts)[0]
        positions = tf.range(first, n)
        return tf.data.Dataset.from_tensor_slices(
            (tf.gather(starts, positions), tf.gather(lengths, positions), tf.equal(positions, 0)))

    def window(start, length, reset, index):
        x = tf.slice(padded, [0, start], [batch_size, max_len])
        y = tf.slice(padded, [0, start + 1], [batch_size, max_len])
        per_row = lambda v: tf.fill([batch_size], v)  # noqa: E731
        return {"x": x, "y": y, "length": per_row(length), "reset": per_row(reset),
                "index": per_row(tf.cast(index, tf.int64))}

    passes = tf.data.Dataset.counter(start_pass, dtype=tf.int64) if repeat else tf.data.Dataset.range(1)
    windows = passes.flat_map(one_pass)
    indices = tf.data.Dataset.counter(int(start_batch), dtype=tf.int64)
    options = tf.data.Options()
    options.deterministic = True
    # unbatch + batch: an explicit batch op, which tf.distribute splits between replicas by rows.
    ds = (tf.data.Dataset.zip((windows, indices))
          .map(lambda w, i: window(w[0], w[1], w[2], i))
          .unbatch().batch(batch_size, drop_remainder=True)
          .prefetch(2)
          .with_options(options))
    if not repeat:  # a known length: Keras then knows the number of evaluation steps
        ds = ds.apply(tf.data.experimental.assert_cardinality(
            windows_per_pass(columns, bptt, length_mode, seed, 0, max_delta)))
    return ds


def make_eval_dataset(ids, batch_size: int, bptt: int) -> tf.data.Dataset:
    """One pass of fixed-length windows (DARTS's evaluate()), the hidden state reset at the start."""
    return make_stream(ids, batch_size, bptt, "fixed", repeat=False)


def eval_token_count(ids, batch_size: int) -> int:
    """Tokens scored by an evaluation pass: B * (n // B - 1)."""
    return batch_size * (len(ids) // batch_size - 1)

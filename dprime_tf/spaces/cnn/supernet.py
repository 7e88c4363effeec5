"""The DARTS CNN search space (SPEC section 2) as Keras layers.

Layout is NHWC. A cell's 14 mixed edges are grouped by the state they leave:
all edges leaving one state see the same input, so `MixedEdges` computes the
parameter-free parts once per state (the ReLU in front of every conv op, both
pools with their BN, the identity) and the depthwise convolutions and batch
norms of all those edges as single ops over an edge-major channel layout.
This is the same
arithmetic as the reference's per-edge MixedOp, with ~10x fewer graph nodes,
which is what makes the first step trace in seconds instead of minutes.

Padding follows the reference (symmetric k//2 with explicit pads): TF's
'SAME' pads stride-2 convs asymmetrically, so it is only used where it is
provably identical (stride 1, odd kernels; pools run at stride 1 and are then
subsampled, which keeps PyTorch's window placement and its
count_include_pad=False average).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dprime_tf.graph_constants import shared_constant
from dprime_tf.spaces.depthwise import depthwise_conv2d
from dprime_tf.spaces.devices import onednn_enabled, runs_on_gpu
from dprime_tf.spaces.layers import (StatefulLayer, add_batch_norm, recompute_in_backward, tape_wants_gradient,
                                    torch_default_init)
from dprime_tf.spaces.primitives import CNN_PRIMITIVES, num_edges

STEPS = 4
MULTIPLIER = 4
STEM_MULTIPLIER = 3
NUM_OPS = len(CNN_PRIMITIVES)
OP = {name: i for i, name in enumerate(CNN_PRIMITIVES)}
CONV_OPS = {  # name -> (kernel, dilation, separable)
    "sep_conv_3x3": (3, 1, True),
    "sep_conv_5x5": (5, 1, True),
    "dil_conv_3x3": (3, 2, False),
    "dil_conv_5x5": (5, 2, False),
}


def edge_index(node: int, source: int) -> int:
    """Row of alpha for the edge from state `source` into intermediate node `node`."""
    return num_edges(2, node) + source


def pad(x, p):
    return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]]) if p else x


def depthwise(x, kernel, stride=1, dilation=1):
    """Depthwise conv with the reference's symmetric padding (k//2 * dilation)."""
    k = kernel.shape[0]
    if stride == 1:
        return depthwise_conv2d(x, kernel, dilation=dilation)
    if dilation == 1:
        return depthwise_conv2d(pad(x, k // 2), kernel, 2, "VALID")
    # Stride 2 with dilation 2 (TF rejects the pair): output i reads input
    # 2i + 2j - 2*(k//2) = 2(i + j - k//2), i.e. an undilated stride-1 conv
    # of the even rows/columns.
    return depthwise_conv2d(x[:, ::2, ::2, :], kernel)


def to_phases(x, block):
    """(B, H, W, C) -> (block^2 B, H/block, W/block, C): x's pixels split by
    (row, column) remainder mod `block` into block^2 sub-images, stacked in the
    batch axis (space-to-batch without padding; H and W divisible by block).

    A stride-1 conv dilated by `block` with symmetric padding is the undilated
    'SAME' conv of each sub-image: output (block i + p) reads input
    block (i + a - k//2) + p, which is sub-image p's pixel i + a - k//2, and it
    falls outside x exactly when that falls outside the sub-image. Per-pixel
    ops (1x1 convs) do not see the rearrangement either (see MixedEdges).
    """
    return tf.space_to_batch(x, [block, block], [[0, 0], [0, 0]])


def from_phases(x, block):
    """The inverse of `to_phases`."""
    return tf.batch_to_space(x, [block, block], [[0, 0], [0, 0]])


def subsample(x, stride):
    return x[:, ::2, ::2, :] if stride == 2 else x


# Whether the dilated ops of a MixedEdges share one rearranged input: the 2x2
# phases at stride 1 (see to_phases), the even pixels at stride 2. False gives
# each op its own (TensorFlow's dilated conv at stride 1); the tests compare them.
SHARED_DILATED_INPUT = True
# The dilations of the non-separable (dil_conv) ops, the ones that can share an input.
SHAREABLE_DILATIONS = tuple(sorted({d for _, d, separable in CONV_OPS.values() if d > 1 and not separable}))

# Whether MixedEdges runs its per-edge pointwise convs as one grouped conv:
# None decides by device (see `grouped_pointwise`); tests set True/False.
GROUPED_POINTWISE = None


def grouped_pointwise(device: str = "", dtype=tf.float32) -> bool:
    """Whether grouped 1x1 convs (and their gradients) run where `device` (a
    tensor's requested device, "" if unplaced) is: on GPUs (cuDNN), and on
    CPUs in float32 and bfloat16 with oneDNN's kernels, which TensorFlow turns
    off with TF_ENABLE_ONEDNN_OPTS=0 (so does --deterministic); not in float16
    on CPUs. Measured on a 2-core CPU: the grouped conv replaces a split, n
    convs and a concat, ~16% less time on one (64, 32, 32, 4x16) block, the
    same results, and 8% off the paper-size weight step."""
    if GROUPED_POINTWISE is not None:
        return GROUPED_POINTWISE
    if runs_on_gpu(device):
        return True
    return tf.as_dtype(dtype) in (tf.float32, tf.bfloat16) and onednn_enabled()


# Whether MixedEdges mixes the ops every edge shares (pools, identity) into its
# edges with one 1x1 conv (`mix_shared_ops`) or with a broadcast product and sum
# per op: None decides per call (see `shared_ops_by_conv`); tests set True/False.
SHARED_OPS_BY_CONV = None


def shared_ops_by_conv(mixing) -> bool:
    """Whether `mix_shared_ops` mixes the shared ops with these mixing weights:
    when a tape wants their gradient (the search's alpha step) and they are
    float32.

    The conv's kernel is mostly zeros, so it pays off only where it replaces
    the mixing weights' gradients too (a product and a full sum per weight):
    in the weight step, which does not differentiate them, it measured no
    faster in one process and 4-10% slower in separate ones (BUILD.md, "The
    ops every edge shares"). In 16-bit types its kernel
    gradient rounds every channel pair's sum to 16 bits before the sums along
    its diagonals that are the weights' gradients: a tiny bf16 search drifted
    8.7% from the float32 one in six steps (tests/test_fast_paths.py allows
    8%), and an fp16 one overflowed its loss-scaled gradients again."""
    if SHARED_OPS_BY_CONV is not None:
        return SHARED_OPS_BY_CONV
    return mixing.dtype == tf.float32 and tape_wants_gradient(mixing)


def mix_shared_ops(values, mixing):
    """sum over k of mixing[m, k] * values[k], for every edge m, edge-major:
    (B, H, W, n * C) from K values (B, H, W, C) and mixing weights (n, K).

    One 1x1 conv of the values' concat (K * C channels) whose kernel is
    mixing[m, k] times the identity from block k to block m: its input
    gradient is every value's gradient and its kernel's gradient (summed along
    those diagonals) the weights', in a handful of ops. The broadcast product
    and sum per op it replaces, and their gradients, wrote an (n * C)-channel
    tensor per op and per gradient: measured on a 2-core CPU at (64, 32, 32),
    C = 16, 4 edges, three ops, forward and backward 18.7 ms -> 6.5-8.0 ms
    (BUILD.md, "The ops every edge shares"; where it is used:
    `shared_ops_by_conv`)."""
    channels = values[0].shape[-1]
    n, k = mixing.shape
    eye = shared_constant(np.eye(channels), mixing.dtype)
    # kernel[k, i, m, o] = mixing[m, k] * (i == o)
    kernel = tf.transpose(mixing)[:, None, :, None] * eye[None, :, None, :]
    kernel = tf.reshape(kernel, [1, 1, k * channels, n * channels])
    return tf.nn.conv2d(tf.concat(values, -1), kernel, 1, "VALID")


class FactorizedReduce(StatefulLayer):
    """ReLU, two 1x1 stride-2 convs (the second shifted by one pixel), concat, BN.

    `copies` > 1 computes that many independent reduces of the same input at
    once (the skip_connect of every stride-2 edge leaving one state); the
    output's channels are then edge-major: copy m owns channels
    [m * c_out, (m + 1) * c_out).
    """

    def __init__(self, c_out, copies=1, affine=False, **kwargs):
        super().__init__(**kwargs)
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {c_out}")
        self.c_out, self.copies, self.affine = int(c_out), int(copies), bool(affine)

    def build(self, input_shape):
        c_in = int(input_shape[-1])
        half = self.c_out // 2
        init = torch_default_init(c_in)
        self.conv_1 = self.add_weight(shape=(1, 1, c_in, self.copies * half), initializer=init, name="conv_1")
        self.conv_2 = self.add_weight(shape=(1, 1, c_in, self.copies * half), initializer=init, name="conv_2")
        self.bn = self.add_bn("bn", (self.copies * self.c_out,), affine=self.affine)

    def call(self, x, training=False, relu_applied=False, scale=None, even=None):
        """`scale`: per output channel, applied inside the BN (see StatefulLayer.batch_norm).
        `even`: x[:, ::2, ::2, :] (after the ReLU) where the caller has it already."""
        if not relu_applied:
            x = tf.nn.relu(x)
        a = tf.nn.conv2d(x[:, ::2, ::2, :] if even is None else even, self.conv_1, 1, "VALID")
        b = tf.nn.conv2d(x[:, 1::2, 1::2, :], self.conv_2, 1, "VALID")
        if self.copies > 1:  # interleave the halves per copy: [a_0, b_0, a_1, b_1, ...]
            hw = tf.shape(a)[:3]
            split = tf.concat([hw, [self.copies, self.c_out // 2]], 0)
            out = tf.reshape(tf.concat([tf.reshape(a, split), tf.reshape(b, split)], axis=-1),
                             tf.concat([hw, [self.copies * self.c_out]], 0))
        else:
            out = tf.concat([a, b], axis=-1)
        return self.batch_norm(out, self.bn, training, scale)

    def get_config(self):
        return {**super().get_config(), "c_out": self.c_out, "copies": self.copies, "affine": self.affine}


class ReLUConvBN(StatefulLayer):
    """ReLU, 1x1 conv, BN without affine (the cell's input preprocessing)."""

    def __init__(self, c_out, **kwargs):
        super().__init__(**kwargs)
        self.c_out = int(c_out)

    def build(self, input_shape):
        c_in = int(input_shape[-1])
        self.kernel = self.add_weight(shape=(1, 1, c_in, self.c_out),
                                      initializer=torch_default_init(c_in), name="kernel")
        self.bn = self.add_bn("bn", (self.c_out,))

    def call(self, x, training=False):
        return self.batch_norm(tf.nn.conv2d(tf.nn.relu(x), self.kernel, 1, "VALID"), self.bn, training)

    def get_config(self):
        return {**super().get_config(), "c_out": self.c_out}


class MixedEdges(StatefulLayer):
    """All mixed edges leaving one state: sum over ops of softmax(alpha) * op(x).

    Call with the state x (B, H, W, C) and the (n_edges, 8) mixing weights of
    those edges; returns a list of n_edges tensors, one per edge, in order.

    Layout: the per-edge conv ops work on (B, H, W, n_edges * C) tensors,
    edge-major (edge m owns channels [m*C, (m+1)*C)): the ReLU'd input is
    tiled once, every depthwise conv covers all edges in one op, and batch
    norm is one fused op over all edges. Pointwise convs are one 1x1 conv per
    edge (measured ~4x faster on CPU than a batched einsum, which transposes).
    """

    def __init__(self, channels, n_edges, stride, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.n_edges, self.stride = int(channels), int(n_edges), int(stride)

    def build(self, input_shape):
        c, n = self.channels, self.n_edges
        if int(input_shape[-1]) != c:
            raise ValueError(f"MixedEdges expects {c} channels, got {input_shape[-1]}")
        self.kernels = {}
        for name, (k, _, separable) in CONV_OPS.items():
            w = {
                "dw1": self.add_weight(shape=(k, k, n * c, 1), initializer=torch_default_init(k * k), name=f"{name}_dw1"),
                "pw1": self.add_weight(shape=(n, 1, 1, c, c), initializer=torch_default_init(c), name=f"{name}_pw1"),
                "bn1": self.add_bn(f"{name}_bn1", (n * c,)),
            }
            if separable:
                w["dw2"] = self.add_weight(shape=(k, k, n * c, 1), initializer=torch_default_init(k * k), name=f"{name}_dw2")
                w["pw2"] = self.add_weight(shape=(n, 1, 1, c, c), initializer=torch_default_init(c), name=f"{name}_pw2")
                w["bn2"] = self.add_bn(f"{name}_bn2", (n * c,))
            self.kernels[name] = w
        self.max_pool_bn = self.add_bn("max_pool_bn", (c,))
        self.avg_pool_bn = self.add_bn("avg_pool_bn", (c,))
        if self.stride == 2:
            self.reduce = FactorizedReduce(c, copies=n, name="skip_reduce")
            self.reduce.build(input_shape)

    def _pointwise(self, y, kernel):
        """Edge m's 1x1 conv on its channel block, for every edge: one grouped
        conv where the device has grouped-conv gradients (oneDNN on CPUs,
        cuDNN on GPUs), else one conv per block between a split and a concat."""
        n, c = self.n_edges, self.channels
        if n == 1:
            return tf.nn.conv2d(y, kernel[0], 1, "VALID")
        if grouped_pointwise(y.device, y.dtype):
            # (n, 1, 1, c, c) -> (1, 1, c, n*c): output block m is edge m's kernel.
            filters = tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [1, 1, c, n * c])
            return tf.nn.conv2d(y, filters, 1, "VALID")
        kernels = tf.unstack(tf.convert_to_tensor(kernel), num=n)
        parts = tf.split(y, n, axis=-1)
        return tf.concat([tf.nn.conv2d(p, k, 1, "VALID") for p, k in zip(parts, kernels)], -1)

    def _conv_op(self, tiled, name, training, mixing, dilated=None):
        """The op on every edge, its output times `mixing` (its weight per channel).
        `dilated`: {dilation: (input, back)} for the dilated ops that run on a
        shared input (see `_dilated_inputs`); the others run on `tiled`."""
        k, dilation, separable = CONV_OPS[name]
        w = self.kernels[name]
        if dilated and dilation in dilated and not separable:
            # The BN runs after `back`: in the phase layout oneDNN's fused BN
            # gradient sums in another order, and a tiny search's step-0 FI moved
            # from 4e-5 to 4e-4 of the official code's.
            shared_input, back = dilated[dilation]
            return self.conv_batch_norm(depthwise(shared_input, w["dw1"]), lambda d, k: back(self._pointwise(d, k)),
                                        w["pw1"], w["bn1"], training, mixing)
        d = depthwise(tiled, w["dw1"], self.stride, dilation)
        if not separable:
            return self.conv_batch_norm(d, self._pointwise, w["pw1"], w["bn1"], training, mixing)
        y = self.batch_norm_relu_depthwise(self._pointwise(d, w["pw1"]), w["bn1"], w["dw2"], training)
        return self.conv_batch_norm(y, self._pointwise, w["pw2"], w["bn2"], training, mixing)

    def _dilated_inputs(self, shape, tiled, even):
        """{dilation: (input, back)}: the input the ops of that dilation share,
        rearranged so that an undilated stride-1 'SAME' depthwise conv on it is
        theirs, and `back`, which brings their 1x1 conv's output to the usual
        layout.

        TensorFlow's dilated conv pads and rearranges its input once per op, and
        keeps that copy for the filter gradient; here the dilated ops of one
        state share one unpadded copy, and run their 1x1 conv in it too. At
        stride 1 that is the 2x2 phases of the tiled input (heights and widths
        divisible by the dilation); at stride 2 (dilation 2) the even pixels
        (see `depthwise`), sliced from one edge's channels and tiled after, so
        the slicing's gradient fills one input-size tensor of one edge's
        channels, shared with the skip's reduce, instead of one of all edges'
        channels per dilated op."""
        if not SHARED_DILATED_INPUT:
            return {}
        if self.stride == 2:
            return {2: (self._tile(even), lambda y: y)} if 2 in SHAREABLE_DILATIONS else {}
        if shape[1] is None or shape[2] is None:
            return {}
        return {d: (to_phases(tiled, d), lambda y, d=d: from_phases(y, d))
                for d in SHAREABLE_DILATIONS if shape[1] % d == 0 and shape[2] % d == 0}

    def _tile(self, x):
        """x (B, H, W, C) repeated for every edge: (B, H, W, n_edges * C), edge-major."""
        return tf.tile(x, [1, 1, 1, self.n_edges]) if self.n_edges > 1 else x

    def call(self, x, weights, training=False):
        # Graph size matters here (it sets the first step's tracing time), so
        # slicing is done with one unstack rather than per-op indexing.
        n, c = self.n_edges, self.channels
        w = tf.cast(weights, x.dtype)  # (n, 8)
        per_op = tf.unstack(w, num=NUM_OPS, axis=1)  # (n,) each
        # (n * c,) each, edge-major, in float32: the per-edge ops' BNs apply them (batch_norm's `scale`)
        per_channel = tf.unstack(tf.reshape(tf.broadcast_to(weights[:, None, :], [n, c, NUM_OPS]), [n * c, NUM_OPS]),
                                 num=NUM_OPS, axis=1)
        relu_x = tf.nn.relu(x)
        tiled = self._tile(relu_x)
        even = relu_x[:, ::2, ::2, :] if self.stride == 2 else None  # the skip's and the dilated ops' input
        dilated = self._dilated_inputs(x.shape, tiled, even)
        per_edge = [self._conv_op(tiled, name, training, per_channel[OP[name]], dilated) for name in CONV_OPS]
        if self.stride == 2:
            per_edge.append(self.reduce(relu_x, training=training, relu_applied=True,
                                        scale=per_channel[OP["skip_connect"]], even=even))
        # Ops that are the same for every edge (no per-edge weights): computed once.
        shared = {
            "max_pool_3x3": self.batch_norm(subsample(tf.nn.max_pool2d(x, 3, 1, "SAME"), self.stride),
                                            self.max_pool_bn, training),
            "avg_pool_3x3": self.batch_norm(subsample(tf.nn.avg_pool2d(x, 3, 1, "SAME"), self.stride),
                                            self.avg_pool_bn, training),
        }
        if self.stride == 1:
            shared["skip_connect"] = x
        mixing = tf.stack([per_op[OP[name]] for name in shared], axis=1)  # (n, len(shared))
        by_conv = shared_ops_by_conv(mixing)
        if by_conv:
            per_edge.append(mix_shared_ops(list(shared.values()), mixing))
        total = tf.add_n(per_edge)
        total = tf.reshape(total, [-1, total.shape[1], total.shape[2], n, c])
        if not by_conv:
            for k, value in enumerate(shared.values()):
                total = total + tf.expand_dims(value, 3) * tf.reshape(mixing[:, k], [n, 1])
        # `none` contributes zeros and is skipped.
        return tf.unstack(total, num=n, axis=3)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "n_edges": self.n_edges, "stride": self.stride}


class SearchCell(keras.layers.Layer):
    """A DARTS search cell: 2 preprocessed inputs, 4 nodes, 14 mixed edges."""

    def __init__(self, channels, reduction, reduction_prev, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.reduction, self.reduction_prev = int(channels), bool(reduction), bool(reduction_prev)
        c = self.channels
        self.preprocess0 = FactorizedReduce(c, name="preprocess0") if reduction_prev else ReLUConvBN(c, name="preprocess0")
        self.preprocess1 = ReLUConvBN(c, name="preprocess1")
        # Edges leaving state j go to nodes max(0, j-1)..3; stride 2 from the inputs of a reduction cell.
        self.edges = [
            MixedEdges(c, STEPS - max(0, j - 1), 2 if (reduction and j < 2) else 1, name=f"edges_from_{j}")
            for j in range(STEPS + 1)
        ]

    def build(self, s0_shape, s1_shape):
        self.preprocess0.build(s0_shape)
        self.preprocess1.build(s1_shape)
        for layer in self.edges:
            layer.build(s1_shape[:-1] + (self.channels,))

    def call(self, s0, s1, weights, training=False):
        states = [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]
        incoming = [[] for _ in range(STEPS)]
        for j in range(STEPS + 1):
            first = max(0, j - 1)
            rows = [edge_index(i, j) for i in range(first, STEPS)]
            outs = self.edges[j](states[j], tf.gather(weights, rows), training=training)
            for i, out in zip(range(first, STEPS), outs):
                incoming[i].append(out)
            if j >= 1:  # node j-1 has all its inputs once state j's edges are added
                states.append(tf.add_n(incoming[j - 1]))
        return tf.concat(states[-MULTIPLIER:], axis=-1)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "reduction": self.reduction,
                "reduction_prev": self.reduction_prev}


@keras.saving.register_keras_serializable("dprime_tf")
class SearchNetwork(keras.Model):
    """The DARTS CNN supernet with its architecture parameters.

    `alpha_normal` and `alpha_reduce` (14 x 8) are non-trainable variables of
    the model: they are not network weights (so they stay out of the weight
    optimizer, its weight decay and the FI sum) and are stepped separately by
    the search's alpha optimizer. `trainable_weights` are the network weights.
    """

    search_space = "cnn"

    def __init__(self, init_channels=16, layers=8, num_classes=10, image_size=32, recompute=False, **kwargs):
        super().__init__(**kwargs)
        self.recompute = bool(recompute)  # recompute each cell's activations in the backward pass
        self.init_channels, self.num_layers = int(init_channels), int(layers)
        self.num_classes, self.image_size = int(num_classes), int(image_size)
        if self.num_layers < 3:
            raise ValueError(f"a search network needs at least 3 cells (two are reduction cells), got {layers}")
        if self.image_size % 4:
            raise ValueError(f"image size must be a multiple of 4 (two reductions), got {image_size}")
        c = self.init_channels
        c_curr = STEM_MULTIPLIER * c
        self.stem_channels = c_curr
        c_pp, c_p, c_curr = c_curr, c_curr, c
        self.cells, self._cell_shapes = [], []
        reduction_prev = False
        size = self.image_size
        for i in range(self.num_layers):
            reduction = i in self.reduction_indices
            if reduction:
                c_curr *= 2
            self.cells.append(SearchCell(c_curr, reduction, reduction_prev, name=f"cell_{i}"))
            in_size0 = size * 2 if reduction_prev else size
            self._cell_shapes.append(((None, in_size0, in_size0, c_pp), (None, size, size, c_p)))
            if reduction:
                size //= 2
            reduction_prev = reduction
            c_pp, c_p = c_p, MULTIPLIER * c_curr
        self.final_channels = c_p
        n_edges = num_edges(2, STEPS)
        # One initializer each: a reused unseeded Keras initializer repeats its values.
        # Not autocast: under a mixed-precision policy softmax(alpha) stays float32
        # (each MixedEdges casts the mixing weights to its compute type).
        self.alpha_normal = self.add_weight(shape=(n_edges, NUM_OPS), trainable=False, name="alpha_normal", autocast=False,
                                            initializer=keras.initializers.RandomNormal(stddev=1e-3))
        self.alpha_reduce = self.add_weight(shape=(n_edges, NUM_OPS), trainable=False, name="alpha_reduce", autocast=False,
                                            initializer=keras.initializers.RandomNormal(stddev=1e-3))
        self.build((None, self.image_size, self.image_size, 3))

    @property
    def reduction_indices(self):
        return (self.num_layers // 3, 2 * self.num_layers // 3)

    @property
    def alphas(self):
        return [self.alpha_normal, self.alpha_reduce]

    @property
    def primitives(self):
        return CNN_PRIMITIVES

    def build(self, input_shape):
        if self.built:
            return
        self.stem_kernel = self.add_weight(shape=(3, 3, 3, self.stem_channels),
                                           initializer=torch_default_init(27), name="stem_kernel")
        self.stem_bn = add_batch_norm(self, "stem_bn", (self.stem_channels,), affine=True)
        for cell, (s0, s1) in zip(self.cells, self._cell_shapes):
            cell.build(s0, s1)
            cell.built = True
        self.classifier_kernel = self.add_weight(shape=(self.final_channels, self.num_classes),
                                                 initializer=torch_default_init(self.final_channels),
                                                 name="classifier_kernel")
        self.classifier_bias = self.add_weight(shape=(self.num_classes,),
                                               initializer=torch_default_init(self.final_channels),
                                               name="classifier_bias")
        self.built = True

    def call(self, images, training=False):
        x = tf.convert_to_tensor(images)
        if x.shape.rank != 4 or x.shape[-1] != 3:
            raise ValueError(f"SearchNetwork expects images (batch, H, W, 3), got shape {x.shape}")
        x = tf.nn.conv2d(x, self.stem_kernel, 1, "SAME")
        s0 = s1 = StatefulLayer.batch_norm(x, self.stem_bn, training)
        w_normal = tf.nn.softmax(self.alpha_normal, axis=-1)
        w_reduce = tf.nn.softmax(self.alpha_reduce, axis=-1)
        for cell in self.cells:
            weights = w_reduce if cell.reduction else w_normal
            if self.recompute and training:
                s0, s1 = s1, recompute_in_backward(lambda a, b, w, cell=cell: cell(a, b, w, training=True),
                                                   s0, s1, weights)
            else:
                s0, s1 = s1, cell(s0, s1, weights, training=training)
        pooled = tf.reduce_mean(s1, axis=[1, 2])
        return tf.matmul(pooled, self.classifier_kernel) + self.classifier_bias

    def loss_terms(self, data, training=False, stream="weight"):
        """Summed cross-entropy, right predictions and count for one (images, labels) batch."""
        x, y = data[0], tf.cast(tf.reshape(data[1], [-1]), tf.int32)
        logits = tf.cast(self(x, training=training), tf.float32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32))
        return {"loss_sum": tf.reduce_sum(ce), "correct": correct, "count": tf.shape(y)[0]}

    def mixing_weights(self):
        """softmax(alpha) per cell type, as numpy (14, 8) arrays."""
        return {"normal": tf.nn.softmax(self.alpha_normal).numpy(),
                "reduce": tf.nn.softmax(self.alpha_reduce).numpy()}

    def genotype(self):
        from dprime_tf.spaces.cnn.genotype import derive_genotype
        return derive_genotype(self.alpha_normal.numpy(), self.alpha_reduce.numpy())

    def discretize_kwargs(self):
        return dict(num_inputs=2, keep=2, none_index=OP["none"])

    def get_config(self):
        return {**super().get_config(), "init_channels": self.init_channels, "layers": self.num_layers,
                "num_classes": self.num_classes, "image_size": self.image_size, "recompute": self.recompute}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

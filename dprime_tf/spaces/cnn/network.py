"""Final (evaluation) CNNs built from a genotype: DARTS's NetworkCIFAR and
NetworkImageNet (mobile setting), as Keras models.

    model = build_cifar_network(DARTS_V2)        # C=36, 20 cells, auxiliary head
    logits = model(images)                       # inference: logits (B, classes)
    logits, aux_logits = model(images, training=True)   # training, auxiliary on
    model.drop_path_prob.assign(0.2 * epoch / epochs)   # per epoch, no retrace

Images are float32 and already normalized (the data pipeline or the export
graph normalizes). The network records the normalization statistics it was
trained with (`input_mean`, `input_std`: per-channel, of x/255; CIFAR-10's
by default) in its config, so a saved model.keras carries them to the
exporter and the evaluator; `call` does not use them. The auxiliary head
reads the output of cell 2L//3 (the second reduction cell) and runs in
training only; the trainer weighs its loss (0.4 in DARTS). Logits are float32 under a mixed-precision policy.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from dprime_tf.data.images import CIFAR10_MEAN, CIFAR10_STD
from dprime_tf.spaces.cnn.genotype import Genotype
from dprime_tf.spaces.cnn import ops
from dprime_tf.spaces.layers import torch_default_init

STEM_MULTIPLIER = 3


def _genotype(value) -> Genotype:
    return value if isinstance(value, Genotype) else Genotype.from_dict(value)


def _dense(units, fan_in, name):
    """Linear layer with PyTorch's default init; float32 so logits stay float32 under mixed precision."""
    return keras.layers.Dense(units, kernel_initializer=ops.torch_kernel_init(),
                              bias_initializer=torch_default_init(fan_in), dtype="float32", name=name)


def _statistics(value, default, name):
    """A per-channel statistic as a tuple of 3 floats (default if None)."""
    value = default if value is None else tuple(float(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {len(value)}")
    return value


def _halved(size):
    """Output size of a stride-2 op with the reference's symmetric padding."""
    return None if size is None else (size + 1) // 2


def _channels(shape, c):
    return tuple(shape[:-1]) + (c,)


@keras.saving.register_keras_serializable("dprime_tf")
class Cell(keras.layers.Layer):
    """A final-network cell: the genotype's 8 ops, two per intermediate node.

    s0 (the cell two back) is preprocessed by a factorized reduce if the
    previous cell was a reduction cell (s0 then has twice s1's resolution),
    else by ReLU-1x1 conv-BN; s1 by ReLU-1x1 conv-BN. Node i sums its two ops'
    outputs, each drop-path'ed in training unless it is an identity. In a
    reduction cell the ops reading the cell inputs have stride 2.
    """

    def __init__(self, genotype, channels, reduction, reduction_prev, **kwargs):
        super().__init__(**kwargs)
        self.genotype = _genotype(genotype)
        self.channels, self.reduction, self.reduction_prev = int(channels), bool(reduction), bool(reduction_prev)
        kind = "reduce" if self.reduction else "normal"
        gene = getattr(self.genotype, kind)
        self.indices = [index for _, index in gene]
        self.concat = list(getattr(self.genotype, kind + "_concat"))
        c = self.channels
        self.preprocess0 = (ops.FactorizedReduce(c, name="preprocess0") if self.reduction_prev
                            else ops.relu_conv_bn(c, name="preprocess0"))
        self.preprocess1 = ops.relu_conv_bn(c, name="preprocess1")
        self.ops = [ops.make_op(op, c, 2 if self.reduction and index < 2 else 1, name=f"op{k}_{op}")
                    for k, (op, index) in enumerate(gene)]
        self.drop_path = ops.DropPath(name="drop_path")

    @property
    def multiplier(self):
        return len(self.concat)

    def build(self, s0_shape, s1_shape):
        self.preprocess0.build(s0_shape)
        self.preprocess1.build(s1_shape)
        for op in self.ops:
            if not isinstance(op, keras.layers.Identity):
                op.build(_channels(s1_shape, self.channels))

    def call(self, s0, s1, drop_prob, training=None):
        states = [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]
        for node in range(len(self.ops) // 2):
            total = None
            for k in (2 * node, 2 * node + 1):
                op = self.ops[k]
                h = op(states[self.indices[k]], training=training)
                if training and not isinstance(op, keras.layers.Identity):
                    h = self.drop_path(h, drop_prob, training=training)
                total = h if total is None else total + h
            states.append(total)
        return tf.concat([states[i] for i in self.concat], axis=-1)

    def compute_output_shape(self, s0_shape, s1_shape, drop_prob_shape=None):
        b, h, w, _ = s1_shape
        if self.reduction:
            h, w = _halved(h), _halved(w)
        return (b, h, w, self.multiplier * self.channels)

    def get_config(self):
        return {**super().get_config(), "genotype": self.genotype.to_dict(), "channels": self.channels,
                "reduction": self.reduction, "reduction_prev": self.reduction_prev}


@keras.saving.register_keras_serializable("dprime_tf")
class AuxiliaryHead(keras.layers.Layer):
    """DARTS's auxiliary classifier: ReLU, 5x5 average pool (no padding) to 2x2,
    1x1 conv to 128 + BN + ReLU, 2x2 conv to 768 (+ BN) + ReLU, linear.

    CIFAR: pool stride 3 on an 8x8 map. ImageNet: pool stride 2 on a 7x7 map,
    and no BN after the 768-channel conv (DARTS's AuxiliaryHeadImageNet
    omits it, "for consistency with the experiments in the paper").
    """

    def __init__(self, num_classes, pool_stride, last_batch_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.pool_stride = int(num_classes), int(pool_stride)
        self.last_batch_norm = bool(last_batch_norm)
        self.features = [
            keras.layers.ReLU(),
            keras.layers.AveragePooling2D(5, strides=self.pool_stride, padding="valid"),
            ops.conv2d(128, 1), ops.batch_norm(), keras.layers.ReLU(),
            ops.conv2d(768, 2),
            *([ops.batch_norm()] if self.last_batch_norm else []),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
        ]
        self.classifier = _dense(self.num_classes, 768, name="classifier")

    def build(self, input_shape):
        size = input_shape[1:3]
        lo, hi = 5 + self.pool_stride, 4 + 2 * self.pool_stride  # sizes the pool takes to 2x2
        if None not in size and any(not lo <= s <= hi for s in size):
            raise ValueError(
                f"the auxiliary head (5x5 pool, stride {self.pool_stride}, then a 2x2 conv) needs a "
                f"{lo}x{lo} to {hi}x{hi} feature map, got {size[0]}x{size[1]}; use the default image "
                "size (32 for CIFAR, 224 for ImageNet) or auxiliary=False")
        shape = (input_shape[0], None, None, input_shape[-1]) if None in size else tuple(input_shape)
        for layer in self.features:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.classifier.build((shape[0], 768))

    def call(self, x, training=None):
        for layer in self.features:
            x = layer(x, training=training) if isinstance(layer, keras.layers.BatchNormalization) else layer(x)
        return self.classifier(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "pool_stride": self.pool_stride,
                "last_batch_norm": self.last_batch_norm}


class _GenotypeNetwork(keras.Model):
    """Stem, L genotype cells (reductions at L//3 and 2L//3, doubling C),
    optional auxiliary head after cell 2L//3, global average pool, linear.

    `call(images, training=False)` returns logits, or `(logits, aux_logits)`
    when training with the auxiliary head. `drop_path_prob` is a
    non-trainable scalar variable read at every training call. Subclasses
    supply the stem (`_make_stem`, `_build_stem`, `_stem`, `_stem_channels`,
    `_stem_size`) and the auxiliary head's variant. `input_mean` and
    `input_std` are the preprocessing's statistics, recorded only (config).
    """

    first_reduction_prev = False  # whether cell 0's s0 has twice its s1's resolution
    aux_pool_stride = 3
    aux_last_batch_norm = True

    def __init__(self, genotype, init_channels, layers, num_classes, auxiliary=True, drop_path_prob=0.0,
                 input_mean=None, input_std=None, **kwargs):
        super().__init__(**kwargs)
        self.genotype = _genotype(genotype)
        self.input_mean = _statistics(input_mean, CIFAR10_MEAN, "input_mean")
        self.input_std = _statistics(input_std, CIFAR10_STD, "input_std")
        if min(self.input_std) <= 0:
            raise ValueError(f"input_std must be positive, got {self.input_std}")
        self.init_channels, self.num_layers, self.num_classes = int(init_channels), int(layers), int(num_classes)
        self.auxiliary = bool(auxiliary)
        if self.num_layers < 3:
            raise ValueError(f"a network needs at least 3 cells (two are reduction cells), got {layers}")
        if not 0.0 <= float(drop_path_prob) <= 1.0:
            raise ValueError(f"drop_path_prob must be in [0, 1], got {drop_path_prob}")
        self.stem_layers = self._make_stem()
        c_p = self._stem_channels()  # channels of the previous cell's output
        c_curr = self.init_channels
        self.cells = []
        reduction_prev = self.first_reduction_prev
        for i in range(self.num_layers):
            reduction = i in self.reduction_indices
            if reduction:
                c_curr *= 2
            cell = Cell(self.genotype, c_curr, reduction, reduction_prev, name=f"cell_{i}")
            self.cells.append(cell)
            reduction_prev = reduction
            c_p = cell.multiplier * c_curr
            if i == self.aux_index:
                self.aux_channels = c_p
        self.final_channels = c_p
        self.auxiliary_head = (AuxiliaryHead(self.num_classes, self.aux_pool_stride, self.aux_last_batch_norm,
                                             name="auxiliary_head") if self.auxiliary else None)
        self.global_pooling = keras.layers.GlobalAveragePooling2D(name="global_pooling")
        self.classifier = _dense(self.num_classes, self.final_channels, name="classifier")
        self.drop_path_prob = self.add_weight(shape=(), dtype="float32", trainable=False, name="drop_path_prob",
                                              initializer=keras.initializers.Constant(float(drop_path_prob)))

    @property
    def reduction_indices(self):
        return (self.num_layers // 3, 2 * self.num_layers // 3)

    @property
    def aux_index(self):
        return 2 * self.num_layers // 3

    def build(self, input_shape):
        # Cells are built for any spatial size; the concrete sizes only
        # serve to check the auxiliary head's input.
        b = input_shape[0]
        size = [self._stem_size(s) for s in input_shape[1:3]]
        shapes = self._build_stem((b, None, None, input_shape[-1]))
        s0_shape, s1_shape = shapes
        for i, cell in enumerate(self.cells):
            cell.build(s0_shape, s1_shape)
            s0_shape, s1_shape = s1_shape, cell.compute_output_shape(s0_shape, s1_shape)
            if cell.reduction:
                size = [_halved(s) for s in size]
            if i == self.aux_index and self.auxiliary_head is not None:
                self.auxiliary_head.build((b, *size, self.aux_channels))
        self.global_pooling.build(s1_shape)
        self.classifier.build((b, self.final_channels))

    def call(self, images, training=False):
        s0, s1 = self._stem(images, training)
        drop_prob = self.drop_path_prob.value
        aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop_prob, training=training)
            if i == self.aux_index and self.auxiliary_head is not None and training:
                aux_logits = self.auxiliary_head(s1, training=training)
        logits = self.classifier(self.global_pooling(s1))
        return (logits, aux_logits) if aux_logits is not None else logits

    def get_config(self):
        return {**super().get_config(), "genotype": self.genotype.to_dict(), "init_channels": self.init_channels,
                "layers": self.num_layers, "num_classes": self.num_classes, "auxiliary": self.auxiliary,
                "drop_path_prob": float(self.drop_path_prob.numpy()),
                "input_mean": list(self.input_mean), "input_std": list(self.input_std)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable("dprime_tf")
class NetworkCIFAR(_GenotypeNetwork):
    """DARTS's NetworkCIFAR: stem 3x3 conv to 3C + BN, both cell inputs = stem."""

    def _make_stem(self):
        c = STEM_MULTIPLIER * self.init_channels
        return [ops.conv2d(c, 3, padding="same", name="stem_conv"), ops.batch_norm(name="stem_bn")]

    def _stem_channels(self):
        return STEM_MULTIPLIER * self.init_channels

    def _stem_size(self, size):
        return size

    def _build_stem(self, shape):
        conv, bn = self.stem_layers
        conv.build(shape)
        shape = conv.compute_output_shape(shape)
        bn.build(shape)
        return shape, shape

    def _stem(self, images, training):
        conv, bn = self.stem_layers
        s = bn(conv(images), training=training)
        return s, s


@keras.saving.register_keras_serializable("dprime_tf")
class NetworkImageNet(_GenotypeNetwork):
    """DARTS's NetworkImageNet (mobile setting): stem0 = conv3x3 s2 (C/2), BN,
    ReLU, conv3x3 s2 (C), BN; stem1 = ReLU, conv3x3 s2 (C), BN; cell 0 sees
    stem0 at twice stem1's resolution (reduction_prev). DARTS ends with
    AvgPool(7), which at the 224 input is this global average pool."""

    first_reduction_prev = True
    aux_pool_stride = 2
    aux_last_batch_norm = False

    def _make_stem(self):
        c = self.init_channels

        def strided_conv(channels):
            return [keras.layers.ZeroPadding2D(1), ops.conv2d(channels, 3, strides=2)]

        stem0 = keras.Sequential([*strided_conv(c // 2), ops.batch_norm(), keras.layers.ReLU(),
                                  *strided_conv(c), ops.batch_norm()], name="stem0")
        stem1 = keras.Sequential([keras.layers.ReLU(), *strided_conv(c), ops.batch_norm()], name="stem1")
        return [stem0, stem1]

    def _stem_channels(self):
        return self.init_channels

    def _stem_size(self, size):
        for _ in range(3):
            size = _halved(size)
        return size

    def _build_stem(self, shape):
        stem0, stem1 = self.stem_layers
        stem0.build(shape)
        s0_shape = stem0.compute_output_shape(shape)
        stem1.build(s0_shape)
        return s0_shape, stem1.compute_output_shape(s0_shape)

    def _stem(self, images, training):
        stem0, stem1 = self.stem_layers
        s0 = stem0(images, training=training)
        return s0, stem1(s0, training=training)


def build_cifar_network(genotype, init_channels=36, layers=20, num_classes=10, auxiliary=True,
                        drop_path_prob=0.0, image_size=32, input_mean=None, input_std=None):
    """DARTS's CIFAR evaluation network, built on (image_size, image_size, 3) inputs.
    input_mean/input_std: the normalization statistics to record (default CIFAR-10's).

    Returns a `NetworkCIFAR`: `model(images)` gives logits; with
    `training=True` and `auxiliary=True` it gives `(logits, aux_logits)`.
    """
    model = NetworkCIFAR(genotype, init_channels, layers, num_classes, auxiliary=auxiliary,
                         drop_path_prob=drop_path_prob, input_mean=input_mean, input_std=input_std)
    model.build((None, image_size, image_size, 3))
    return model


def build_imagenet_network(genotype, init_channels=48, layers=14, num_classes=1000, auxiliary=True,
                           drop_path_prob=0.0, image_size=224, input_mean=None, input_std=None):
    """DARTS's ImageNet mobile-setting network (stride-8 stem), built on
    (image_size, image_size, 3) inputs; same call contract as the CIFAR one.
    The auxiliary head needs the 224 (up to 256) input."""
    model = NetworkImageNet(genotype, init_channels, layers, num_classes, auxiliary=auxiliary,
                            drop_path_prob=drop_path_prob, input_mean=input_mean, input_std=input_std)
    model.build((None, image_size, image_size, 3))
    return model


def count_parameters(model, include_auxiliary=False):
    """Trainable weights (BN moving statistics are not); the auxiliary head's
    only if `include_auxiliary`, as DARTS reports model sizes."""
    weights = model.trainable_weights
    head = getattr(model, "auxiliary_head", None)
    if head is not None and not include_auxiliary:
        excluded = {id(w) for w in head.trainable_weights}
        weights = [w for w in weights if id(w) not in excluded]
    return int(sum(math.prod(w.shape) for w in weights))

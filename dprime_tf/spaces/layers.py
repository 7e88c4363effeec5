"""Building blocks shared by the search supernets: batch norm with the
reference's semantics (and synchronized across replicas), and weight
initializers matching PyTorch's defaults."""

from __future__ import annotations

import math
import threading

import numpy as np

import keras
import tensorflow as tf
# The tape's record/stop API (what tf.custom_gradient itself uses): see precise_batch_norm.
from tensorflow.python.eager import record as _record

from dprime_tf.graph_constants import shared_constant
from dprime_tf.spaces.depthwise import depthwise_conv2d, filter_gradient
from dprime_tf.spaces.devices import runs_on_gpu

BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention: running = (1 - m) * running + m * batch


def torch_default_init(fan_in: int):
    """PyTorch's default conv/linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return keras.initializers.RandomUniform(-bound, bound)


def _collective_launcher(ctx):
    """This replica's collective-op launcher of the strategy, or None.

    MirroredStrategy and MultiWorkerMirroredStrategy keep one
    CollectiveReplicaLauncher per local device (TensorFlow's own path for
    all-reduces without merge_call, used under XLA on GPUs): it hands out the
    instance keys in call order and the ordering token NCCL needs. Private
    API: any other strategy, or another TensorFlow, gets None and the public
    path."""
    extended = ctx.strategy.extended
    for name in ("_collective_ops", "_cross_device_ops"):
        launchers = getattr(getattr(extended, name, None), "_launchers", None)
        if launchers:
            replica = getattr(ctx, "_replica_id", None)
            if isinstance(replica, int) and 0 <= replica < len(launchers) and hasattr(launchers[replica], "all_reduce"):
                return launchers[replica], getattr(extended, "_communication_options", None)
    return None


def replica_sum(tensors):
    """[sum over the replicas of t for t in tensors], in a replica context.

    The same result as `ReplicaContext.all_reduce(SUM, tensors)`, built as one
    collective op on one flat vector (static sizes) called from the replica's
    own thread. The public call goes through merge_call (a hand-off between
    the replicas' tracing threads) and a generic packer: ~30 graph nodes per
    call and per replica, and the supernets' synchronized batch norm makes
    three calls per BN. Its gradient, as the public call's, is the all-sum of
    the gradients, for the tape and for symbolic differentiation (tf.gradients,
    the gradient of a tf.cond branch), although the synchronized BN records its
    own gradient."""
    ctx = tf.distribute.get_replica_context()
    found = None if tf.executing_eagerly() else _collective_launcher(ctx)
    shapes = [t.shape for t in tensors]
    if found is None or not all(shape.is_fully_defined() for shape in shapes):
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors))
    launcher, options = found

    @tf.custom_gradient
    def all_sum(*xs):  # its reshapes, concat and split take shared constants (see shared_constant)
        flat = [x if x.shape.rank == 1 else tf.reshape(x, shared_constant([-1], tf.int32)) for x in xs]
        axis = shared_constant(0, tf.int32)
        total = launcher.all_reduce(flat[0] if len(flat) == 1 else tf.raw_ops.ConcatV2(values=flat, axis=axis),
                                    options=options)
        parts = [total] if len(xs) == 1 else tf.raw_ops.SplitV(
            value=total, size_splits=shared_constant([shape.num_elements() for shape in shapes], tf.int64),
            axis=axis, num_split=len(xs))
        return [p if shape.rank == 1 else tf.reshape(p, shared_constant(shape.as_list(), tf.int32))
                for p, shape in zip(parts, shapes)], lambda *dys: replica_sum(dys)

    return all_sum(*tensors)


def batch_moments(x, axes):
    """Mean, biased variance and element count per channel over `axes`.

    Under tf.distribute with several replicas the statistics are those of the
    global batch (an all-reduce of sum, sum of squares and count), so a
    distributed step computes exactly what one device computes on the same
    global batch. With a static shape every replica has the same count (the
    input pipeline's shapes are the same on every replica), so only the sums
    are all-reduced.
    """
    ctx = tf.distribute.get_replica_context()
    replicas = 1 if ctx is None else ctx.num_replicas_in_sync
    static = x.shape.is_fully_defined()
    if static:
        local_count = float(np.prod([x.shape[a] for a in axes]))
    else:
        local_count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
    if replicas == 1:
        mean, var = tf.nn.moments(x, axes)
        return mean, var, shared_constant(local_count, x.dtype) if static else local_count
    # Two passes (mean, then squared deviations) over the global batch: the
    # one-pass E[x^2] - E[x]^2 loses float32 precision when |mean| >> std.
    axes_tensor = shared_constant(axes, tf.int32)
    if static:
        count = shared_constant(local_count * replicas, x.dtype)
        s, = replica_sum([tf.reduce_sum(x, axes_tensor)])
    else:
        s, count = replica_sum([tf.reduce_sum(x, axes_tensor), local_count])
    mean = s / count
    ss, = replica_sum([tf.reduce_sum(tf.square(x - mean), axes_tensor)])
    return mean, ss / count, count


# Training-mode batch norm of the supernets: level-by-level statistics
# (`precise_batch_norm`) instead of TensorFlow's fused kernel. See BUILD.md.
PRECISE_BATCH_NORM = True


def set_precise_batch_norm(enabled: bool):
    """Chooses the supernets' training-mode BN: level-by-level statistics (True,
    the default) or TensorFlow's fused kernel (False). Takes effect when a step
    is traced."""
    global PRECISE_BATCH_NORM
    PRECISE_BATCH_NORM = bool(enabled)


def channel_sum(x):
    """Per-channel sum of x (..., C) over all leading axes, one axis at a time
    from the innermost (for NHWC: W, then H, then the batch).

    A float32 sum over B*H*W values in one pass (tf.reduce_sum over several
    axes, the fused BN kernels) accumulates rounding error along the whole
    pass; summing level by level keeps each accumulator to one axis' length.
    """
    for axis in range(len(x.shape) - 2, -1, -1):
        x = tf.reduce_sum(x, shared_constant(axis, tf.int32))
    return x


def precise_batch_norm(x, scale=None, offset=None, epsilon=BN_EPS):
    """Training-mode BN of x (..., C) over its leading axes, with the batch
    statistics summed level by level.

    Returns (y, batch mean, biased batch variance, element count). The mean
    and the variance (two-pass: of x - mean) are summed by `channel_sum`;
    TensorFlow's fused kernels do the rest, on the centered x: the forward
    (FusedBatchNormV3 in inference mode at mean 0) and the gradient
    (FusedBatchNormGradV3: the training-mode gradient at those statistics).
    The mean and the variance carry no gradient (the training-mode gradient
    already accounts for them).

    The gradient is attached without `tf.custom_gradient`, whose identity
    ops and subgraph walk cost ~30% of a BN's tracing (there are hundreds of
    BNs per step): the forward ops are not taped and one tape record maps
    (x, scale, offset) -> y to the fused gradient; differentiating the graph
    symbolically (tf.gradients, a gradient through a tf.function boundary)
    reaches the same gradient through `_FUSED_BN_GRAD_OVERRIDE`. Both give
    the same bits as a custom-gradient version (tests/test_supernet.py).
    """
    channels = x.shape[-1]
    leading = x.shape[:-1]
    if all(d is not None for d in leading):
        count = float(np.prod(leading))  # a Python number: no graph node per BN
    else:
        count = tf.cast(tf.size(x) // channels, x.dtype)
    with _record.stop_recording():
        zeros = shared_constant(np.zeros([channels]), x.dtype)
        scale = shared_constant(np.ones([channels]), x.dtype) if scale is None else scale
        offset = zeros if offset is None else offset
        n = shared_constant(count, x.dtype) if isinstance(count, float) else count
        mean = channel_sum(x) / n
        centered = x - tf.stop_gradient(mean)
        var = channel_sum(tf.square(centered)) / n
        c4 = centered if len(x.shape) == 4 else tf.reshape(centered, [-1, 1, 1, channels])
        with tf.compat.v1.get_default_graph().gradient_override_map({"FusedBatchNormV3": _FUSED_BN_GRAD_OVERRIDE}):
            y4 = tf.raw_ops.FusedBatchNormV3(x=c4, scale=scale, offset=offset, mean=zeros, variance=var,
                                             epsilon=epsilon, exponential_avg_factor=1.0, data_format="NHWC",
                                             is_training=False)[0]
        y = y4 if c4 is centered else tf.reshape(y4, tf.shape(x))

    def grad(dy):
        dy4 = dy if c4 is centered else tf.reshape(dy, tf.shape(c4))
        dx, dscale, doffset = _training_bn_grad(dy4, c4, scale, var, epsilon, c4.device)
        return [dx if c4 is centered else tf.reshape(dx, tf.shape(x)), dscale, doffset]

    _record.record_operation("PreciseBatchNorm", [y], [x, scale, offset], grad)
    return y, mean, var, count


def reserved_variance(var, epsilon, device: str = ""):
    """What FusedBatchNormGradV3 in training mode reads as `reserve_space_2`
    on `device`: the batch variance on CPUs, but cuDNN's saved inverse
    standard deviation, 1 / sqrt(var + epsilon), on GPUs (the op's
    documentation: "inverted variance in the cuDNN case"; it is what the
    training-mode forward op reserves there, which tests/test_supernet.py
    checks on the device it runs on)."""
    return tf.math.rsqrt(var + epsilon) if runs_on_gpu(device) else var


def _training_bn_grad(dy, centered, scale, var, epsilon, device="", mean=None):
    """Training-mode BN gradient (dx, dscale, doffset) of a batch whose mean is 0
    (or `mean`), for ops on `device` (see `reserved_variance`)."""
    if mean is None:
        mean = shared_constant(np.zeros(var.shape), var.dtype)
    return tf.raw_ops.FusedBatchNormGradV3(
        y_backprop=dy, x=centered, scale=scale, reserve_space_1=mean,
        reserve_space_2=reserved_variance(var, epsilon, device),
        reserve_space_3=shared_constant(np.zeros([0]), var.dtype), epsilon=epsilon, data_format="NHWC", is_training=True)[:3]


_FUSED_BN_GRAD_OVERRIDE = "DprimePreciseBatchNorm"


def _precise_batch_norm_graph_grad(op, dy, *_unused):
    """`precise_batch_norm`'s gradient for symbolic differentiation: its
    inference-mode FusedBatchNormV3 (inputs: centered x, scale, offset, zero
    mean, batch variance) differentiated as training-mode BN."""
    dx, dscale, doffset = _training_bn_grad(dy, op.inputs[0], op.inputs[1], op.inputs[4], op.get_attr("epsilon"),
                                            op.device)
    return dx, dscale, doffset, None, None


def _register_graph_grad():
    """Registers the override once per process: a reload of this module (IPython's
    autoreload) runs this again, and TensorFlow refuses a second registration."""
    try:
        tf.RegisterGradient(_FUSED_BN_GRAD_OVERRIDE)(_precise_batch_norm_graph_grad)
    except KeyError:
        pass


_register_graph_grad()


def tape_wants_gradient(*tensors) -> bool:
    """Whether a gradient tape records backprop through any of `tensors` (the
    tape's own check): composite ops pick a cheaper form where no tape wants a
    gradient (conv_batch_norm's kernel, the supernet's mixing weights)."""
    return _record.should_record_backprop(list(tensors))


# Per thread: MirroredStrategy traces each replica's step in its own thread.
_REPLAY = threading.local()


def once_gradient_arrives(gradient, tensors):
    """`tensors` as identities that wait for `gradient`: the inputs of work
    replayed in a backward pass, which then runs there (not next to the
    forward, nor merged with it by Grappler's common-subexpression pass)."""
    with tf.control_dependencies([gradient]):
        return [tf.identity(t) for t in tensors]


def recompute_in_backward(fn, *inputs):
    """fn(*inputs) whose activations are not kept for the backward pass: the
    gradient runs fn again on the same inputs, once the incoming gradient
    exists, and differentiates that (gradient checkpointing). The results are
    the same as differentiating fn directly (the forward is deterministic:
    training-mode batch norm uses the batch's statistics); the replay does not
    update batch-norm running statistics, so they move once per step.

    At the paper's search size (batch 64, C=16, 8 cells, 32x32; one call per
    cell) this took the search steps' peak RSS from 7.1 GB to 3.1 GB and the
    weight step from 2.80-2.94 s to 3.40-3.82 s on a 2-core CPU: BUILD.md
    "Memory: --recompute".
    """
    @tf.custom_gradient
    def run(*args):
        out = fn(*args)

        def grad(dy, variables=None):
            replay_inputs = once_gradient_arrives(dy, args)
            _REPLAY.active = True
            try:
                with tf.GradientTape() as tape:
                    tape.watch(replay_inputs)
                    replayed = fn(*replay_inputs)
            finally:
                _REPLAY.active = False
            variables = list(variables or [])
            grads = tape.gradient(replayed, replay_inputs + variables, output_gradients=dy)
            return grads[:len(args)], grads[len(args):]
        return out, grad
    return run(*inputs)


def add_batch_norm(layer, name, shape, affine=False):
    """Creates BN state on `layer`: running mean/var (and gamma/beta if affine)."""
    stats = {key: _add_running_stat(layer, f"{name}_moving_{key}", shape, init)
             for key, init in (("mean", "zeros"), ("var", "ones"))}
    if affine:  # float32 under a mixed-precision policy too: batch norm runs in float32
        stats["gamma"] = layer.add_weight(shape=shape, initializer="ones", name=f"{name}_gamma", autocast=False)
        stats["beta"] = layer.add_weight(shape=shape, initializer="zeros", name=f"{name}_beta", autocast=False)
    return stats


def _add_running_stat(layer, name, shape, initializer):
    """A running statistic, synchronized on read: under tf.distribute every
    replica updates its own copy (no cross-replica call per BN layer). The
    copies agree, because the batch statistics are global (all-reduced over
    the replicas in training), so reading one (saving a checkpoint) reads the
    first replica's: averaging them (aggregation "mean") would cost one
    collective per statistic at every checkpoint, eager and one by one, which
    under a multi-worker strategy held both workers about 5 s per checkpoint
    of a tiny search on 127.0.0.1."""
    with layer._open_name_scope():
        var = keras.Variable(initializer=keras.initializers.get(initializer), shape=shape, dtype="float32",
                             trainable=False, name=name, aggregation="only_first_replica", synchronization="on_read",
                             autocast=False)
    layer._track_variable(var)
    return var


class StatefulLayer(keras.layers.Layer):
    """A layer that owns batch-norm running statistics, created in build()."""

    def add_bn(self, name, shape, affine=False):
        return add_batch_norm(self, name, shape, affine)

    @staticmethod
    def batch_norm(x, stats, training, scale=None):
        """BN over all axes but the trailing channel axes of `stats`, with PyTorch's
        semantics: normalize with the biased batch variance, track the unbiased one
        with momentum 0.1.

        `scale` (one value per channel, with its gradient; BN without affine
        only) multiplies the output inside the BN kernel: a supernet's mixing
        weight of the op this BN ends. The fused kernels' gradient already
        sums dy * x_hat per channel, so the weight's gradient costs nothing,
        and the separate product (one op over the output forward) and its
        gradient (three: dy * w, and dy * y summed per channel) are gone.

        In training the batch statistics are accumulated level by level (see
        `precise_batch_norm`); TensorFlow's fused kernel sums them in one float32
        pass and costs the weight step a tenfold loss of accuracy. With several
        replicas the statistics are all-reduced over the global batch; in
        inference the fused kernel applies the running statistics.
        """
        if scale is not None and "gamma" in stats:
            raise ValueError("batch_norm: an output scale is for BN without affine parameters")
        with tf.name_scope("batch_norm"):  # named for profiles (dprime-bench --profile)
            scale = StatefulLayer._output_scale(scale, stats)
            if x.dtype != tf.float32:  # mixed precision: statistics and normalization in float32
                return tf.cast(StatefulLayer._batch_norm(tf.cast(x, tf.float32), stats, training, scale), x.dtype)
            return StatefulLayer._batch_norm(x, stats, training, scale)

    @staticmethod
    def _output_scale(scale, stats):
        """batch_norm's `scale` as BN runs it: float32 and the statistics' shape, as gamma."""
        if scale is None:
            return None
        scale = tf.cast(scale, tf.float32)
        return scale if scale.shape == stats["mean"].shape else tf.reshape(scale, stats["mean"].shape)

    @staticmethod
    def batch_norm_relu_depthwise(x, stats, kernel, training):
        """depthwise_conv2d(relu(batch_norm(x, stats, training)), kernel), stride
        1, 'SAME': the middle of a separable conv op.

        Composed of the three ops, the backward pass keeps the BN's centered
        input (its gradient) and the ReLU's output (the ReLU's gradient and the
        conv's filter gradient): two tensors of x's size. In training on one
        replica in float32 (`precise_batch_norm`'s path) the three ops are one
        tape record that keeps only the BN's output y = x_hat: the gradient
        computes the ReLU again from it (one elementwise op), and hands the
        fused BN gradient kernel y itself as the centered input, with unit
        variance and the true 1 / sqrt(var + eps) as its scale, which is the
        same gradient. At the paper's search size that is one tensor less per
        separable op (two per group of edges; BUILD.md). Elsewhere (several
        replicas, 16-bit types, TensorFlow's fused statistics, inference), the
        three ops.
        """
        strides = [1, 1, 1, 1]
        if not StatefulLayer._one_record(x, stats, training):
            y = StatefulLayer.batch_norm(x, stats, training)
            return depthwise_conv2d(tf.nn.relu(y), kernel)
        k = tf.convert_to_tensor(kernel)  # read on the tape: the kernel's gradient reaches the variable
        with _record.stop_recording():
            y, mean, var, count = precise_batch_norm(x)
            StatefulLayer._update_running_stats(stats, mean, var, count)
            z = tf.nn.depthwise_conv2d(tf.nn.relu(y), k, strides, "SAME")
            inv = tf.math.rsqrt(var + BN_EPS)
            # reserved_variance(1 - eps) is 1 on every device: the kernel's x_hat is y itself
            unit = shared_constant(np.full(var.shape, 1.0 - BN_EPS), var.dtype)

        def grad(dz):
            # Not before the gradient arrives: Grappler would otherwise merge it
            # with the forward's ReLU (common subexpressions), which then stays alive.
            with tf.control_dependencies([dz]):
                relu_y = tf.nn.relu(y)
            dk = filter_gradient(relu_y, k.shape, dz, strides, "SAME")
            dr = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
                input_sizes=tf.shape(relu_y), filter=k, out_backprop=dz, strides=strides, padding="SAME")
            dy = tf.raw_ops.ReluGrad(gradients=dr, features=y)
            dx = _training_bn_grad(dy, y, inv, unit, BN_EPS, y.device)[0]
            return [dx, dk]

        _record.record_operation("BatchNormReluDepthwise", [z], [x, k], grad)
        return z

    @staticmethod
    def conv_batch_norm(d, conv, kernel, stats, training, scale=None):
        """batch_norm(conv(d, kernel), stats, training, scale): a linear map
        (a supernet op's 1x1 conv) followed by BN without affine parameters.

        Composed, the backward pass keeps conv's input d (its kernel's
        gradient) and the BN's centered input (the BN's gradient): two tensors.
        In training on one replica in float32 (`precise_batch_norm`'s path)
        the two are one tape record that keeps only d and the batch
        statistics: the gradient runs conv(d) again, once the incoming
        gradient exists, hands it to the fused BN gradient with the kept
        batch statistics, and differentiates conv on the way back. That is
        one more forward of conv per step (a 1x1 conv: measured +5-7% on the
        paper-size weight step) for one tensor less per op (-1.0 GB there);
        results are the same (conv is deterministic). Elsewhere, the two ops;
        also when no tape wants the kernel's gradient (the search's alpha
        step): the backward then does not read d, and the record would keep d
        instead of the BN's input, the same size, and run the conv again for
        nothing.
        """
        k = tf.convert_to_tensor(kernel)  # read on the tape: the kernel's gradient reaches the variable
        if not (StatefulLayer._one_record(d, stats, training) and tape_wants_gradient(k)):
            return StatefulLayer.batch_norm(conv(d, k), stats, training, scale)
        s = StatefulLayer._output_scale(scale, stats)
        with _record.stop_recording():
            x = conv(d, k)
            with tf.name_scope("batch_norm"):  # named for profiles (dprime-bench --profile)
                y, mean, var, count = precise_batch_norm(x, s)
                StatefulLayer._update_running_stats(stats, mean, var, count)
        ones = shared_constant(np.ones(var.shape), var.dtype)

        def grad(dy):
            # Not before the gradient arrives: Grappler would otherwise merge the
            # replay with the forward's conv, whose output then stays alive.
            replay_input, = once_gradient_arrives(dy, [d])
            with tf.GradientTape() as tape:
                tape.watch([replay_input, k])
                replayed = conv(replay_input, k)
            # The kernel centers x with the mean it is given (the same float32 subtraction).
            dx, dscale, _ = _training_bn_grad(dy, replayed, ones if s is None else s, var, BN_EPS, replayed.device,
                                              mean)
            dd, dk = tape.gradient(replayed, [replay_input, k], output_gradients=dx)
            return [dd, dk] if s is None else [dd, dk, dscale]

        _record.record_operation("ConvBatchNorm", [y], [d, k] if s is None else [d, k, s], grad)
        return y

    @staticmethod
    def _one_record(x, stats, training) -> bool:
        """Whether a composite op (`batch_norm_relu_depthwise`, `conv_batch_norm`)
        runs as one tape record: in training on one replica, in float32, with
        `precise_batch_norm` over the channels of a 4-D x, without affine
        parameters."""
        ctx = tf.distribute.get_replica_context()
        replicas = 1 if ctx is None else ctx.num_replicas_in_sync
        return bool(training and PRECISE_BATCH_NORM and replicas == 1 and x.dtype == tf.float32
                    and len(x.shape) == 4 and len(stats["mean"].shape) == 1 and "gamma" not in stats)

    @staticmethod
    def _batch_norm(x, stats, training, out_scale=None):
        mean_var, var_var = stats["mean"].value, stats["var"].value
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1 and training:
            return StatefulLayer._synced_batch_norm(x, stats, out_scale)
        channels = int(np.prod(mean_var.shape))
        flat = len(mean_var.shape) == 1
        if out_scale is not None and not flat:
            out_scale = tf.reshape(out_scale, [channels])
        if training and PRECISE_BATCH_NORM:
            return StatefulLayer._precise_batch_norm(x, stats, channels, out_scale)
        x4 = x if (len(x.shape) == 4 and flat) else tf.reshape(x, [-1, 1, 1, channels])
        if "gamma" in stats:
            scale = stats["gamma"].value if flat else tf.reshape(stats["gamma"].value, [channels])
        else:
            scale = tf.ones([channels], x.dtype) if out_scale is None else out_scale
        offset = (stats["beta"].value if flat else tf.reshape(stats["beta"].value, [channels])) \
            if "beta" in stats else tf.zeros([channels], x.dtype)
        y, new_mean, new_var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x4, scale=scale, offset=offset,
            mean=mean_var if flat else tf.reshape(mean_var, [channels]),
            variance=var_var if flat else tf.reshape(var_var, [channels]),
            epsilon=BN_EPS, exponential_avg_factor=BN_MOMENTUM if training else 1.0,
            data_format="NHWC", is_training=bool(training))
        if training:
            mean_var.assign(new_mean if flat else tf.reshape(new_mean, mean_var.shape))
            var_var.assign(new_var if flat else tf.reshape(new_var, var_var.shape))
        return y if x4 is x else tf.reshape(y, tf.shape(x))

    @staticmethod
    def _precise_batch_norm(x, stats, channels, out_scale=None):
        channel_rank = len(stats["mean"].shape)
        rank = len(x.shape)
        xc = x if channel_rank == 1 else tf.reshape(
            x, tf.concat([tf.shape(x)[:rank - channel_rank], [channels]], 0))
        affine = "gamma" in stats
        y, mean, var, count = precise_batch_norm(
            xc, tf.reshape(stats["gamma"].value, [channels]) if affine else out_scale,
            tf.reshape(stats["beta"].value, [channels]) if affine else None)
        StatefulLayer._update_running_stats(stats, mean, var, count)
        return y if xc is x else tf.reshape(y, tf.shape(x))

    @staticmethod
    def _update_running_stats(stats, mean, var, count):
        """running -= 0.1 * (running - batch), with the unbiased batch variance;
        as few graph nodes as possible (there are hundreds of BNs per step).
        Not while `recompute_in_backward` replays a forward pass."""
        if getattr(_REPLAY, "active", False):
            return
        known = count if isinstance(count, float) else tf.get_static_value(count)  # a constant's value
        if known is not None:
            known = float(known)
            unbiased = var * shared_constant(known / max(known - 1.0, 1.0), var.dtype)
        else:
            unbiased = var * count / tf.maximum(count - 1.0, 1.0)
        for key, batch in (("mean", mean), ("var", unbiased)):
            v = stats[key].value
            batch = tf.cast(batch, v.dtype)
            if batch.shape != v.shape:
                batch = tf.reshape(batch, v.shape)
            # The variable's ops on its handle (this replica's copy under tf.distribute):
            # the graph nodes of `v.assign_sub(BN_MOMENTUM * (v - batch))`, without the
            # Python layers around them (nor a tape record of a read with no gradient).
            handle = v.handle
            current = tf.raw_ops.ReadVariableOp(resource=handle, dtype=v.dtype)
            momentum = shared_constant(BN_MOMENTUM, v.dtype)
            tf.raw_ops.AssignSubVariableOp(resource=handle, value=momentum * (current - batch))

    @staticmethod
    def _synced_batch_norm(x, stats, out_scale=None):
        """Training-mode BN over the global batch of several replicas.

        Forward: two all-reduces (sum and count, then squared deviations from
        the global mean; see `batch_moments`). Backward: one all-reduce of the
        per-channel sums of dy and dy * x_hat, the usual synchronized-BN
        gradient dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat)) with
        global means; automatic differentiation through the forward's two
        all-reduces would take two more, each a replica synchronization.
        gamma and beta (or `out_scale`, see `batch_norm`) get this replica's
        share of their gradient, like every other weight (the step all-reduces
        the weight gradients).
        """
        channel_rank = len(stats["mean"].shape)
        axes = list(range(len(x.shape) - channel_rank))
        # read on the tape (gamma and beta get their gradient through these reads)
        params = [tf.convert_to_tensor(stats[k].value) for k in ("gamma", "beta")] if "gamma" in stats else []
        if out_scale is not None:
            params = [out_scale]

        with _record.stop_recording():  # the tape gets one record: (x, *params) -> y, see precise_batch_norm
            mean, var, count = batch_moments(x, axes)
            inv = tf.math.rsqrt(var + BN_EPS)
            scale = inv * params[0] if params else inv
            centered = x - mean
            y = centered * scale
            if len(params) == 2:
                y = y + params[1]

        def grad(dy):  # mean, var and count carry no gradient
            x_hat = centered * inv
            axes_tensor = shared_constant(axes, tf.int32)
            local = [tf.reduce_sum(dy, axes_tensor), tf.reduce_sum(dy * x_hat, axes_tensor)]
            sum_dy, sum_dy_x_hat = replica_sum(local)
            dx = scale * (dy - sum_dy / count - x_hat * (sum_dy_x_hat / count))
            return [dx, local[1], local[0]][:1 + len(params)]

        _record.record_operation("SyncedBatchNorm", [y], [x, *params], grad)
        StatefulLayer._update_running_stats(stats, mean, var, count)
        return y

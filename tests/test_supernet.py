"""The CNN supernet: size, structure, and parity with the reference implementation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from reference_weights import load_reference, nhwc, reference_targets
from dprime_tf.spaces.cnn.supernet import MixedEdges, SearchNetwork, depthwise
from dprime_tf.searcher import BilevelSearch


@pytest.fixture(scope="module")
def paper_net():
    return SearchNetwork(16, 8, 10)


def test_weight_and_alpha_counts(paper_net):
    # The reference implementation's counts (C=16, 8 cells, 10 classes).
    assert sum(int(np.prod(w.shape)) for w in paper_net.trainable_weights) == 1_930_618
    assert sum(int(np.prod(a.shape)) for a in paper_net.alphas) == 224
    assert all(a.shape == (14, 8) for a in paper_net.alphas)
    # Alphas are not network weights: out of the optimizer, the L2 and the FI sum.
    alpha_ids = {id(a) for a in paper_net.alphas}
    assert not any(id(w) in alpha_ids for w in paper_net.trainable_weights)


def test_alphas_start_small_and_distinct(paper_net):
    a, b = paper_net.alpha_normal.numpy(), paper_net.alpha_reduce.numpy()
    assert 1e-4 < a.std() < 1e-2 and not np.allclose(a, b)


def test_alphas_change_the_output():
    net = SearchNetwork(4, 3, 10, image_size=16)
    x = tf.random.normal((2, 16, 16, 3), seed=1)
    before = net(x, training=False).numpy()
    net.alpha_normal.assign(net.alpha_normal + tf.one_hot([4] * 14, 8) * 5.0)
    assert np.abs(net(x, training=False).numpy() - before).max() > 1e-3


def test_config_round_trip():
    net = SearchNetwork(4, 3, 7, image_size=16)
    clone = SearchNetwork.from_config(net.get_config())
    assert clone.num_classes == 7 and clone.num_layers == 3 and clone.image_size == 16
    layer = MixedEdges(8, 3, 2)
    assert MixedEdges.from_config(layer.get_config()).get_config() == layer.get_config()


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="multiple of 4"):
        SearchNetwork(4, 3, 10, image_size=30)
    with pytest.raises(ValueError, match="at least 3 cells"):
        SearchNetwork(4, 2, 10)


def test_strided_dilated_depthwise_equals_naive():
    # The subsample trick vs a dilated conv with symmetric padding, then stride 2.
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(1, 8, 8, 2)), tf.float32)
    for k in (3, 5):
        kern = tf.constant(rng.normal(size=(k, k, 2, 3)), tf.float32)
        p = (k // 2) * 2
        naive = tf.nn.depthwise_conv2d(tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]]), kern, [1, 1, 1, 1],
                                       "VALID", dilations=[2, 2])[:, ::2, ::2]
        np.testing.assert_allclose(depthwise(x, kern, 2, 2).numpy(), naive.numpy(), atol=1e-5)


def _edges_output_and_gradients(grouped, monkeypatch, setting="GROUPED_POINTWISE", size=8):
    """MixedEdges (3 edges, stride 1 and 2) forward and gradients, with supernet.<setting> = grouped
    (by default: pointwise convs grouped or split)."""
    from dprime_tf.spaces.cnn import supernet
    monkeypatch.setattr(supernet, setting, grouped)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, size, size, 6)), tf.float32)
    weights = tf.nn.softmax(tf.constant(rng.normal(size=(3, 8)), tf.float32))
    results = []
    for stride in (1, 2):
        keras_seed = 3 + stride
        tf.keras.utils.set_random_seed(keras_seed)
        layer = MixedEdges(6, 3, stride)
        layer.build(x.shape)
        with tf.GradientTape() as tape:
            tape.watch(weights)
            outs = layer(x, weights, training=True)
            loss = tf.add_n([tf.reduce_sum(o * tf.sin(o)) for o in outs])
        grads = tape.gradient(loss, layer.trainable_weights + [weights])
        results.append([o.numpy() for o in outs] + [g.numpy() for g in grads])
    return results


def _ops_of_type(layer, size, op_type="SpaceToBatchND"):
    f = tf.function(lambda x, w: layer(x, w, training=True), autograph=False)
    graph = f.get_concrete_function(tf.TensorSpec((2, size, size, 6)), tf.TensorSpec((3, 8))).graph
    return sum(op.type == op_type for op in graph.get_operations())


def test_dilated_ops_on_a_shared_input_equal_tensorflows_dilated_conv(monkeypatch):
    """The dilated convs of a stride-1 MixedEdges run on the input split into its 2x2
    pixel phases (one shared SpaceToBatchND, no padding), those of a stride-2 one on its
    even pixels sliced once: the same outputs and gradients as TensorFlow's dilated
    depthwise conv, which pads and rearranges the input per op, and as slicing per op."""
    from dprime_tf.spaces.cnn import supernet
    for size in (8, 6):
        phases = _edges_output_and_gradients(True, monkeypatch, "SHARED_DILATED_INPUT", size)
        dilated = _edges_output_and_gradients(False, monkeypatch, "SHARED_DILATED_INPUT", size)
        for per_stride_p, per_stride_d in zip(phases, dilated):
            assert len(per_stride_p) == len(per_stride_d)
            for a, b in zip(per_stride_p, per_stride_d):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(b).max()))
    layer = MixedEdges(6, 3, 1)
    layer.build((2, 8, 8, 6))
    reduce = MixedEdges(6, 3, 2)
    reduce.build((2, 8, 8, 6))
    monkeypatch.setattr(supernet, "SHARED_DILATED_INPUT", False)
    assert _ops_of_type(layer, 8) == 2  # TensorFlow's: one per dilated op
    slices = _ops_of_type(reduce, 8, "StridedSlice")
    monkeypatch.setattr(supernet, "SHARED_DILATED_INPUT", True)
    assert _ops_of_type(layer, 8) == 1  # shared by both dilated ops
    assert _ops_of_type(reduce, 8, "StridedSlice") == slices - 2  # x[:, ::2, ::2] once, not per dilated op and skip
    # Odd sizes have no 2x2 phases of one size: TensorFlow's dilated conv.
    assert _ops_of_type(layer, 7) == 2
    grid = np.arange(2 * 6 * 4 * 3, dtype=np.float32).reshape(2, 6, 4, 3)
    np.testing.assert_array_equal(supernet.from_phases(supernet.to_phases(grid, 2), 2), grid)


def test_grouped_and_split_pointwise_convs_agree(monkeypatch):
    """The grouped 1x1 conv (oneDNN / cuDNN) computes what the split-conv-concat path does."""
    from dprime_tf.spaces.cnn.supernet import onednn_enabled
    if not onednn_enabled() and not tf.config.list_logical_devices("GPU"):
        pytest.skip("grouped conv gradients need oneDNN (TF_ENABLE_ONEDNN_OPTS=0 here) or a GPU")
    grouped = _edges_output_and_gradients(True, monkeypatch)
    split = _edges_output_and_gradients(False, monkeypatch)
    for per_stride_g, per_stride_s in zip(grouped, split):
        assert len(per_stride_g) == len(per_stride_s)
        for a, b in zip(per_stride_g, per_stride_s):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(b).max()))


def test_mix_shared_ops_is_the_weighted_sum_per_edge():
    """mix_shared_ops' conv: edge m's channel block is sum_k mixing[m, k] * values[k], by hand in
    float64; its gradients (values and mixing weights) those of that sum."""
    from dprime_tf.spaces.cnn.supernet import mix_shared_ops
    rng = np.random.default_rng(4)
    values = [rng.normal(size=(2, 3, 4, 5)) for _ in range(3)]
    mixing = rng.random((4, 3))
    dy = rng.normal(size=(2, 3, 4, 4 * 5))
    expected = np.concatenate([sum(mixing[m, k] * values[k] for k in range(3)) for m in range(4)], -1)
    v = [tf.constant(a, tf.float32) for a in values]
    w = tf.constant(mixing, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(v + [w])
        out = mix_shared_ops(v, w)
    grads = tape.gradient(out, v + [w], output_gradients=tf.constant(dy, tf.float32))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    blocks = dy.reshape(2, 3, 4, 4, 5)
    for k in range(3):
        np.testing.assert_allclose(grads[k].numpy(), np.einsum("bhwmc,m->bhwc", blocks, mixing[:, k]), atol=1e-5)
    np.testing.assert_allclose(grads[3].numpy(), np.einsum("bhwmc,kbhwc->mk", blocks, np.stack(values)),
                               rtol=1e-5, atol=1e-5)


def test_shared_ops_mixed_by_conv_equal_the_broadcast_sum(monkeypatch):
    """MixedEdges with its shared ops (pools, identity) mixed in by one conv: the same outputs and
    gradients, mixing weights included, as with a broadcast product and sum per op."""
    conv = _edges_output_and_gradients(True, monkeypatch, "SHARED_OPS_BY_CONV")
    broadcast = _edges_output_and_gradients(False, monkeypatch, "SHARED_OPS_BY_CONV")
    for per_stride_c, per_stride_b in zip(conv, broadcast):
        assert len(per_stride_c) == len(per_stride_b)
        for a, b in zip(per_stride_c, per_stride_b):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(b).max()))


def test_shared_ops_are_mixed_by_conv_where_a_tape_wants_the_mixing_weights(monkeypatch):
    """By default the conv mixes the shared ops only where their mixing weights get a gradient
    (the alpha step), in float32; the weight step keeps the broadcast product."""
    from dprime_tf.spaces.cnn import supernet
    calls = []
    real = supernet.mix_shared_ops
    monkeypatch.setattr(supernet, "mix_shared_ops", lambda *a: calls.append(1) or real(*a))
    layer = MixedEdges(4, 2, 1)
    layer.build((2, 4, 4, 4))
    x = tf.random.normal((2, 4, 4, 4))
    weights = tf.nn.softmax(tf.random.normal((2, 8)))
    with tf.GradientTape() as tape:
        tape.watch(weights)
        layer(x, weights, training=True)
    assert calls == [1]
    with tf.GradientTape() as tape:
        tape.watch(x)
        layer(x, weights, training=True)
    layer(x, weights, training=True)
    assert calls == [1]
    with tf.GradientTape() as tape:
        weights16 = tf.cast(weights, tf.bfloat16)
        tape.watch(weights16)
        assert not supernet.shared_ops_by_conv(weights16)


@pytest.mark.golden
def test_forward_and_weight_step_match_reference(paper_net):
    """Golden step of the official PyTorch code: logits, FI and every weight's update."""
    data = load_reference(paper_net)
    # lr 0.025 for this step (the golden's); a constant schedule, as the lr is per epoch
    search = BilevelSearch(paper_net, steps_per_epoch=10, epochs=50, regularizer="none", learning_rate_min=0.025)
    x, y = nhwc(data["x"]), data["y"].astype(np.int32)
    logits = paper_net(x, training=True).numpy()
    np.testing.assert_allclose(logits, data["logits"], atol=1e-5)
    load_reference(paper_net)  # the forward above moved BN statistics only; reload anyway
    before = [(v, idx, val) for v, idx, val in reference_targets(paper_net, "p:")]
    out = search._replica_weight_step((x, y))  # eager: the step's own code path
    assert abs(float(out["loss"]) - float(data["loss"])) < 1e-5
    assert abs(float(out["fi"]) / float(data["FI"]) - 1) < 1e-4
    rel = []
    for (var, idx, p), (_, _, q) in zip(before, reference_targets(paper_net, "q:")):
        now = var.numpy() if idx is None else var.numpy()[idx]
        ref_update, our_update = q - p, now - p
        rel.append(np.abs(our_update - ref_update).max() / np.abs(ref_update).max())
    rel = np.array(rel)
    # float32 rounding on both sides: each float32 step is ~1e-4 of its update size from the
    # float64 truth (tests/test_golden_float64.py), so the two differ by a few 1e-4 per tensor.
    # Batch norm's statistics are summed level by level for that (BUILD.md: with TensorFlow's
    # fused kernel this median was 1.6e-3).
    assert np.median(rel) < 1e-3, np.median(rel)
    assert np.mean(rel < 0.01) > 0.99 and rel.max() < 0.05, (np.mean(rel < 0.01), rel.max())


def test_grouped_pointwise_is_used_only_where_its_gradient_runs():
    from dprime_tf.spaces.cnn.supernet import grouped_pointwise, onednn_enabled
    assert grouped_pointwise("/job:localhost/replica:0/task:0/device:GPU:1", tf.float16)
    # CPU kernels: oneDNN has float32 and bfloat16 grouped-conv gradients, TensorFlow's own have none
    assert not grouped_pointwise("/device:CPU:0", tf.float16)
    assert grouped_pointwise("/device:CPU:0", tf.float32) == onednn_enabled()
    assert grouped_pointwise("/device:CPU:0", tf.bfloat16) == onednn_enabled()


def test_recompute_gives_the_same_step_and_updates_running_statistics_once():
    """--recompute (each cell's activations recomputed in the backward pass): the same loss,
    weight and alpha gradients as the plain supernet, and batch-norm running statistics that
    moved once (a replay that updated them again would move them 0.19 of the way, not 0.1)."""
    plain = SearchNetwork(4, 3, 10, image_size=16)
    replayed = SearchNetwork.from_config({**plain.get_config(), "recompute": True})
    assert replayed.recompute and not plain.recompute
    replayed.set_weights(plain.get_weights())
    x = tf.random.stateless_normal((4, 16, 16, 3), seed=(1, 2))
    y = tf.constant([0, 3, 7, 9])

    @tf.function(autograph=False)
    def step(net):
        variables = net.trainable_weights + net.alphas
        with tf.GradientTape() as tape:
            tape.watch([v.value for v in net.alphas])
            logits = net(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        return loss, tape.gradient(loss, variables)

    before = [v.numpy() for v in plain.non_trainable_weights if "moving" in v.path]
    (loss_a, grads_a), (loss_b, grads_b) = step(plain), step(replayed)
    np.testing.assert_allclose(loss_a.numpy(), loss_b.numpy(), rtol=1e-6)
    assert len(grads_a) == len(plain.trainable_weights) + 2 and all(g is not None for g in grads_b)
    for ga, gb in zip(grads_a, grads_b):
        np.testing.assert_allclose(ga.numpy(), gb.numpy(), rtol=1e-4, atol=1e-6)
    stats = [(p.path, p.numpy(), r.numpy()) for p, r in zip(plain.non_trainable_weights, replayed.non_trainable_weights)
             if "moving" in p.path]
    assert len(stats) == len(before) > 50
    moved = [not np.allclose(p, b) for (_, p, _), b in zip(stats, before)]
    assert sum(moved) > len(stats) // 2
    for path, p, r in stats:
        np.testing.assert_allclose(r, p, rtol=1e-5, atol=1e-7, err_msg=path)


def _custom_gradient_batch_norm(x, scale, offset, epsilon=1e-5):
    """The training-mode BN of `layers.precise_batch_norm` written with tf.custom_gradient
    (its previous form): the reference for its tape record and its gradient override."""
    from dprime_tf.spaces.layers import channel_sum, reserved_variance
    channels = x.shape[-1]
    count = float(np.prod(x.shape[:-1]))
    zeros = tf.zeros([channels], x.dtype)

    @tf.custom_gradient
    def normalize(x, scale, offset):
        mean = channel_sum(x) / count
        centered = x - mean
        var = channel_sum(tf.square(centered)) / count
        c4 = centered if len(x.shape) == 4 else tf.reshape(centered, [-1, 1, 1, channels])
        y = tf.raw_ops.FusedBatchNormV3(x=c4, scale=scale, offset=offset, mean=zeros, variance=var, epsilon=epsilon,
                                        exponential_avg_factor=1.0, data_format="NHWC", is_training=False)[0]

        def grad(dy):
            dy4 = tf.reshape(dy, tf.shape(c4))
            dx, ds, do = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=dy4, x=c4, scale=scale, reserve_space_1=zeros,
                reserve_space_2=reserved_variance(var, epsilon, c4.device),
                reserve_space_3=tf.zeros([0], x.dtype), epsilon=epsilon, data_format="NHWC", is_training=True)[:3]
            return tf.reshape(dx, tf.shape(x)), ds, do
        return tf.reshape(y, tf.shape(x)), grad
    return normalize(x, scale, offset)


@pytest.mark.parametrize("shape", [(4, 6, 6, 8), (12, 8)])
def test_precise_batch_norm_gradient_is_the_custom_gradient_one(shape):
    """precise_batch_norm attaches its fused training-mode gradient without tf.custom_gradient (cheaper to
    trace): a gradient tape and symbolic differentiation (tf.gradients) both get the same bits as the
    custom-gradient form, for x, scale and offset, through two stacked BNs."""
    from dprime_tf.spaces.layers import precise_batch_norm
    rng = np.random.default_rng(3)
    x = tf.constant(np.abs(rng.standard_normal(shape)) * 0.5 + 2.0, tf.float32)
    w = tf.constant(rng.standard_normal(shape), tf.float32)
    scale = tf.constant(rng.uniform(0.5, 1.5, shape[-1]), tf.float32)
    offset = tf.constant(rng.normal(0, 0.1, shape[-1]), tf.float32)

    def forward(bn):
        y = bn(tf.nn.relu(bn(x, scale, offset)), scale, offset)
        return tf.reduce_sum(y * w)

    ours = lambda *a: precise_batch_norm(*a)[0]  # noqa: E731

    def taped(bn):
        with tf.GradientTape() as tape:
            tape.watch([x, scale, offset])
            loss = forward(bn)
        return [loss, *tape.gradient(loss, [x, scale, offset])]

    def symbolic(bn):
        loss = forward(bn)
        return [loss, *tf.gradients(loss, [x, scale, offset])]

    reference = tf.function(lambda: taped(_custom_gradient_batch_norm), autograph=False)()
    for run in (lambda: taped(ours), lambda: symbolic(ours)):
        fn = tf.function(run, autograph=False)
        graph = fn.get_concrete_function().graph
        assert not [op for op in graph.get_operations() if op.type == "IdentityN"]  # no custom_gradient left
        for got, want in zip(fn(), reference):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
    for got, want in zip(taped(ours), taped(_custom_gradient_batch_norm)):  # eager: the tape record alone
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_reserved_variance_is_what_the_training_forward_reserves_here():
    """precise_batch_norm hands FusedBatchNormGradV3 its own reserve_space_2: the batch variance
    on CPUs, cuDNN's inverse standard deviation on GPUs. It must be what TensorFlow's own
    training-mode forward reserves on the device the test runs on."""
    from dprime_tf.spaces.layers import reserved_variance
    x = tf.constant(np.random.default_rng(0).normal(3.0, 2.0, size=(8, 4, 4, 6)), tf.float32)
    forward = tf.raw_ops.FusedBatchNormV3(x=x, scale=tf.ones([6]), offset=tf.zeros([6]), mean=tf.zeros([0]),
                                          variance=tf.zeros([0]), epsilon=1e-3, is_training=True)
    reserved = forward[4]
    ours = reserved_variance(tf.nn.moments(x, [0, 1, 2])[1], 1e-3, reserved.device)
    np.testing.assert_allclose(ours.numpy(), reserved.numpy(), rtol=1e-5)


def test_precise_batch_norm_gradient_is_the_formulas():
    """The fused training-mode gradient precise_batch_norm attaches equals automatic
    differentiation of the BN formula written out, on whatever device runs the test."""
    from dprime_tf.spaces.layers import precise_batch_norm
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(1.5, 0.7, size=(6, 5, 5, 4)), tf.float32)
    w = tf.constant(rng.standard_normal((6, 5, 5, 4)), tf.float32)
    scale = tf.constant(rng.uniform(0.5, 1.5, 4), tf.float32)

    def formula(x, scale, offset):
        mean, var = tf.nn.moments(x, [0, 1, 2])
        return (x - mean) * tf.math.rsqrt(var + 1e-5) * scale + offset

    results = []
    for bn in (lambda *a: precise_batch_norm(*a)[0], formula):
        with tf.GradientTape() as tape:
            tape.watch([x, scale])
            loss = tf.reduce_sum(bn(x, scale, tf.zeros([4])) * w)
        results.append(tape.gradient(loss, [x, scale]))
    for got, want in zip(*results):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def _kept_for_backward(fn, *specs):
    """Bytes of the forward tensors that the backward ops of fn's traced graph read: what a step keeps
    from its forward pass to its backward pass (ops created after the tape's first gradient op)."""
    graph = tf.function(fn, autograph=False).get_concrete_function(*specs).graph
    ops = graph.get_operations()
    start = next(i for i, op in enumerate(ops) if op.name.startswith("gradient_tape/"))
    backward = {op.name for op in ops[start:]}
    return sum(t.shape.num_elements() * t.dtype.size for op in ops[:start] for t in op.outputs
               if t.dtype != tf.resource and t.shape.is_fully_defined()
               and any(c.name in backward for c in t.consumers()))


def _assert_one_record_is_the_composition(stats, taped, symbolic, names, atol):
    """taped(one_record) -> [loss, gradients...]; symbolic() the same by tf.gradients. From fresh
    running statistics each time, the one-record path (eager and traced tape, and traced symbolic)
    gives the composed ops' results and running statistics."""
    def stats_after(run):
        for v, init in zip((stats["mean"], stats["var"]), (0.0, 1.0)):
            v.assign(tf.fill(v.shape, init))
        out = [t.numpy() for t in run()]
        return out, [stats[k].numpy() for k in ("mean", "var")]

    want, want_stats = stats_after(lambda: taped(False))
    for run in (lambda: taped(True), tf.function(lambda: taped(True), autograph=False),
                tf.function(symbolic, autograph=False)):
        got, got_stats = stats_after(run)
        for name, a, b in zip(names + ("running mean", "running var"), got + got_stats, want + want_stats):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=atol, err_msg=name)
    return want


def test_batch_norm_relu_depthwise_is_the_three_ops_and_keeps_one_tensor_less():
    """StatefulLayer.batch_norm_relu_depthwise (the middle of a separable conv op) gives the output,
    gradients and running statistics of batch_norm -> relu -> depthwise conv, by tape (eager and
    traced) and by symbolic differentiation, and its backward pass reads one tensor of the input's
    size less from the forward pass."""
    import keras

    from dprime_tf.spaces import layers

    class Block(layers.StatefulLayer):
        def build(self, shape):
            self.stats = self.add_bn("bn", (shape[-1],))
            self.kernel = self.add_weight(shape=(3, 3, shape[-1], 1), initializer="glorot_uniform", name="k")

        def call(self, x, fused_block=True):
            if fused_block:
                return self.batch_norm_relu_depthwise(x, self.stats, self.kernel, True)
            return tf.nn.depthwise_conv2d(tf.nn.relu(self.batch_norm(x, self.stats, True)), self.kernel,
                                          [1, 1, 1, 1], "SAME")

    rng = np.random.default_rng(4)
    shape = (4, 6, 6, 5)
    x = tf.constant(rng.normal(0.5, 2.0, size=shape), tf.float32)
    w = tf.constant(rng.standard_normal(shape), tf.float32)
    keras.utils.set_random_seed(2)
    block = Block()
    block.build(shape)

    def taped(fused_block):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(block(x, fused_block=fused_block) * w)
        return [loss, *tape.gradient(loss, [x, block.kernel])]

    def symbolic():
        loss = tf.reduce_sum(block(x, fused_block=True) * w)
        return [loss, *tf.gradients(loss, [x, block.kernel.value])]

    _assert_one_record_is_the_composition(block.stats, taped, symbolic, ("loss", "dx", "dkernel"), atol=2e-6)
    spec = tf.TensorSpec(shape, tf.float32)

    def kept(fused_block):
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(block(x, fused_block=fused_block) * w)
            return tape.gradient(loss, [x, block.kernel])
        return _kept_for_backward(step, spec)
    assert kept(False) - kept(True) >= 4 * np.prod(shape)  # one float32 tensor of x's size

    # The backward's ReLU waits for the gradient: without that, Grappler merges it with the
    # forward's (same op, same input) and the forward's output stays alive after all (measured:
    # no memory saved at the paper's size).

    def grads(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(block(x, fused_block=True) * w)
        return tape.gradient(loss, x)
    relus = [op for op in tf.function(grads, autograph=False).get_concrete_function(spec).graph.get_operations()
             if op.type == "Relu"]
    assert len(relus) == 2 and sum(bool(op.control_inputs) for op in relus) == 1


def test_conv_batch_norm_is_the_two_ops_and_keeps_one_tensor_less():
    """StatefulLayer.conv_batch_norm (a supernet op's 1x1 conv and its BN with the mixing weight)
    gives the output, gradients (input, kernel, mixing weight) and running statistics of
    conv -> batch_norm, by tape (eager and traced) and by symbolic differentiation, with inputs
    whose mean is far from 0; its backward pass reads one tensor of the conv output's size less
    from the forward pass, and runs the conv again only once the gradient has arrived, and not at
    all when only the input's gradient is wanted."""
    from dprime_tf.spaces import layers
    from dprime_tf.spaces.cnn.supernet import from_phases

    channels = 6

    class Block(layers.StatefulLayer):
        def build(self, shape):
            self.stats = self.add_bn("bn", (channels,))
            self.kernel = self.add_weight(shape=(1, 1, shape[-1], channels), initializer="glorot_uniform", name="k")

        @staticmethod
        def conv(d, k):  # a 1x1 conv, then a layout change (the dilated ops' phases)
            return from_phases(tf.nn.conv2d(d, k, 1, "VALID"), 2)

        def call(self, d, scale, one_record=True):
            if one_record:
                return self.conv_batch_norm(d, self.conv, self.kernel, self.stats, True, scale)
            return self.batch_norm(self.conv(d, self.kernel), self.stats, True, scale)

    rng = np.random.default_rng(6)
    shape = (8, 3, 4, 5)
    d = tf.constant(rng.normal(3.0, 0.5, size=shape), tf.float32)
    scale = tf.constant(rng.uniform(0.05, 0.3, channels), tf.float32)
    w = tf.constant(rng.standard_normal((2, 6, 8, channels)), tf.float32)
    block = Block()
    block.build(shape)

    def taped(one_record):
        with tf.GradientTape() as tape:
            tape.watch([d, scale])
            loss = tf.reduce_sum(block(d, scale, one_record=one_record) * w)
        return [loss, *tape.gradient(loss, [d, block.kernel, scale])]

    def symbolic():
        loss = tf.reduce_sum(block(d, scale) * w)
        return [loss, *tf.gradients(loss, [d, block.kernel.value, scale])]

    want = _assert_one_record_is_the_composition(block.stats, taped, symbolic, ("loss", "dd", "dkernel", "dscale"),
                                                 atol=2e-5)

    spec = tf.TensorSpec(shape, tf.float32)

    def step(one_record):
        def fn(d):
            with tf.GradientTape() as tape:
                tape.watch(d)
                loss = tf.reduce_sum(block(d, scale, one_record=one_record) * w)
            return tape.gradient(loss, [d, block.kernel])
        return fn
    assert _kept_for_backward(step(False), spec) - _kept_for_backward(step(True), spec) >= 4 * w.shape.num_elements()
    ops = tf.function(step(True), autograph=False).get_concrete_function(spec).graph.get_operations()
    convs = [op for op in ops if op.type == "Conv2D"]
    assert len(convs) == 2  # the forward's and the replay, which waits for the gradient:
    assert [bool(op.inputs[0].op.control_inputs) for op in convs] == [False, True]

    def input_gradient_only(d):  # the search's alpha step: no tape wants the kernel's gradient
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(d)
            loss = tf.reduce_sum(block(d, scale) * w)
        return tape.gradient(loss, d)
    graph = tf.function(input_gradient_only, autograph=False).get_concrete_function(spec).graph
    assert [op.type for op in graph.get_operations()].count("Conv2D") == 1
    np.testing.assert_allclose(input_gradient_only(d).numpy(), want[1], rtol=2e-5, atol=2e-5)


def test_batch_norm_output_scale_is_the_mixing_product():
    """batch_norm(x, ..., scale=w) (a supernet op's last BN applying its mixing weight) equals
    batch_norm(x) * w, with the same gradients for x and w (w's being sum(dy * x_hat) per channel),
    in training (level-by-level statistics, and TensorFlow's fused kernel) and in inference; and
    it moves the running statistics as the unscaled BN does. An affine BN refuses a scale."""
    import keras

    from dprime_tf.spaces import layers

    class Norm(layers.StatefulLayer):
        def __init__(self, affine=False):
            super().__init__()
            self.affine = affine

        def build(self, shape):
            self.stats = self.add_bn("bn", (shape[-1],), affine=self.affine)

    rng = np.random.default_rng(5)
    x = tf.constant(rng.standard_normal((6, 5, 5, 4)) * 2.0 + 1.0, tf.float32)
    dy = tf.constant(rng.standard_normal((6, 5, 5, 4)), tf.float32)
    w = tf.constant(rng.uniform(0.05, 0.3, 4), tf.float32)

    def run(norm, training, scaled):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = norm.batch_norm(x, norm.stats, training, w) if scaled else norm.batch_norm(x, norm.stats, training) * w
            loss = tf.reduce_sum(y * dy)
        return [y, *tape.gradient(loss, [x, w]), norm.stats["mean"].value, norm.stats["var"].value]

    try:
        for precise, training in ((True, True), (False, True), (True, False)):
            layers.set_precise_batch_norm(precise)
            results = []
            for scaled in (True, False):
                norm = Norm()
                norm.build(x.shape)
                norm.stats["var"].assign(tf.constant([0.5, 1.0, 2.0, 4.0]))  # for inference
                results.append(run(norm, training, scaled))
            for name, got, want in zip(("y", "dx", "dw", "running mean", "running var"), *results):
                np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-6, atol=2e-6,
                                           err_msg=f"{name} (precise={precise}, training={training})")
    finally:
        layers.set_precise_batch_norm(True)
    affine = Norm(affine=True)
    affine.build(x.shape)
    with pytest.raises(ValueError, match="without affine"):
        affine.batch_norm(x, affine.stats, True, w)
    keras.backend.clear_session()


def test_shared_constants_are_per_graph_thread_device_and_dependency_scope():
    import threading

    from dprime_tf.graph_constants import shared_constant
    graph = tf.Graph()
    with graph.as_default():
        a = shared_constant(0.1, tf.float32)
        assert shared_constant(0.1, tf.float32) is a and float(tf.get_static_value(a)) == np.float32(0.1)
        assert shared_constant(0.2, tf.float32) is not a
        assert shared_constant(0.1, tf.float64) is not a and shared_constant([0.1], tf.float32) is not a
        with tf.device("/cpu:0"):  # a replica's device scope gets its own
            on_cpu = shared_constant(0.1, tf.float32)
            assert on_cpu is not a and on_cpu.device.endswith("CPU:0") and a.device == ""
        with tf.control_dependencies([a]):  # a constant made here waits for a: never shared
            waiting = shared_constant(0.1, tf.float32)
            assert waiting is not a and waiting.op.control_inputs == [a.op]
        assert shared_constant(0.1, tf.float32) is a and not a.op.control_inputs
        other = []
        thread = threading.Thread(target=lambda: other.append(shared_constant(0.1, tf.float32)))
        thread.start()
        thread.join()
        assert other[0] is not a  # MirroredStrategy traces each replica in its own thread
    with tf.Graph().as_default():
        assert shared_constant(0.1, tf.float32) is not a
    assert float(shared_constant(0.1, tf.float32)) == np.float32(0.1)  # eager: a plain constant
    # the constants go with their graph (a long process, a test worker or a tuner, traces many)
    import gc
    import weakref
    traced = weakref.ref(tf.function(lambda: shared_constant(0.5, tf.float32) * 2.0).get_concrete_function().graph)
    del graph, a, on_cpu, waiting, other
    gc.collect()
    assert traced() is None


def test_a_traced_batch_norm_makes_few_constants():
    """The supernets' training-mode BN (hundreds per step) shares its constants: a chain of 20 BNs with
    their running-statistic updates and gradient makes about as many Const nodes as one (it made ~15 each)."""
    from dprime_tf.spaces.layers import StatefulLayer

    class Chain(StatefulLayer):
        def build(self, shape):
            self.stats = [self.add_bn(f"bn{i}", [shape[-1]], affine=i % 2 == 0) for i in range(20)]

        def call(self, x, training=True):
            for stats in self.stats:
                x = self.batch_norm(x, stats, training)
            return x

    chain = Chain()
    chain.build((4, 3, 3, 5))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(chain(x, training=True) ** 2)
        return tape.gradient(loss, [x, *chain.trainable_weights])

    ops = step.get_concrete_function(tf.TensorSpec((4, 3, 3, 5))).graph.get_operations()
    constants = sum(op.type == "Const" for op in ops)
    assert constants <= 20 + 2 * 20, constants  # 15 per BN before they were shared; ~2 per BN now
    assert sum(op.type == "AssignSubVariableOp" for op in ops) == 2 * 20  # mean and variance, once each


def test_layers_module_can_be_imported_again():
    """A reload of the module (IPython's autoreload) registers its gradient override again: no error."""
    from dprime_tf.spaces import layers
    layers._register_graph_grad()


def test_replica_sum_is_the_all_reduce_without_merge_call():
    """layers.replica_sum (the synchronized batch norm's all-reduces) on 2 logical CPUs: the
    same sums as ReplicaContext.all_reduce and NumPy, the all-sum's gradient, the public path
    for a dynamic shape, global-batch moments; traced without merge_call (each one a hand-off
    between the replicas' tracing threads) and with one collective op per call."""
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, os.path.join(here, "replica_sum_check.py")], capture_output=True,
                          text=True, timeout=600, cwd=os.path.dirname(here))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["sum_diff"] == r["public_diff"] == r["fallback_diff"] == 0.0, r
    assert r["grad_diff"] == 0.0, r  # the gradient of an all-sum is the all-sum of the gradients
    assert r["symbolic_diff"] < 1e-7, r  # and tf.gradients through the global-batch mean works too
    assert r["mean_diff"] < 1e-6 and r["var_diff"] < 1e-6 and r["count"] == [10.0, 10.0], r
    assert r["shapes"] == [[], [], [2, 4], [2, 4]], r
    assert r["merge_calls"]["ours"] == 0 and r["merge_calls"]["public"] > 0, r
    # per replica: values, gradient, public (TensorFlow packs the three), fallback, two for the moments
    # and one for their symbolic gradient
    assert r["collectives"] == 2 * 7, r
    # batch norm's running statistics: both replicas' copies are the global batch's, read as the first
    assert r["stats_diff"] < 1e-6 and r["read_is_first_copy"], r
    before, after, path = r["non_finite"]  # an inf in the second replica's copy is found
    assert before == [] and after == [path], r

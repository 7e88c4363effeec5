"""Final CNNs from a genotype: parameter counts, shapes, drop-path, padding
semantics of every strided op against naive numpy, `.keras` round-trip."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dprime_tf.spaces.cnn.genotype import DARTS_V2, Genotype
from dprime_tf.spaces.cnn import ops
from dprime_tf.spaces.cnn.network import (NetworkCIFAR, build_cifar_network, build_imagenet_network,
                                    count_parameters)

# Every primitive at stride 1 (normal cell) and at stride 2 (reduction cell
# edges reading inputs 0/1), plus a stride-1 edge in the reduction cell and a
# concat of three nodes.
ALL_OPS = Genotype(
    normal=(("max_pool_3x3", 0), ("avg_pool_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 2),
            ("sep_conv_5x5", 1), ("dil_conv_3x3", 3), ("dil_conv_5x5", 0), ("skip_connect", 4)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("avg_pool_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("sep_conv_5x5", 0), ("dil_conv_3x3", 1), ("dil_conv_5x5", 0), ("sep_conv_3x3", 4)),
    reduce_concat=(3, 4, 5),
)


def images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def tiny():
    return build_cifar_network(ALL_OPS, init_channels=8, layers=5, drop_path_prob=0.5)


def test_test_genotype_covers_every_op_at_both_strides():
    assert {op for op, _ in ALL_OPS.normal} == set(ops.OPS)
    assert {op for op, i in ALL_OPS.reduce if i < 2} == set(ops.OPS)


# -- parameter counts -----------------------------------------------------------

def test_darts_v2_cifar_has_the_reference_parameter_count():
    model = build_cifar_network(DARTS_V2, init_channels=36, layers=20, num_classes=10, auxiliary=True)
    assert count_parameters(model) == 3_349_342
    # DARTS's AuxiliaryHeadCIFAR on cell 2L/3's 4 * 144 channels: two convs + 2 BN + linear.
    c_aux = 4 * 4 * 36
    aux = c_aux * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * 10 + 10
    assert count_parameters(model, include_auxiliary=True) == 3_349_342 + aux == 3_825_768
    # BN moving statistics are weights, but not parameters.
    assert sum(int(np.prod(w.shape)) for w in model.weights) > count_parameters(model, include_auxiliary=True)


def test_darts_v2_imagenet_mobile_parameter_count():
    model = build_imagenet_network(DARTS_V2, auxiliary=True)
    assert count_parameters(model) == 4_718_752  # DARTS's reported 4.7M
    # AuxiliaryHeadImageNet: no BN after the 768-channel conv.
    aux = 768 * 128 + 2 * 128 + 128 * 768 * 4 + 768 * 1000 + 1000
    assert count_parameters(model, include_auxiliary=True) == 4_718_752 + aux


# -- forward contract -----------------------------------------------------------

def test_cifar_shapes_with_and_without_auxiliary(tiny):
    x = images()
    logits = tiny(x)
    assert not isinstance(logits, (tuple, list)) and logits.shape == (2, 10)
    out = tiny(x, training=True)
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0].shape == (2, 10) and out[1].shape == (2, 10)

    plain = build_cifar_network(DARTS_V2, init_channels=8, layers=5, num_classes=7, auxiliary=False)
    assert plain.auxiliary_head is None
    assert plain(x).shape == (2, 7)
    assert plain(x, training=True).shape == (2, 7)
    assert count_parameters(plain) == count_parameters(plain, include_auxiliary=True)


def test_logits_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_cifar_network(DARTS_V2, init_channels=8, layers=3, drop_path_prob=0.2)
        logits, aux = model(images(), training=True)
        assert find(model.cells[0].ops[0], keras.layers.DepthwiseConv2D)[0].compute_dtype == "float16"
        assert logits.dtype == aux.dtype == tf.float32
        assert model(images()).dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_imagenet_network_builds_small_and_with_its_auxiliary_head_at_224():
    model = build_imagenet_network(ALL_OPS, init_channels=8, layers=5, num_classes=5, auxiliary=False,
                                   image_size=64)
    x = images(size=64)
    assert model(x).shape == (2, 5)
    assert model(x, training=True).shape == (2, 5)
    # The stride-8 stem plus two reductions leave 2x2 at 64: too small for the head.
    with pytest.raises(ValueError, match="auxiliary head"):
        build_imagenet_network(ALL_OPS, init_channels=8, layers=5, auxiliary=True, image_size=64)
    model = build_imagenet_network(DARTS_V2, init_channels=8, layers=4, num_classes=5, auxiliary=True)
    logits, aux = model(images(n=1, size=224), training=True)
    assert logits.shape == aux.shape == (1, 5)
    assert model(images(n=1, size=224)).shape == (1, 5)


# -- drop-path ------------------------------------------------------------------

def test_drop_path_is_identity_in_inference_and_drops_in_training(tiny):
    x = images()
    assert float(tiny.drop_path_prob.numpy()) == 0.5
    first, second = tiny(x).numpy(), tiny(x).numpy()
    np.testing.assert_array_equal(first, second)
    tiny.drop_path_prob.assign(0.0)
    try:
        np.testing.assert_array_equal(tiny(x).numpy(), first)
        # Without drop-path, training outputs (batch statistics) are deterministic ...
        a, b = tiny(x, training=True)[0].numpy(), tiny(x, training=True)[0].numpy()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        # ... with it, they are not: the trainer's assignment takes effect at the next call.
        tiny.drop_path_prob.assign(0.5)
        c, d = tiny(x, training=True)[0].numpy(), tiny(x, training=True)[0].numpy()
        assert np.abs(c - d).max() > 1e-3
    finally:
        tiny.drop_path_prob.assign(0.5)


def test_drop_path_layer_zeroes_whole_samples_and_rescales():
    layer = ops.DropPath()
    x = tf.ones((200, 2, 2, 3))
    tf.random.set_seed(1)
    y = layer(x, tf.constant(0.5), training=True).numpy()
    per_sample = y.reshape(200, -1)
    assert set(np.unique(per_sample)) == {0.0, 2.0}
    assert (per_sample.min(axis=1) == per_sample.max(axis=1)).all()  # a whole sample at once
    assert 60 < (per_sample[:, 0] == 0).sum() < 140
    np.testing.assert_array_equal(layer(x, tf.constant(0.5), training=False).numpy(), x.numpy())
    np.testing.assert_array_equal(layer(x, tf.constant(0.0), training=True).numpy(), x.numpy())


# -- padding semantics against naive numpy --------------------------------------

def naive_depthwise(x, kernel, stride, dilation, pad):
    """x (H, W, C), kernel (k, k, C): zero padding `pad` on every side."""
    k = kernel.shape[0]
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    span = dilation * (k - 1) + 1
    out_h = (xp.shape[0] - span) // stride + 1
    out_w = (xp.shape[1] - span) // stride + 1
    out = np.zeros((out_h, out_w, x.shape[2]))
    for i in range(out_h):
        for j in range(out_w):
            for a in range(k):
                for b in range(k):
                    out[i, j] += xp[i * stride + a * dilation, j * stride + b * dilation] * kernel[a, b]
    return out


def naive_pool(x, stride, mode):
    """3x3 pool with padding 1; the average counts only cells inside the image."""
    h, w, _ = x.shape
    out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1
    out = np.zeros((out_h, out_w, x.shape[2]))
    for i in range(out_h):
        for j in range(out_w):
            r0, c0 = i * stride - 1, j * stride - 1
            window = x[max(r0, 0):r0 + 3, max(c0, 0):c0 + 3].reshape(-1, x.shape[2])
            out[i, j] = window.max(0) if mode == "max" else window.mean(0)
    return out


def randomize_bn(layer, rng):
    """Non-trivial moving statistics and affine parameters; returns the inference BN function."""
    c = layer.gamma.shape[0]
    gamma, beta = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    mean, var = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    layer.set_weights([gamma, beta, mean, var])
    return lambda y: (y - mean) / np.sqrt(var + ops.BN_EPSILON) * gamma + beta


def find(layer, kind):
    return [sub for sub in layer.layers if isinstance(sub, kind)]


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_stride2_pools_use_symmetric_padding_and_exclude_pads_from_the_average(size, mode):
    x = np.random.default_rng(size).standard_normal((2, size, size, 3)).astype("float32")
    op = ops.make_op(f"{mode}_pool_3x3", 3, stride=2)
    got = op(x, training=False).numpy()
    want = np.stack([naive_pool(xi, 2, mode) for xi in x])
    assert got.shape == want.shape == (2, (size + 1) // 2, (size + 1) // 2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not find(op, keras.layers.BatchNormalization)  # no BN after pools in final networks


@pytest.mark.parametrize("op_name", ["dil_conv_3x3", "dil_conv_5x5", "sep_conv_3x3", "sep_conv_5x5"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [7, 8])
def test_conv_ops_match_a_naive_symmetric_padded_convolution(op_name, stride, size):
    """For stride-2 dilated convs this checks the subsample trick against a
    dilated conv with symmetric padding 2*(k//2) followed by stride 2."""
    rng = np.random.default_rng(stride * 10 + size)
    c = 4
    k, dilation, separable = ops.CONV_OPS[op_name]
    x = rng.standard_normal((2, size, size, c)).astype("float32")
    op = ops.make_op(op_name, c, stride=stride)
    op.build(x.shape)
    depthwise = [layer.kernel.numpy()[..., 0] for layer in find(op, keras.layers.DepthwiseConv2D)]
    pointwise = [layer.kernel.numpy()[0, 0] for layer in find(op, keras.layers.Conv2D)
                 if not isinstance(layer, keras.layers.DepthwiseConv2D)]
    bns = [randomize_bn(layer, rng) for layer in find(op, keras.layers.BatchNormalization)]
    assert len(depthwise) == len(pointwise) == len(bns) == (2 if separable else 1)
    got = op(x, training=False).numpy()

    want = []
    for xi in x:
        y = xi.astype(np.float64)
        for n, (dw, pw, bn) in enumerate(zip(depthwise, pointwise, bns)):
            s = stride if n == 0 else 1
            y = naive_depthwise(np.maximum(y, 0), dw, s, dilation, dilation * (k // 2))
            y = bn(y @ pw)
        want.append(y)
    want = np.stack(want)
    out = (size - 1) // stride + 1
    assert got.shape == want.shape == (2, out, out, c)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [4, 8])
def test_factorized_reduce_shifts_its_second_conv_by_one_pixel(size):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, size, size, 3)).astype("float32")
    op = ops.make_op("skip_connect", 6, stride=2)
    assert isinstance(op, ops.FactorizedReduce)
    op.build(x.shape)
    bn = randomize_bn(op.bn, rng)
    k1, k2 = op.conv_1.kernel.numpy()[0, 0], op.conv_2.kernel.numpy()[0, 0]
    got = op(x, training=False).numpy()
    r = np.maximum(x, 0).astype(np.float64)
    want = bn(np.concatenate([r[:, ::2, ::2] @ k1, r[:, 1::2, 1::2] @ k2], axis=-1))
    assert got.shape == (2, size // 2, size // 2, 6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert isinstance(ops.make_op("skip_connect", 6, stride=1), keras.layers.Identity)


def test_convolutions_have_no_bias_and_the_classifier_has_one(tiny):
    convs = [layer for layer in tiny._flatten_layers() if isinstance(layer, keras.layers.Conv2D)]
    assert convs and not any(layer.use_bias for layer in convs)
    assert tiny.classifier.use_bias


# -- serialization ----------------------------------------------------------------

def test_keras_file_round_trip_gives_identical_outputs(tiny, tmp_path):
    x = images(seed=3)
    tiny(x, training=True)  # move the BN statistics off their initial values
    path = str(tmp_path / "net.keras")
    tiny.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, NetworkCIFAR)
    assert loaded.genotype == ALL_OPS
    assert float(loaded.drop_path_prob.numpy()) == 0.5
    assert loaded.get_config()["genotype"] == ALL_OPS.to_dict()
    np.testing.assert_array_equal(loaded(x).numpy(), tiny(x).numpy())
    assert count_parameters(loaded, include_auxiliary=True) == count_parameters(tiny, include_auxiliary=True)


def test_batch_norm_tracks_unbiased_variance_like_pytorch():
    from dprime_tf.spaces.cnn.ops import BatchNorm, batch_norm
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=(4, 3, 3, 5)).astype(np.float32)
    bn = batch_norm()
    y = bn(x, training=True).numpy()
    flat = x.reshape(-1, 5).astype(np.float64)
    # PyTorch: running = 0.9 * running + 0.1 * batch, with the unbiased batch variance;
    # the output is normalized with the biased one.
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
    expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
    np.testing.assert_allclose(y.reshape(-1, 5), expected, atol=1e-4)
    clone = BatchNorm.from_config(bn.get_config())
    assert isinstance(clone, BatchNorm) and clone.momentum == bn.momentum and clone.epsilon == bn.epsilon

"""Golden training step of the final network against the official NetworkCIFAR.

tests/data/final_step.npz (or the file named by DPRIME_FINAL_NPZ) holds one
step of the official model.py network (C=8, 5 cells, DARTS_V2, auxiliary
head) on 8 real CIFAR-10 images: see ../shared/data/reference/README.md.
Every official parameter and BN statistic is mapped onto one Keras variable
(and every Keras variable onto one official tensor), so wiring, op order,
concat order, padding, the auxiliary head and BN statistics are all checked.
"""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from dprime_tf.spaces.cnn.genotype import Genotype
from dprime_tf.networks import build_cifar_network
from dprime_tf.spaces.cnn.trainer import FinalTrainer

pytestmark = pytest.mark.golden

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "final_step.npz")


@pytest.fixture(scope="module")
def golden():
    path = os.environ.get("DPRIME_FINAL_NPZ") or SHIPPED
    data = np.load(path)
    return {k: data[k] for k in data.files}


def _config(golden):
    return dict(item.split("=", 1) for item in golden["config"])


def _hwio(w):  # OIHW -> HWIO
    return np.transpose(w, (2, 3, 1, 0))


def _depthwise(w):  # (C, 1, k, k) -> (k, k, C, 1)
    return np.transpose(w, (2, 3, 0, 1))


def _weighted(layers):
    return [layer for layer in layers if layer.weights and not isinstance(layer, keras.layers.ReLU)]


def _map_layer(table, prefix, layer):
    """Maps the official tensors of one leaf module onto `layer`'s variables."""
    if isinstance(layer, keras.layers.BatchNormalization):
        for name, var in (("weight", layer.gamma), ("bias", layer.beta),
                          ("running_mean", layer.moving_mean), ("running_var", layer.moving_variance)):
            table[f"{prefix}.{name}"] = (var, lambda w: w)
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
        table[f"{prefix}.weight"] = (layer.kernel, _depthwise)
    elif isinstance(layer, keras.layers.Conv2D):
        table[f"{prefix}.weight"] = (layer.kernel, _hwio)
    elif isinstance(layer, keras.layers.Dense):
        table[f"{prefix}.weight"] = (layer.kernel, lambda w: w.T)
        table[f"{prefix}.bias"] = (layer.bias, lambda w: w)
    else:
        raise TypeError(f"no official counterpart for {layer.name}")


def _map_sequential(table, prefix, layers, official_names):
    """Official `prefix.<i>.*` modules, in index order, onto the weighted layers in order."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = sorted({int(m[1]) for n in official_names if (m := pattern.match(n))})
    weighted = _weighted(layers)
    assert len(indices) == len(weighted), (prefix, indices, [w.name for w in weighted])
    for i, layer in zip(indices, weighted):
        _map_layer(table, f"{prefix}.{i}", layer)


def _map_module(table, prefix, layer, official_names):
    from dprime_tf.spaces.cnn.ops import FactorizedReduce
    if isinstance(layer, FactorizedReduce):
        for name in ("conv_1", "conv_2", "bn"):
            _map_layer(table, f"{prefix}.{name}", getattr(layer, name))
    elif isinstance(layer, keras.Sequential):
        _map_sequential(table, f"{prefix}.op", layer.layers, official_names)
    else:
        assert not layer.weights, f"unmapped weights in {layer.name}"


def official_table(model, official_names):
    """Official name -> (Keras variable, layout transform), for the whole network."""
    table = {}
    conv, bn = model.stem_layers
    _map_layer(table, "stem.0", conv)
    _map_layer(table, "stem.1", bn)
    for i, cell in enumerate(model.cells):
        _map_module(table, f"cells.{i}.preprocess0", cell.preprocess0, official_names)
        _map_module(table, f"cells.{i}.preprocess1", cell.preprocess1, official_names)
        for k, op in enumerate(cell.ops):
            _map_module(table, f"cells.{i}._ops.{k}", op, official_names)
    _map_sequential(table, "auxiliary_head.features", model.auxiliary_head.features, official_names)
    _map_layer(table, "auxiliary_head.classifier", model.auxiliary_head.classifier)
    _map_layer(table, "classifier", model.classifier)
    return table


def _load(table, golden, params="p:", stats="b:"):
    for name, (var, transform) in table.items():
        value = golden.get(params + name, golden.get(stats + name))
        var.assign(transform(value))


@pytest.fixture(scope="module")
def network(golden):
    cfg = _config(golden)
    assert cfg["drop_path_prob"] == "0" and cfg["auxiliary"] == "1"
    return build_cifar_network(Genotype.from_json(str(golden["genotype"])), init_channels=int(cfg["init_channels"]),
                               layers=int(cfg["layers"]), num_classes=int(cfg["num_classes"]), auxiliary=True,
                               image_size=golden["x"].shape[-1])


@pytest.fixture(scope="module")
def table(network, golden):
    names = {k.split(":", 1)[1] for k in golden if k[:2] in ("p:", "b:")}
    table = official_table(network, names)
    # Both ways: every official tensor has one variable and every variable one official tensor.
    assert set(table) == names, (sorted(names - set(table))[:5], sorted(set(table) - names)[:5])
    ids = [id(var) for var, _ in table.values()]
    assert len(set(ids)) == len(ids)
    unmapped = [v.path for v in network.weights if id(v) not in set(ids) and v is not network.drop_path_prob]
    assert not unmapped, unmapped
    for name, (var, transform) in table.items():
        value = golden.get("p:" + name, golden.get("b:" + name))
        assert tuple(var.shape) == transform(value).shape, name
    return table


def _images(golden):
    return tf.constant(np.transpose(golden["x"], (0, 2, 3, 1))), tf.constant(golden["y"].astype(np.int32))


def test_forward_matches_official(network, table, golden):
    _load(table, golden)
    x, y = _images(golden)
    np.testing.assert_allclose(network(x, training=False).numpy(), golden["eval_logits_before"], atol=1e-5)
    logits, aux = network(x, training=True)
    np.testing.assert_allclose(logits.numpy(), golden["logits"], atol=1e-5)
    np.testing.assert_allclose(aux.numpy(), golden["logits_aux"], atol=1e-5)
    ce = tf.keras.losses.sparse_categorical_crossentropy
    loss = float(tf.reduce_mean(ce(y, logits, from_logits=True)) + 0.4 * tf.reduce_mean(ce(y, aux, from_logits=True)))
    assert abs(loss / float(golden["loss"]) - 1) < 1e-5


def test_training_step_matches_official(network, table, golden):
    _load(table, golden)
    x, y = _images(golden)
    # A constant learning rate of 0.025 (the recorded step's), through the trainer's own step.
    trainer = FinalTrainer(network, steps_per_epoch=10, epochs=1, learning_rate=0.025, learning_rate_min=0.025,
                           momentum=0.9, weight_decay=3e-4, grad_clip=5.0, auxiliary_weight=0.4)
    out = trainer.train_step((x, y))
    assert abs(float(out["loss"]) / float(golden["loss"]) - 1) < 1e-5
    rel = {}
    for name, (var, transform) in table.items():
        if "p:" + name not in golden:
            continue
        p, q = transform(golden["p:" + name]), transform(golden["q:" + name])
        ours, ref = var.numpy() - p, q - p
        rel[name] = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12)
    values = np.array(list(rel.values()))
    assert len(values) == 177
    # The supernet golden step's bounds: median tensor within 1e-3 of its update, none off by 5%.
    worst = max(rel, key=rel.get)
    print(f"update error: median {np.median(values):.2e}, worst {worst} {rel[worst]:.2e}")
    assert np.median(values) < 1e-3 and values.max() < 0.05, (np.median(values), worst, rel[worst])
    for name, (var, transform) in table.items():
        if "c:" + name in golden:
            np.testing.assert_allclose(var.numpy(), transform(golden["c:" + name]), rtol=1e-5, atol=1e-5,
                                       err_msg=name)
    np.testing.assert_allclose(network(x, training=False).numpy(), golden["eval_logits_after"], atol=1e-4)

"""Golden weight step of the recurrent search supernet against the official code.

tests/data/rnn_search_step.npz (or the file named by DPRIME_RNN_NPZ) holds one
weight step of the official RNNModelSearch (vocabulary 100, emsize = nhid = 16,
dropouts 0, random alphas) on one window from a zero hidden state: see
../shared/data/reference/README.md.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from dprime_tf.spaces.rnn.supernet import RecurrentSearchNetwork
from dprime_tf.searcher import BilevelSearch

pytestmark = pytest.mark.golden

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "rnn_search_step.npz")


@pytest.fixture(scope="module")
def golden():
    data = np.load(os.environ.get("DPRIME_RNN_NPZ") or SHIPPED)
    out = {k: data[k] for k in data.files}
    out["config"] = dict(item.split("=", 1) for item in out["config"])
    return out


def official_table(net):
    """Official name -> our variable (same layouts: the official cell multiplies x @ W)."""
    table = {"encoder.weight": net.embedding, "decoder.bias": net.decoder_bias, "rnns.0._W0": net.w0,
             "rnns.0.bn.running_mean": net.bn["mean"], "rnns.0.bn.running_var": net.bn["var"]}
    table.update({f"rnns.0._Ws.{i}": w for i, w in enumerate(net.ws)})
    return table


@pytest.fixture()
def search(golden):
    cfg = golden["config"]
    assert cfg["dropouts"] == "0" and cfg["emsize"] == cfg["nhid"]
    seq_len, batch = golden["data"].shape
    net = RecurrentSearchNetwork(int(cfg["ntoken"]), int(cfg["emsize"]), int(cfg["nhid"]), 0.0, 0.0, 0.0, 0.0, 0.0,
                                 tar_beta=float(cfg["tar_beta"]),
                                 batch_sizes={"weight": batch, "alpha": batch, "eval": batch})
    table = official_table(net)
    official = {k.split(":", 1)[1] for k in golden if k[:2] in ("p:", "b:")}
    # Both ways: every official tensor has its variable, every trainable or BN variable its tensor.
    assert set(table) == official, (official ^ set(table))
    ours = {id(v) for v in net.trainable_weights} | {id(net.bn["mean"]), id(net.bn["var"])}
    assert ours == {id(v) for v in table.values()}
    for name, var in table.items():
        value = golden.get("p:" + name, golden.get("b:" + name))
        assert tuple(var.shape) == value.shape, name
        var.assign(value)
    net.alpha.assign(golden["alphas"])
    lr = float(cfg["lr"])
    # The official search's weight step: SGD without momentum, coupled L2, clip 0.25; constant lr.
    search = BilevelSearch(net, steps_per_epoch=10, epochs=1, schedule="fixed", regularizer="none",
                           learning_rate=lr, learning_rate_min=lr, momentum=0.0,
                           weight_decay=float(cfg["weight_decay"]), grad_clip=float(cfg["clip"]))
    return search, table


def _window(golden):
    x = np.ascontiguousarray(golden["data"].T.astype(np.int32))  # time-major (L, B) -> (B, L)
    y = np.ascontiguousarray(golden["targets"].T.astype(np.int32))
    batch, length = x.shape
    return {"x": tf.constant(x), "y": tf.constant(y), "length": tf.fill([batch], length),
            "index": tf.zeros([batch], tf.int64), "reset": tf.ones([batch], tf.bool)}


def test_recurrent_forward_matches_official(search, golden):
    search, table = search
    net = search.supernet
    data = _window(golden)
    logits, h, outputs = net.forward(data["x"], tf.zeros([data["x"].shape[0], net.nhid]), training=True)
    np.testing.assert_allclose(tf.nn.log_softmax(logits).numpy(), golden["log_prob"], atol=1e-5)
    np.testing.assert_allclose(h.numpy(), golden["hidden_next"][-1, -1], atol=1e-5)
    diff = outputs[1:] - outputs[:-1]
    nll = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.transpose(data["y"]), logits=logits))
    assert abs(float(nll) / float(golden["raw_loss"]) - 1) < 1e-5
    loss = float(nll) + net.tar_beta * float(tf.reduce_mean(tf.square(diff)))
    assert abs(loss / float(golden["loss"]) - 1) < 1e-5


def test_recurrent_weight_step_matches_official(search, golden):
    search, table = search
    net = search.supernet
    out = search._replica_weight_step(_window(golden))  # eager: the step's own code path
    assert abs(float(out["loss"]) / float(golden["raw_loss"]) - 1) < 1e-5
    assert abs(float(out["fi"]) / float(golden["FI"]) - 1) < 1e-5
    # The next hidden state carried into the following window.
    np.testing.assert_allclose(net.states.variables["weight"].numpy(), golden["hidden_next"][-1, -1], atol=1e-5)
    for name, var in table.items():
        if "q:" + name in golden:
            p, q = golden["p:" + name], golden["q:" + name]
            err = np.abs((var.numpy() - p) - (q - p)).max() / np.abs(q - p).max()
            assert err < 1e-5, (name, err)
        else:
            np.testing.assert_allclose(var.numpy(), golden["c:" + name], rtol=1e-5, atol=1e-6, err_msg=name)

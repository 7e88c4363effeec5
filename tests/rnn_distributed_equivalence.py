"""Run as a script: recurrent search steps on 2 logical CPU replicas vs one device.

Under several replicas the recurrence is unrolled (batch norm all-reduces its
statistics, which a while loop cannot hold) and masked past each window's
length, the dropout masks are drawn for the global batch and sliced, and each
replica carries its rows of the hidden states. Prints one JSON line with the
largest differences of every variable (weights, alpha, BN statistics, hidden
states, schedule state, optimizer slots) and of the validation loss.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from dprime_tf import fast_paths  # noqa: E402

fast_paths.configure_graph_optimizer()  # as the command lines do

from dprime_tf.data import text  # noqa: E402
from dprime_tf.spaces.rnn.supernet import RecurrentSearchNetwork  # noqa: E402
from dprime_tf.searcher import BilevelSearch  # noqa: E402

V, H, B, BPTT = 50, 6, 4, 2


def make(strategy):
    with strategy.scope():
        net = RecurrentSearchNetwork(V, H, H, 0.3, 0.2, 0.3, 0.2, 0.1, batch_sizes={"weight": B, "alpha": B, "eval": B})
        search = BilevelSearch(net, steps_per_epoch=10, epochs=1, schedule="fixed", schedfreq=1, regularizer="prox",
                               learning_rate=2.0, learning_rate_min=2.0, momentum=0.0, weight_decay=5e-7,
                               grad_clip=0.25, arch_learning_rate=0.05, arch_beta_1=0.9)
    return net, search


def state(search):
    """Every variable as (path, value), in creation order: the two searches are matched by position
    (their Keras names differ by uniquifying suffixes)."""
    variables = search.weights + search.weight_optimizer.variables + search.alpha_optimizer.variables
    return [(v.path, np.asarray(v.numpy())) for v in variables]


def main(steps=3):
    ids = np.random.default_rng(0).integers(0, V, 600).astype(np.int32)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one = tf.distribute.get_strategy()
    net1, s1 = make(one)
    net2, s2 = make(mirrored)
    for a, b in zip(net1.weights, net2.weights):
        b.assign(a.numpy())
    out = {"replicas": mirrored.num_replicas_in_sync, "steps": steps}
    for search, strategy in ((s1, one), (s2, mirrored)):
        search.set_alpha_stream(text.make_stream(ids[::-1].copy(), B, BPTT, "fixed", seed=1))
        search.make_train_function()
        it = iter(strategy.experimental_distribute_dataset(text.make_stream(ids, B, BPTT, "search", seed=0)))
        for _ in range(steps):
            logs = search.train_function(it)
        out.setdefault("alpha_steps", []).append(int(search.alpha_steps.numpy()))
        out.setdefault("loss", []).append(float(logs["batch_loss"]))
        val = search.evaluate(text.make_eval_dataset(ids[:300], B, BPTT), verbose=0, return_dict=True)
        out.setdefault("val_loss", []).append(float(val["loss"]))
    a, b = state(s1), state(s2)
    assert len(a) == len(b) and all(va.shape == vb.shape for (_, va), (_, vb) in zip(a, b)), (len(a), len(b))
    worst = sorted(((float(np.max(np.abs(va - vb))), k) for (k, va), (_, vb) in zip(a, b)), reverse=True)[:5]
    a = dict(a)
    out["variables"] = len(a)
    out["worst"] = [[n, d] for d, n in worst]
    out["max_diff"] = max(d for d, _ in worst)
    out["hidden_weight_norm"] = float(np.abs(a[[k for k in a if k.endswith("hidden_weight")][0]]).sum())
    out["alpha_moved"] = float(np.abs(net1.alpha.numpy()).max())
    print(json.dumps(out))


def train_main(steps=3):
    """The final language model's training (dprime_tf.spaces.rnn.training) on 2 replicas vs one device."""
    from dprime_tf.spaces.rnn.genotype import DARTS_V2
    from dprime_tf.spaces.rnn.network import RNNModel
    from dprime_tf.spaces.rnn.training import _trainer_class

    ids = np.random.default_rng(0).integers(0, V, 600).astype(np.int32)

    def make(strategy):
        with strategy.scope():
            model = RNNModel(V, DARTS_V2, H, H, 0.3, 0.2, 0.3, 0.2, 0.1, seed=3)
            trainer = _trainer_class()(model, B, BPTT, 2.0, 5e-7, 0.25)
        return model, trainer

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one = tf.distribute.get_strategy()
    m1, t1 = make(one)
    m2, t2 = make(mirrored)
    for a, b in zip(m1.weights, m2.weights):
        b.assign(a.numpy())
    out = {"replicas": mirrored.num_replicas_in_sync, "steps": steps}
    for trainer in (t1, t2):
        logs = trainer.fit(text.make_stream(ids, B, BPTT, "train", seed=0, max_delta=2), epochs=1,
                           steps_per_epoch=steps, verbose=0)
        out.setdefault("loss", []).append(float(logs.history["loss"][-1]))
    a = [v.numpy() for v in t1.weights + t1.optimizer.variables]
    b = [v.numpy() for v in t2.weights + t2.optimizer.variables]
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    out["variables"] = len(a)
    out["max_diff"] = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    out["moved"] = float(np.abs(m1.ws[0].numpy() - make(one)[0].ws[0].numpy()).max())
    out["step"] = [int(t1.step_counter.numpy()), int(t2.step_counter.numpy())]
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        train_main()
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)

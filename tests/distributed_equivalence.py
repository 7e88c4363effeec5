"""Run as a script: one search step on 2 logical CPU replicas vs one device.

Prints one JSON line with the largest differences. Logical devices must be
configured before TensorFlow starts, hence a separate process. With
"recompute" as the fourth argument the replicas' supernet recomputes its
cells' activations in the backward pass (--recompute) and the one device's
does not.
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

from dprime_tf.spaces.cnn.supernet import SearchNetwork  # noqa: E402
from dprime_tf.searcher import BilevelSearch  # noqa: E402


def make(strategy, schedule, reg, recompute=False):
    with strategy.scope():
        net = SearchNetwork(4, 3, 10, image_size=16, recompute=recompute)
        # schedfreq 1: the fixed schedule takes an alpha step on every step (the dynamic
        # one with m=4 within a few); admm_freq 1: every alpha step updates ADMM's Z and U.
        search = BilevelSearch(net, steps_per_epoch=4, epochs=2, schedule=schedule, schedfreq=1,
                               threshold_multiplier=4.0, admm_freq=1, regularizer=reg,
                               learning_rate=0.1, arch_learning_rate=0.05)
    return net, search


def state(search):
    """Everything the search owns: weights, BN statistics, alphas, schedule and ADMM state,
    and the optimizers' slots."""
    variables = search.weights + search.weight_optimizer.variables + search.alpha_optimizer.variables
    return [(v.path, v.numpy()) for v in variables]


def main(schedule="fixed", reg="prox", steps=2, recompute=False):
    import time
    started = time.time()
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True).repeat()
    alpha_ds = tf.data.Dataset.from_tensor_slices((x[::-1], y[::-1])).batch(8, drop_remainder=True).repeat()

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    net1, s1 = make(tf.distribute.get_strategy(), schedule, reg)
    net2, s2 = make(mirrored, schedule, reg, recompute)
    for a, b in zip(s1.weights, s2.weights):  # the same start: weights, alphas, ADMM Z/U, schedule state
        b.assign(a.numpy())
    out = {"replicas": mirrored.num_replicas_in_sync, "steps": steps, "per_step": []}
    pairs = []
    for search, strategy in ((s1, tf.distribute.get_strategy()), (s2, mirrored)):
        search.set_alpha_stream(alpha_ds)
        search.make_train_function()
        pairs.append((search, iter(strategy.experimental_distribute_dataset(ds))))
    out["seconds_build"] = time.time() - started
    for step in range(steps):  # in lockstep, comparing the whole state after every step
        losses = [float(search.train_function(it)["batch_loss"]) for search, it in pairs]
        a, b = state(s1), state(s2)
        # Matched by position: both searches create the same variables in the same order
        # (their Keras names may differ by a uniquifying suffix).
        assert len(a) == len(b) and len(a) > 100, (len(a), len(b))
        assert all(va.shape == vb.shape for (_, va), (_, vb) in zip(a, b))
        # absolute differences, relative for values above 1 (FI is ~1e2)
        worst = sorted(((float(np.max(np.abs(va - vb) / np.maximum(1.0, np.abs(va)))), k)
                        for (k, va), (_, vb) in zip(a, b)), reverse=True)[:3]
        out["per_step"].append({"max_diff": worst[0][0], "worst": [[n, d] for d, n in worst], "loss": losses,
                                "alpha_steps": [int(s1.alpha_steps.numpy()), int(s2.alpha_steps.numpy())]})
        out["per_step"][-1]["seconds"] = time.time() - started
    out["variables"] = len(a)
    out["max_diff"] = max(r["max_diff"] for r in out["per_step"])
    out["alpha_steps"] = out["per_step"][-1]["alpha_steps"]
    out["alpha_diff"] = float(max(np.abs(x.numpy() - y.numpy()).max() for x, y in zip(net1.alphas, net2.alphas)))
    out["alpha_moved"] = float(np.abs(net1.alpha_normal.numpy()).max())
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:3], int(sys.argv[3]) if len(sys.argv) > 3 else 2,
         len(sys.argv) > 4 and sys.argv[4] == "recompute")

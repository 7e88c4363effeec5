"""The GPU fast paths (--precision=bf16|fp16, --xla) against the float32 path, on the CPU.

Each path starts from the same weights and data as the float32 path:
- one step's loss, FI and gradients (weights and alphas) agree within the
  16-bit type's rounding (cosine similarity of the gradients);
- a 6-step tiny search stays within a stated tolerance of the float32 search's
  per-step loss and FI, and XLA ends at the same genotype;
- fp16's dynamic loss scaling acts where it should: an overflowing step is
  skipped (no update, FI not observed, scale lowered) and the run goes on.

Mixed precision is not required to end the 6-step search at the same genotype:
at that length the alphas are decided by Adam's first, sign-like steps on
near-zero gradient components, which any change of rounding flips (the 16-bit
searches' alphas end 0.25 apart on a range of 0.31). The gradient the alphas
follow is checked instead.
"""

import numpy as np
import pytest

from dprime_tf import fast_paths
from dprime_tf.errors import UserError

# Tolerances, measured (in brackets) with margin. bfloat16 keeps 8 bits of
# mantissa, float16 11; XLA's float32 only reorders sums.
ONE_STEP = {  # loss relative, FI relative, least cosine similarity of the weight and alpha gradients
    "bf16": (5e-3, 2e-2, 0.98),  # [6.8e-4, 4.1e-3, 0.994]
    "fp16": (5e-4, 1e-2, 0.995),  # [1.1e-5, 2.8e-3, 0.999]
}
SIX_STEPS = {  # per-step loss relative, FI relative
    "bf16": (0.08, 0.3),  # [0.044, 0.16]: the search's own chaos grows the differences
    # fp16 [0.017 -> 0.036 -> 0.042, 0.091]: three releases with the same one-step error (loss 3.4e-5,
    # FI 3.7e-3-3.8e-3, cosines 0.9992) whose sums run in other orders (the dilated ops' shared input)
    "fp16": (0.06, 0.2),
    "xla": (1e-4, 1e-3),  # [< 1e-5, < 1e-5]
}


def test_flags_map_to_keras_policies_and_loss_scaling():
    import keras
    assert fast_paths.PRECISIONS == ("float32", "bf16", "fp16")
    assert [fast_paths.loss_scaling(p) for p in fast_paths.PRECISIONS] == [False, False, True]
    before = keras.mixed_precision.global_policy().name
    with fast_paths.policy("bf16"):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    with fast_paths.policy("fp16"):
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    assert keras.mixed_precision.global_policy().name == before


def test_the_flags_are_recorded_in_a_runs_flags_txt():
    """--resume re-reads flags.txt: a fast-path flag missing there would resume an fp16 run in float32.
    (flags.txt holds the command module's key flags: dprime_tf.cli.module_flags_text.)"""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for module in ("dprime_tf.search", "dprime_tf.train"):  # one process each: they define the same flags
        code = (f"import sys, {module} as m; from absl import flags; "
                "print(sorted(f.name for f in flags.FLAGS.get_key_flags_for_module(m)))")
        out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert out.returncode == 0, out.stderr[-2000:]
        names = eval(out.stdout.strip().splitlines()[-1])
        expected = {"precision", "xla"} | ({"recompute"} if module == "dprime_tf.search" else set())
        assert expected <= set(names), module


def test_bad_fast_path_settings_are_one_line_errors():
    from dprime_tf import search_job, train_job
    with pytest.raises(UserError, match="--precision must be one of float32, bf16, fp16, got 'int8'"):
        search_job.validate(search_job.SearchConfig(output_dir="x", precision="int8"))
    with pytest.raises(UserError, match="language models run in float32"):
        search_job.validate(search_job.SearchConfig(dataset="ptb_sample", output_dir="x", precision="bf16"))
    with pytest.raises(UserError, match="--xla is for image networks"):
        search_job.validate(search_job.SearchConfig(dataset="ptb_sample", output_dir="x", xla=True))
    with pytest.raises(UserError, match="--recompute is for image networks"):
        search_job.validate(search_job.SearchConfig(dataset="ptb_sample", output_dir="x", recompute=True))
    with pytest.raises(UserError, match="--mixed_precision means --precision=fp16, not --precision=bf16"):
        train_job.validate(train_job.TrainConfig(output_dir="/nonexistent/x", mixed_precision=True,
                                                 precision="bf16"))
    with pytest.raises(UserError, match="--xla and --deterministic do not go together"):
        search_job.validate(search_job.SearchConfig(output_dir="x", xla=True, deterministic=True))
    # the older spelling still works: it is fp16
    assert train_job.resolve(train_job.TrainConfig(mixed_precision=True)).precision == "fp16"


def _search(precision="float32", xla=False, steps=6, overflow_at_start=False):
    """A tiny search (C=4, 3 cells, 8x8 images, batch 8) with an alpha step at every
    step and a large alpha learning rate, so the genotype is decided by the data.
    Returns the search, its network and the fit's last logs."""
    import keras
    import tensorflow as tf

    from dprime_tf.searcher import BilevelSearch
    from dprime_tf.spaces.cnn.supernet import SearchNetwork

    keras.utils.set_random_seed(0)
    with fast_paths.policy(precision):
        net = SearchNetwork(4, 3, 10, image_size=8)
    search = BilevelSearch(net, steps_per_epoch=steps, epochs=1, schedule="fixed", schedfreq=1,
                           arch_learning_rate=0.05, learning_rate=0.05, learning_rate_min=0.05,
                           loss_scale=fast_paths.loss_scaling(precision), jit_compile=xla)
    if overflow_at_start:  # the scaled gradients overflow float16 at once
        search.weight_optimizer.dynamic_scale.assign(2.0 ** 24)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((64, 8, 8, 3)).astype(np.float32)
    labels = (images[:, :4, :4, 0].mean(axis=(1, 2)) > 0).astype(np.int32) * 3  # learnable
    stream = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(8)
    search.set_alpha_stream(stream.skip(1))
    history = []
    callback = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs=None: history.append(dict(logs)))
    search.fit(stream, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[callback])
    return search, net, [{k: float(v) for k, v in log.items()} for log in history]


@pytest.fixture
def no_op_determinism():
    """XLA refuses to compile under op determinism, which an earlier test of the same
    process may have switched on (it is process-wide)."""
    from tensorflow.python.framework import config
    was = config.is_op_determinism_enabled()
    config.disable_op_determinism()
    yield
    if was:
        config.enable_op_determinism()


@pytest.fixture(scope="module")
def float32_search():
    return _search()


def _check_steps(ours, ref, path):
    (_, _, logs), (_, _, ref_logs) = ours, ref
    assert len(logs) == len(ref_logs) == 6 and all(log["weight_step"] == 1.0 for log in logs)
    loss_rtol, fi_rtol = SIX_STEPS[path]
    for key, rtol in (("batch_loss", loss_rtol), ("batch_alpha_loss", loss_rtol), ("fi", fi_rtol)):
        np.testing.assert_allclose([log[key] for log in logs], [log[key] for log in ref_logs], rtol=rtol,
                                   err_msg=key)


def _one_step_gradients(precision):
    """Loss, weight gradients and alpha gradients of one batch, from the seed-0 supernet."""
    import keras
    import tensorflow as tf

    from dprime_tf.spaces.cnn.supernet import SearchNetwork
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 8, 3)).astype(np.float32)
    y = (x[:, :4, :4, 0].mean(axis=(1, 2)) > 0).astype(np.int32) * 3
    keras.utils.set_random_seed(0)
    with fast_paths.policy(precision):
        net = SearchNetwork(4, 3, 10, image_size=8)
    alphas = [a.value for a in net.alphas]
    with tf.GradientTape() as tape:
        tape.watch(alphas)
        loss = net.loss_terms((x, y), training=True)["loss_sum"] / 16
    grads = tape.gradient(loss, net.trainable_weights + alphas)
    flat = [np.concatenate([g.numpy().ravel() for g in part])
            for part in (grads[:len(net.trainable_weights)], grads[len(net.trainable_weights):])]
    return net, float(loss), flat[0], flat[1]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step_matches_the_float32_step(precision):
    _, loss32, w32, a32 = _one_step_gradients("float32")
    net, loss, w, a = _one_step_gradients(precision)
    assert net.compute_dtype == {"bf16": "bfloat16", "fp16": "float16"}[precision]
    assert all(v.dtype == "float32" for v in net.weights)  # weights, alphas, BN statistics stay float32
    assert w.dtype == a.dtype == np.float32
    loss_rtol, fi_rtol, least_cosine = ONE_STEP[precision]
    assert abs(loss / loss32 - 1) <= loss_rtol
    assert abs((w @ w) / (w32 @ w32) - 1) <= fi_rtol  # FI = the squared weight-gradient norm
    for ours, ref in ((w, w32), (a, a32)):
        assert ours @ ref / np.linalg.norm(ours) / np.linalg.norm(ref) >= least_cosine


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_search_tracks_the_float32_search(precision, float32_search):
    _check_steps(_search(precision=precision), float32_search, precision)


@pytest.mark.slow
def test_xla_search_matches_the_float32_search_and_its_genotype(float32_search, no_op_determinism):
    ours = _search(xla=True)
    _check_steps(ours, float32_search, "xla")
    assert ours[1].genotype() == float32_search[1].genotype()


@pytest.mark.slow
def test_fp16_loss_scaling_skips_an_overflowing_step_and_goes_on():
    search, net, logs = _search(precision="fp16", steps=12, overflow_at_start=True)
    taken = [log["weight_step"] for log in logs]
    # The first steps overflow: skipped (no update, FI not observed: the EWMA
    # stays unset at 0), the scale halved each time until the gradients fit.
    assert taken[0] == 0.0 and logs[0]["fi_ewma"] == 0.0
    assert taken[-1] == 1.0  # (a step near the threshold may overflow again)
    assert float(search.weight_optimizer.dynamic_scale.numpy()) <= 2.0 ** (24 - taken.count(0.0))
    assert np.isfinite(logs[-1]["fi_ewma"]) and logs[-1]["fi_ewma"] > 0
    assert int(search.weight_optimizer.inner_optimizer.iterations.numpy()) == taken.count(1.0)


# -- training a final network ---------------------------------------------------------

def _train_losses(precision="float32", xla=False, steps=4):
    """Per-step losses of a tiny DARTS_V2 network (C=8, 3 cells, 16x16) trained on fixed batches."""
    import keras
    import tensorflow as tf

    from dprime_tf.genotype import load_genotype
    from dprime_tf.spaces.cnn.network import build_cifar_network
    from dprime_tf.spaces.cnn.trainer import FinalTrainer

    keras.utils.set_random_seed(0)
    with fast_paths.policy(precision):
        net = build_cifar_network(load_genotype("DARTS_V2"), 8, 3, 10, auxiliary=False, image_size=16)
        trainer = FinalTrainer(net, steps_per_epoch=steps, epochs=1, learning_rate=0.05, learning_rate_min=0.05,
                               loss_scale=fast_paths.loss_scaling(precision), jit_compile=xla)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((32, 16, 16, 3)).astype(np.float32)
    labels = (images[:, :8, :8, 0].mean(axis=(1, 2)) > 0).astype(np.int32)
    step = trainer.make_train_function()
    iterator = iter(tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(8))
    losses = []
    for _ in range(steps):
        step(iterator)
        losses.append(float(trainer.batch_loss.numpy()))
    return net, np.array(losses)


@pytest.mark.slow
def test_training_fast_paths_track_the_float32_training(no_op_determinism):
    _, ref = _train_losses()
    for path, (precision, xla), rtol in (("bf16", ("bf16", False), 2e-2), ("fp16", ("fp16", False), 5e-3),
                                         ("xla", ("float32", True), 1e-4)):
        net, losses = _train_losses(precision, xla)
        np.testing.assert_allclose(losses, ref, rtol=rtol, err_msg=path)
        if precision != "float32":
            assert net.compute_dtype == fast_paths.POLICIES[precision].replace("mixed_", "")
            assert net(np.zeros((1, 16, 16, 3), np.float32)).dtype == "float32"  # logits stay float32


def test_graph_optimizer_settings_follow_the_devices_and_DPRIME_GRAPPLER(monkeypatch):
    """Where no GPU is visible: one Grappler pass, without the passes that buy a CPU nothing;
    DPRIME_GRAPPLER=0 turns Grappler off. (conftest.py applies the default for every test.)"""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.core.protobuf import rewriter_config_pb2 as rc
    from tensorflow.python.eager import context
    assert not tf.config.list_physical_devices("GPU")
    try:
        monkeypatch.setenv("DPRIME_GRAPPLER", "0")
        assert fast_paths.configure_graph_optimizer() is False
        assert tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"] is True
        monkeypatch.delenv("DPRIME_GRAPPLER")
    finally:
        assert fast_paths.configure_graph_optimizer() is True
    options = tf.config.optimizer.get_experimental_options()
    assert options["disable_meta_optimizer"] is False
    assert all(options[name] is False for name in fast_paths.CPU_SKIPPED_OPTIMIZERS)
    rewrite = config_pb2.ConfigProto.FromString(
        context.context().function_call_options.config_proto_serialized).graph_options.rewrite_options
    assert rewrite.meta_optimizer_iterations == rc.RewriterConfig.ONE
    assert rewrite.memory_optimization == rc.RewriterConfig.NO_MEM_OPT
    assert rewrite.disable_tfg_optimizer


def test_garbage_collector_settings_of_the_commands():
    """After TensorFlow's import the commands freeze the objects alive (TensorFlow's
    modules) out of the collector's reach and collect the young generation every
    10,000 allocations (cli.settle_garbage_collector; conftest.py applies it too)."""
    import gc

    from dprime_tf import cli
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)  # CPython's defaults
        cli.settle_garbage_collector()
        assert gc.get_threshold() == (cli.GC_YOUNG_THRESHOLD, 10, 10) == (10_000, 10, 10)
        assert gc.get_freeze_count() > 100_000  # TensorFlow's, Keras' and NumPy's objects
        gc.set_threshold(50_000, 10, 10)  # a higher setting of the user's is kept
        cli.settle_garbage_collector()
        assert gc.get_threshold()[0] == 50_000
    finally:
        gc.set_threshold(*before)

"""Final-network training (dprime_tf/spaces/cnn/trainer.py, train_job.py) and the train /
evaluate command lines, on the embedded sample of real CIFAR-10 images."""

import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import dprime_tf.networks  # noqa: F401  (registers the network classes for load_model)
from dprime_tf import runs
from dprime_tf.data import images
from dprime_tf.networks import count_parameters
from dprime_tf.spaces.cnn.trainer import HISTORY_COLUMNS, DropPathSchedule, FinalTrainer, evaluate_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny network and short epochs: ~0.6 s/step on a 2-core CPU. Deterministic
# ops, so that two runs can be compared bitwise; drop-path off (its RNG is not
# part of the checkpoint).
TINY = dict(genotype="DARTS_V2", dataset="sample", init_channels=8, layers=5, batch_size=32, epochs=2,
            steps_per_epoch=10, learning_rate=0.05, cutout=0, drop_path_prob=0.0, checkpoint_every=4,
            deterministic=True, verbose=2)


def cli(module, *args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def flag_args(cfg: dict):
    out = []
    for k, v in cfg.items():
        out.append(f"--{k}" if v is True else f"--no{k}" if v is False else f"--{k}={v}")
    return out


# -- the training step ----------------------------------------------------------------

class FixedLogits(keras.Model):
    """Returns its input's two halves as (logits, aux_logits) in training: fixed logits."""

    def __init__(self, classes, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.w = self.add_weight(shape=(), initializer="ones", name="w")

    def call(self, x, training=False):
        main, aux = x[:, :self.classes] * self.w, x[:, self.classes:] * self.w
        return (main, aux) if training else main


def _one_step(trainer, x, y):
    trainer.make_train_function()(iter(tf.data.Dataset.from_tensors((x, y)).repeat()))


def _np_ce(logits, y):
    z = logits - logits.max(1, keepdims=True)
    return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))


@pytest.mark.parametrize("aux_weight", [0.4, 0.0, 1.5])
def test_loss_is_ce_plus_weighted_auxiliary_ce(aux_weight):
    rng = np.random.default_rng(0)
    classes, batch = 10, 16
    x = rng.normal(size=(batch, 2 * classes)).astype("float32") * 3
    y = rng.integers(0, classes, batch).astype("int32")
    net = FixedLogits(classes)
    net(x)
    trainer = FinalTrainer(net, steps_per_epoch=1, epochs=1, auxiliary_weight=aux_weight)
    _one_step(trainer, x, y)
    expected = _np_ce(x[:, :classes].astype(np.float64), y).mean() \
        + aux_weight * _np_ce(x[:, classes:].astype(np.float64), y).mean()
    np.testing.assert_allclose(float(trainer.batch_loss.numpy()), expected, rtol=1e-5)
    accuracy = np.mean(x[:, :classes].argmax(1) == y)  # the main head's
    assert float(trainer.batch_accuracy.numpy()) == pytest.approx(accuracy)
    assert int(trainer.step.numpy()) == 1


@pytest.mark.parametrize("clip", [0.5, 0.0])
def test_gradients_are_clipped_to_the_global_norm_before_the_update(clip):
    classes, batch = 4, 8
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(batch, 2 * classes)) * 100).astype("float32")
    y = rng.integers(0, classes, batch).astype("int32")
    net = FixedLogits(classes)
    net(x)
    # lr 1 (constant), no momentum, no L2: the update is minus the (clipped) gradient.
    trainer = FinalTrainer(net, steps_per_epoch=1, epochs=1, learning_rate=1.0, learning_rate_min=1.0, momentum=0.0,
                           weight_decay=0.0, grad_clip=clip)
    with tf.GradientTape() as tape:
        logits, aux = net(x, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)) \
            + 0.4 * tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, aux))
    grad = float(tape.gradient(loss, net.w))
    assert abs(grad) > 1.0  # the clip must matter
    _one_step(trainer, x, y)
    step = 1.0 - float(net.w.numpy())
    np.testing.assert_allclose(step, np.sign(grad) * (clip if clip else abs(grad)), rtol=1e-5)


def test_drop_path_schedule_is_linear_from_zero():
    class Net:
        drop_path_prob = tf.Variable(0.7)

    schedule = DropPathSchedule(Net, 0.2, 600)
    for epoch, expected in ((0, 0.0), (1, 0.2 / 600), (300, 0.1), (599, 0.2 * 599 / 600)):
        schedule.on_epoch_begin(epoch)
        assert float(Net.drop_path_prob.numpy()) == pytest.approx(expected, abs=1e-7)
        logs = {}
        schedule.on_epoch_end(epoch, logs)
        assert logs["drop_path_prob"] == pytest.approx(expected, abs=1e-7)


# -- bad input: one line, exit 2, before TensorFlow starts ---------------------------------

@pytest.fixture(scope="module")
def corrupt_genotype(tmp_path_factory):
    path = tmp_path_factory.mktemp("genotypes") / "corrupt.json"
    path.write_text('{"normal": [["sep_conv_3x3", 0], ')
    return str(path)


@pytest.mark.parametrize("args,message", [
    (["--genotype=DARTS_V2", "--epochs=0"], "--epochs must be >= 1"),
    (["--genotype=DARTS_V2", "--epochs=many"], "--epochs"),
    (["--genotype=DARTS_V2", "--no_such_flag=1"], "no_such_flag"),
    (["--genotype=DARTS_V2", "--drop_path_prob=1.5"], "--drop_path_prob"),
    (["--genotype=DARTS_V2", "--val_fraction=1"], "--val_fraction"),
    (["--genotype=DARTS_V2", "--dataset=imagenet"], "unknown --dataset"),
    (["--genotype=DARTS_V2", "--dataset=folder:/no/such/folder"], "no such folder"),
    (["--genotype=/no/such/genotype.json"], "/no/such/genotype.json"),
    (["--genotype=CORRUPT"], "not valid JSON"),
    (["--output_dir=/no/such/run", "--resume"], "no checkpoint"),
    (["--genotype=DARTS_V2", "--batch_size=0"], "--batch_size"),
    (["--flagfile=/no/such.flags"], "such.flags"),
])
def test_train_cli_rejects_bad_input_in_one_line(args, message, corrupt_genotype, tmp_path):
    args = [a.replace("CORRUPT", corrupt_genotype) for a in args]
    if not any(a.startswith("--output_dir") for a in args):
        args.append(f"--output_dir={tmp_path / 'run'}")
    result = cli("dprime_tf.train", *args, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run")


def test_evaluate_cli_rejects_a_missing_model(tmp_path):
    result = cli("dprime_tf.evaluate", f"--model={tmp_path}", timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --model") and "model.keras" in lines[0]


# -- end to end -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The train CLI: 2 epochs of 10 steps on the sample, then --resume to 3 epochs."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    first = cli("dprime_tf.train", *flag_args(TINY), f"--output_dir={run_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    history_first = runs.read_history(os.path.join(run_dir, "history.csv"))
    summary_first = json.load(open(os.path.join(run_dir, "summary.json")))
    second = cli("dprime_tf.train", f"--output_dir={run_dir}", "--resume", "--epochs=3")
    assert second.returncode == 0, second.stderr[-3000:]
    return str(run_dir), history_first, first.stdout + second.stdout, summary_first


@pytest.mark.slow
def test_training_on_real_images_lowers_the_loss(trained_run):
    run_dir, history, _, _ = trained_run
    loss = history["loss"]
    assert len(loss) == 20 and np.all(np.isfinite(loss))
    first, last = loss[:5].mean(), loss[-5:].mean()
    assert last < first - 0.1, (first, last)


@pytest.mark.slow
def test_run_directory_contents(trained_run):
    run_dir, _, stdout, _ = trained_run
    for name in ("flags.txt", "genotype.json", "history.csv", "model.keras", "summary.json"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert not [f for f in os.listdir(run_dir) if f.endswith(".tmp") or f.startswith(".model")]
    assert tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")).endswith("ckpt-30")
    events = [f for _, _, files in os.walk(os.path.join(run_dir, "tensorboard")) for f in files]
    assert any(f.startswith("events.out.tfevents") for f in events)
    flags_text = open(os.path.join(run_dir, "flags.txt")).read().split()
    assert "--epochs=3" in flags_text and "--init_channels=8" in flags_text  # the resume's flags
    assert f"--genotype={os.path.join(run_dir, 'genotype.json')}" in flags_text

    with open(os.path.join(run_dir, "history.csv")) as f:
        assert f.readline().strip().split(",") == ["step", *HISTORY_COLUMNS]
    history = runs.read_history(os.path.join(run_dir, "history.csv"))
    np.testing.assert_array_equal(history["epoch"], np.repeat([0, 1, 2], 10))
    # per-epoch cosine to 0, stepped at the top of each epoch as the official train.py: epoch e of E
    # trains at cosine((e + 1) / E): 0.025, then 0 over the 2 epochs of the first run; after the
    # resume to 3 epochs, epoch 2 of 3 is the last: 0 as well.
    np.testing.assert_allclose(history["lr"], np.repeat([0.025, 0.0, 0.0], 10), rtol=1e-5, atol=1e-9)
    assert np.all(history["drop_path_prob"] == 0)

    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    assert summary["parameters"] == count_parameters(model) > 0
    assert summary["steps"] == 30 and summary["epochs"] == 3 and summary["val_images"] == 270
    # the sample's (CIFAR-10's) normalization, recorded in the run and in the model
    assert summary["normalization"] == {"mean": list(images.CIFAR10_MEAN), "std": list(images.CIFAR10_STD)}
    assert model.input_mean == images.CIFAR10_MEAN and model.input_std == images.CIFAR10_STD
    assert 0 <= summary["val_accuracy"] <= 1 and summary["val_loss"] > 0 and summary["wall_time_seconds"] > 0
    assert "epoch 3/3:" in stdout and "val_acc" in stdout and "resumed" in stdout


@pytest.mark.slow
def test_resume_continues_the_step_sequence(trained_run):
    run_dir, history_first, _, _ = trained_run
    history = runs.read_history(os.path.join(run_dir, "history.csv"))
    np.testing.assert_array_equal(history["step"], np.arange(30))
    for column in HISTORY_COLUMNS:  # the first run's rows are kept as they were
        np.testing.assert_array_equal(history[column][:20], history_first[column])


@pytest.mark.slow
def test_evaluate_cli_matches_numpy_on_the_model_predictions(trained_run, tmp_path):
    run_dir, _, _, _ = trained_run
    out = tmp_path / "eval.json"
    result = cli("dprime_tf.evaluate", f"--model={run_dir}", f"--output_json={out}", "--batch_size=64")
    assert result.returncode == 0, result.stderr[-3000:]
    reported = json.loads(out.read_text())
    assert reported["dataset"] == "sample" and reported["split"] == "test" and reported["examples"] == 300
    assert "top-1 accuracy" in result.stdout
    assert reported["normalization"] == {"mean": list(images.CIFAR10_MEAN), "std": list(images.CIFAR10_STD)}

    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    data = images.load_images("sample", split="test")
    logits = model.predict(images.normalize(data.images).numpy(), batch_size=100, verbose=0).astype(np.float64)
    correct = int(np.sum(logits.argmax(1) == data.labels))
    assert reported["correct"] == correct
    assert reported["accuracy"] == correct / 300
    np.testing.assert_allclose(reported["loss"], _np_ce(logits, data.labels).mean(), rtol=1e-4)
    # the library function gives the same on the same data
    direct = evaluate_model(model, images.make_eval_dataset(data, 128))
    assert direct["correct"] == correct


@pytest.mark.slow
def test_resume_after_a_kill_mid_epoch_repeats_the_uninterrupted_run(trained_run, tmp_path):
    """SIGKILL after step 13 (last checkpoint: step 12, mid epoch 1), then --resume:
    exactly the steps and final validation of the uninterrupted run."""
    _, reference, _, reference_summary = trained_run  # the fixture's first run: TINY, uninterrupted
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(tmp_path / "killed.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "dprime_tf.train", *flag_args(TINY), f"--output_dir={run_dir}"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    history_path = run_dir / "history.csv"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if history_path.exists() and len(history_path.read_text().splitlines()) >= 1 + 14:
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    log.seek(0)
    output = log.read()[-2000:]
    rows = len(history_path.read_text().splitlines()) - 1 if history_path.exists() else 0
    checkpoint = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert 14 <= rows < 20 and not (run_dir / "model.keras").exists(), (rows, proc.returncode, output)
    assert int(checkpoint.rsplit("-", 1)[1]) % 10 != 0, checkpoint  # mid-epoch

    result = cli("dprime_tf.train", f"--output_dir={run_dir}", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    history = runs.read_history(str(history_path))
    np.testing.assert_array_equal(history["step"], np.arange(20))
    for column in HISTORY_COLUMNS:
        np.testing.assert_allclose(history[column], reference[column], rtol=1e-6, atol=1e-7, err_msg=column)
    # the same weights and batch-norm statistics: the same validation
    summary = json.load(open(run_dir / "summary.json"))
    assert summary["steps"] == reference_summary["steps"] == 20
    for key in ("val_accuracy", "val_loss", "train_loss", "train_accuracy"):
        assert summary[key] == pytest.approx(reference_summary[key], rel=1e-6, abs=1e-7), key

"""The search command line: flag errors, missing data, and resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dprime_tf import runs
from dprime_tf.errors import UserError
from dprime_tf.search_job import SearchConfig, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset=sample", "--image_size=16", "--layers=3", "--init_channels=4", "--batch_size=16", "--val_steps=1", "--deterministic",
        "--verbose=0", "--seed=5"]


def cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "dprime_tf.search", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


@pytest.mark.parametrize("change, message", [
    (dict(epochs=0), "--epochs must be >= 1"),
    (dict(layers=2), "--layers must be >= 3"),
    (dict(init_channels=5), "even number"),
    (dict(threshold_multiplier=0.9), "must be > 1"),
    (dict(image_size=30), "multiple of 4"),
    (dict(learning_rate_min=1.0), "--learning_rate_min"),
    (dict(schedule="sometimes"), "--schedule must be one of fixed, dynamic"),
])
def test_config_validation(change, message):
    with pytest.raises(UserError, match=message):
        validate(SearchConfig(output_dir="x", **change))


def one_line_error(proc, fragment):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert fragment in lines[0], lines[0]


def test_cli_errors_are_one_line(tmp_path):
    one_line_error(cli("--schedule=often", f"--output_dir={tmp_path}/a"), "often")
    one_line_error(cli("--epochs=-1", f"--output_dir={tmp_path}/b"), "--epochs must be >= 1")
    one_line_error(cli(f"--dataset=folder:{tmp_path}/nope", f"--output_dir={tmp_path}/c"), "nope")
    empty = tmp_path / "tfds"
    empty.mkdir()
    one_line_error(cli("--dataset=cifar10", f"--data_dir={empty}", f"--output_dir={tmp_path}/d"), "--data_dir")
    one_line_error(cli("--resume", f"--output_dir={tmp_path}/e"), "no checkpoint")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("1")
    one_line_error(cli(f"--output_dir={tmp_path}/full"), "not empty")
    # Nothing was left behind by the failed runs.
    assert not (tmp_path / "a").exists() and not (tmp_path / "c" / "history.csv").exists()


# Runs a command line's main module in this interpreter and reports, after its one-line
# error, whether TensorFlow was ever imported.
_TF_LOADED = """
import runpy, sys
module, sys.argv = sys.argv[1], [sys.argv[1]] + sys.argv[2:]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    print("tensorflow loaded:", "tensorflow" in sys.modules)
"""


@pytest.mark.parametrize("module, args, message", [
    ("dprime_tf.search", ["--epochs=0", "--output_dir={tmp}/run"], "--epochs must be >= 1"),
    ("dprime_tf.search", ["--dataset=folder:/no/such/folder", "--output_dir={tmp}/run"], "no such folder"),
    ("dprime_tf.search", ["--resume", "--output_dir={tmp}/run"], "no checkpoint"),
    ("dprime_tf.search", ["--strategy=multi_worker", "--output_dir={tmp}/run"], "needs TF_CONFIG"),
    ("dprime_tf.train", ["--genotype=/no/such/genotype.json", "--output_dir={tmp}/run"], "/no/such/genotype.json"),
    ("dprime_tf.evaluate", ["--model={tmp}/run"], "run does not exist"),
    ("dprime_tf.tune", ["--rho=-1", "--tune_dir={tmp}/run"], "--rho must be >= 0"),
    ("dprime_tf.study", ["--methods=primer", "--study_dir={tmp}/run"], "unknown method 'primer'"),
])
def test_bad_input_fails_before_tensorflow_loads(module, args, message, tmp_path):
    """Bad flags, data paths and run directories are reported in one line without
    TensorFlow's seconds of start-up (each command checks first, then imports it)."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, "-c", _TF_LOADED, module, *(a.format(tmp=tmp_path) for a in args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    one_line_error(proc, message)
    assert "tensorflow loaded: False" in proc.stdout, (proc.stdout, proc.stderr)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_resume_after_sigkill_restores_the_exact_state(tmp_path):
    """A --deterministic search killed mid-epoch and resumed repeats the uninterrupted run.

    The killed process wrote history rows past its last checkpoint before it
    died; the resumed process recomputes those steps from the checkpoint
    (weights, BN statistics, both optimizers, schedule state, data and
    alpha-stream positions all enter these numbers) and ends with the same
    history, alphas and genotype as a run that was never interrupted.
    """
    common = TINY + ["--epochs=2", "--steps_per_epoch=15", "--checkpoint_every=4",
                     "--schedule=dynamic", "--threshold_multiplier=1.5", "--schedfreq=2",
                     "--arch_learning_rate=0.01"]
    killed, whole = tmp_path / "killed", tmp_path / "uninterrupted"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    reference = subprocess.Popen([sys.executable, "-m", "dprime_tf.search", *common, f"--output_dir={whole}"],
                                 cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    child = subprocess.Popen([sys.executable, "-m", "dprime_tf.search", *common, f"--output_dir={killed}"],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = killed / "history.csv"
    deadline = time.time() + 600
    while time.time() < deadline:  # kill mid-epoch 0, past the step-8 checkpoint
        if history.exists() and len(history.read_text().splitlines()) > 11:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = runs.read_history(history)
    assert 10 <= len(before["step"]) < 30, "the run finished before it could be killed"
    assert not (killed / "genotype.json").exists()
    checkpoint_step = max(int(f.split("-")[1].split(".")[0]) for f in os.listdir(killed / "checkpoints")
                          if f.startswith("ckpt-") and f.endswith(".index"))
    assert 0 < checkpoint_step < len(before["step"])  # the kill came after a checkpoint

    proc = cli("--resume", f"--output_dir={killed}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    after, full = runs.read_history(history), runs.read_history(whole / "history.csv")
    assert list(after["step"]) == list(range(30))  # none repeated, none missing
    assert after["alpha_step"].sum() >= 3  # alphas moved in this run
    cols = ("alpha_step", "alpha_steps", "tau", "fi_ewma", "fi", "batch_loss", "lr", "progress")
    for col in cols:
        # the steps after the checkpoint, recomputed by the resumed process, as the killed one computed them
        np.testing.assert_array_equal(after[col][:len(before["step"])], before[col], err_msg=col)
        # and the whole run as the uninterrupted one (bitwise with --deterministic; the contract is 1e-5)
        np.testing.assert_allclose(after[col], full[col], rtol=1e-5, atol=1e-7, err_msg=col)
    a, b = np.load(killed / "alphas.npz"), np.load(whole / "alphas.npz")
    for key in ("alpha_normal", "alpha_reduce"):
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-5, err_msg=key)
    assert (killed / "genotype.json").read_text() == (whole / "genotype.json").read_text()
    g = json.loads((killed / "genotype.json").read_text())
    assert len(g["normal"]) == 8 and np.load(killed / "alphas.npz")["alpha_normal"].shape == (14, 8)


@pytest.mark.slow
def test_cifar_flags_search_trains_at_the_official_lr_sequence(tmp_path):
    """configs/cifar.flags at tiny sizes: the cosine lr is stepped at the top of every epoch, as
    the official scripts do, so 4 epochs train at 0.02149, 0.0130, 0.00451 and exactly 0.001."""
    out = tmp_path / "run"
    proc = cli("--flagfile=configs/cifar.flags", *TINY, "--epochs=4", "--steps_per_epoch=2",
               f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    h = runs.read_history(out / "history.csv")
    per_epoch = [0.001 + 0.024 * (1 + np.cos(np.pi * (e + 1) / 4)) / 2 for e in range(4)]
    np.testing.assert_allclose(h["lr"], np.repeat(per_epoch, 2), rtol=1e-6)
    np.testing.assert_allclose(h["lr"][[0, -1]], [0.0214852814, 0.001], rtol=1e-6)
    np.testing.assert_allclose(h["progress"], (np.arange(8) + 1) / 8, rtol=1e-6)  # t ticks before the step

"""The bilevel search loop: a short real search, and tf.distribute equivalence."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dprime_tf import runs
from dprime_tf.decisiveness import decisiveness
from dprime_tf.search_job import SearchConfig, run_search

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture(scope="module")
def short_search(tmp_path_factory):
    """200 steps of DARTS-PRIME on the embedded real CIFAR-10 images (tiny network, images at 16x16)."""
    out = tmp_path_factory.mktemp("search") / "run"
    cfg = SearchConfig(dataset="sample", output_dir=str(out), epochs=2, steps_per_epoch=100, batch_size=16,
                       image_size=16,
                       layers=3, init_channels=4, val_steps=2, checkpoint_every=100, verbose=0,
                       arch_learning_rate=3e-3)
    summary = run_search(cfg, flags_text="--dataset=sample\n")
    return out, summary


@pytest.mark.slow
def test_short_search_lowers_loss_and_moves_alphas(short_search):
    out, summary = short_search
    h = runs.read_history(out / "history.csv")
    assert list(h["step"]) == list(range(200))
    assert np.mean(h["batch_loss"][-50:]) < np.mean(h["batch_loss"][:50]) - 0.05
    # Dynamic schedule: after tau first reaches FI, about one alpha step per schedfreq + 1 = 11 steps.
    first = int(np.argmax(h["alpha_step"] > 0))
    rate = float(np.mean(h["alpha_step"][first:]))
    assert 0.05 < rate < 0.14, rate
    assert summary["alpha_steps"] == int(h["alpha_step"].sum()) == int(h["alpha_steps"][-1])
    alphas = np.load(out / "alphas.npz")
    assert np.abs(alphas["alpha_normal"]).max() > 5e-3  # started at ~1e-3 * N(0, 1)
    # The proximity penalty grows with progress; the clock ticks before each step: t/T reaches 1.
    assert abs(h["progress"][-1] - 1.0) < 1e-6 and abs(h["progress"][0] - 1 / 200) < 1e-6


@pytest.mark.slow
def test_run_directory_contents(short_search):
    out, summary = short_search
    for name in ("flags.txt", "genotype.json", "summary.json", "alphas.npz", "alpha_history.npz",
                 "alphas_initial.npz", "decisiveness.json",
                 "genotypes/epoch_001.json", "genotypes/epoch_002.json", "plots/alphas_normal.png",
                 "plots/alphas_reduce.png", "plots/schedule.png", "plots/cell_normal.png", "plots/cell_reduce.png"):
        assert (out / name).exists(), name
    assert (out / "plots" / "schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hist = np.load(out / "alpha_history.npz")
    assert hist["normal"].shape == (2, 14, 8)
    # decisiveness per epoch, the last one recomputed from the files by its definition
    per_epoch = json.loads((out / "decisiveness.json").read_text())
    assert [m["epoch"] for m in per_epoch] == [1, 2]
    with np.load(out / "alphas_initial.npz") as initial:
        expected = decisiveness({k: hist[k][-1] for k in ("normal", "reduce")},
                                {k: initial[k] for k in ("normal", "reduce")})
    assert per_epoch[-1]["margin_ratio"] == pytest.approx(expected["margin_ratio"], rel=1e-4)
    assert summary["decisiveness"]["verdict"] == per_epoch[-1]["verdict"]
    np.testing.assert_allclose(hist["normal"].sum(-1), 1.0, rtol=1e-5)
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    for col in ("step", "progress", "fi", "fi_ewma", "tau", "alpha_step", "batch_loss", "lr"):
        assert col in header
    assert os.listdir(out / "tensorboard") and os.listdir(out / "checkpoints")
    g = json.loads((out / "genotype.json").read_text())
    assert g == summary["genotype"] and len(g["normal"]) == 8
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


@pytest.mark.slow
def test_two_replicas_match_one_device():
    """One step on a global batch over 2 logical CPUs == one device: weights, BN statistics, alphas,
    ADMM Z/U, both optimizers' slots and the schedule state (FI EWMA, tau), within 1e-5.

    The fixed schedule with schedfreq 1 takes an alpha step (with its ADMM update) on
    every step, so the first step exercises both updates. Only the first step is held
    to 1e-5: the two paths round differently (fused vs. all-reduced batch-norm sums),
    and once an activation lies within rounding of a ReLU kink or a max-pool tie the
    gradients differ by that unit's whole contribution (seen: 4e-7 after one step,
    2e-4 after the next on this tiny network). Later steps must still take the same
    decisions.

    The replicas' supernet recomputes its cells in the backward pass (--recompute): the
    same arithmetic, and under MirroredStrategy each replica's replay must leave the
    running statistics alone (tests/test_supernet.py compares recompute on one device)."""
    proc = subprocess.run([sys.executable, os.path.join(HERE, "distributed_equivalence.py"), "fixed", "admm", "2",
                           "recompute"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    steps = result["per_step"]
    assert steps[0]["max_diff"] < 1e-5, steps[0]
    assert [s["alpha_steps"] for s in steps] == [[1, 1], [2, 2]], steps
    assert abs(steps[1]["loss"][0] - steps[1]["loss"][1]) < 1e-4, steps
    assert result["alpha_moved"] > 1e-2, result  # alphas were trained

"""dprime-study: the paper's experiment as a command (methods x seeds -> search -> train -> test)."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dprime_tf import studies
from dprime_tf.errors import UserError
from dprime_tf.search_job import SearchConfig
from dprime_tf.spaces.cnn.genotype import CNN_STEPS, Genotype
from dprime_tf.spaces.rnn.genotype import RecurrentGenotype

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "study_smoke.flags")


def _study(tmp_path, methods=("darts", "prime"), seeds=(0, 1), **search):
    cfg = SearchConfig(dataset="sample", epochs=search.pop("epochs", 1), **search)
    return studies.Study(str(tmp_path), tuple(methods), tuple(seeds), cfg, {"epochs": 1})


# -- presets and trials ------------------------------------------------------------
def test_method_presets_set_the_spec_switches(tmp_path):
    study = _study(tmp_path, methods=tuple(studies.METHODS))
    darts = study.search_config("darts", 3)
    assert (darts.schedule, darts.split, darts.reg, darts.schedfreq, darts.seed) == ("fixed", "half", "none", 1, 3)
    prime = study.search_config("prime", 3)
    assert (prime.schedule, prime.split, prime.reg, prime.schedfreq) == ("dynamic", "dynamic", "prox", 10)
    assert (study.search_config("dynamic", 0).reg, study.search_config("dynamic", 0).schedule) == ("none", "dynamic")
    assert (study.search_config("prox", 0).reg, study.search_config("prox", 0).schedule) == ("prox", "fixed")
    assert study.search_config("admm", 0).reg == "admm"
    assert prime.output_dir == os.path.join(str(tmp_path), "trials", "prime", "seed3", "search")
    train = study.train_config("g.json", "prime", 3)
    assert (train.seed, train.epochs, train.dataset, train.genotype) == (3, 1, "sample", "g.json")
    assert train.output_dir == os.path.join(str(tmp_path), "trials", "prime", "seed3", "train")


def test_unknown_methods_and_baselines_are_one_line_errors():
    from dprime_tf import spaces
    cnn = spaces.get("cnn")
    assert studies.method_names(["prime"], ["random", "DARTS_V2"], cnn) == ["prime", "random", "DARTS_V2"]
    with pytest.raises(UserError, match="unknown method 'primer'"):
        studies.method_names(["primer"], [], cnn)
    with pytest.raises(UserError, match="unknown baseline 'DARTS_V3'"):
        studies.method_names([], ["DARTS_V3"], cnn)
    with pytest.raises(UserError, match="nothing to study"):
        studies.method_names([], [], cnn)
    with pytest.raises(UserError, match="twice"):
        studies.method_names(["prime", "prime"], [], cnn)


def test_a_study_directory_refuses_other_settings_but_takes_more_seeds(tmp_path):
    studies.check_settings(_study(tmp_path))
    studies.check_settings(_study(tmp_path, methods=("prime", "admm"), seeds=(0, 1, 2, 3)))  # an extension
    with pytest.raises(UserError, match=r"other settings \(search.epochs: 1 -> 2\)"):
        studies.check_settings(_study(tmp_path, epochs=2))


def test_random_genotypes_are_valid_seeded_and_cover_the_space():
    cells = [Genotype.random(seed) for seed in range(300)]
    assert Genotype.random(7) == Genotype.random(7) and len(set(cells)) == 300
    ops = {op for g in cells for op, _ in g.normal + g.reduce}
    assert ops == {"max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                   "dil_conv_3x3", "dil_conv_5x5"}
    for g in cells:
        for gene in (g.normal, g.reduce):
            for node in range(CNN_STEPS):  # two distinct earlier states per node
                (_, a), (_, b) = gene[2 * node:2 * node + 2]
                assert a != b and max(a, b) < node + 2
    # node 0 (inputs 0, 1) always takes both cell inputs; node 3 picks 2 of 5 states: each ~2/5 of the time
    last = np.array([[i for _, i in g.normal[6:8]] for g in cells]).ravel()
    assert all(abs(np.mean(last == k) - 2 / 5 / 2) < 0.06 for k in range(5))
    rnn = [RecurrentGenotype.random(seed) for seed in range(50)]
    assert len(set(rnn)) == 50 and all(pred < k + 1 for g in rnn for k, (_, pred) in enumerate(g.recurrent))


# -- results -----------------------------------------------------------------------
def test_results_table_is_mean_and_sample_std_over_seeds(tmp_path):
    study = _study(tmp_path, seeds=(0, 1, 2))
    rows = [dict(method="prime", seed=0, test_accuracy=0.5, params=2e6, alpha_step_rate=0.1, search_seconds=10.0),
            dict(method="prime", seed=1, test_accuracy=0.7, params=2e6, alpha_step_rate=0.2, search_seconds=30.0),
            dict(method="darts", seed=0, test_accuracy=0.4, params=1e6, alpha_step_rate=1.0, search_seconds=50.0)]
    summary = {e["method"]: e for e in studies.summarize(rows, study.methods, "test_accuracy")}
    assert summary["prime"]["n"] == 2 and summary["darts"]["n"] == 1
    assert summary["prime"]["test_accuracy"] == pytest.approx((0.6, math.sqrt(0.02)))  # (0.1^2 + 0.1^2) / (2 - 1)
    assert summary["darts"]["test_accuracy"] == pytest.approx((0.4, 0.0))
    table = studies.results_markdown(study, rows)
    assert "| prime | 2 | 40.00 ± 14.14 | 2.000 ± 0.000 | 0.150 ± 0.071 | 20 ± 14 |" in table
    assert "| darts | 1 | 60.00 ± 0.00 |" in table and "3 of 6 trials finished" in table


def _run_study(tmp_path, *args, name="run"):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    out = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "dprime_tf.study", f"--flagfile={SMOKE}",
                             f"--study_dir={tmp_path / 'study'}", *args], stdout=out, stderr=subprocess.STDOUT,
                            cwd=ROOT, env=env)


def _log(tmp_path, name):
    return (tmp_path / f"{name}.log").read_text()


@pytest.mark.slow
def test_smoke_study_resumes_after_a_kill_of_its_chief_and_extends(tmp_path):
    study_dir = tmp_path / "study"
    first = _run_study(tmp_path, name="first")
    checkpoint = study_dir / "trials" / "prime" / "seed0" / "search" / "checkpoints" / "checkpoint"
    deadline = time.time() + 600
    while not checkpoint.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, _log(tmp_path, "first")[-3000:]
    first.send_signal(signal.SIGKILL)  # mid-trial: prime's search has a checkpoint, darts is finished
    first.wait()
    darts_result = study_dir / "trials" / "darts" / "seed0" / "result.json"
    assert darts_result.exists() and not (study_dir / "trials" / "prime" / "seed0" / "result.json").exists()
    darts_written = darts_result.stat().st_mtime_ns

    second = _run_study(tmp_path, name="second")
    assert second.wait(timeout=900) == 0, _log(tmp_path, "second")[-3000:]
    log = _log(tmp_path, "second")
    assert "(2 trials, 1 finished before)" in log
    assert "prime seed 0: resuming the search" in log and "darts seed 0: running" not in log
    assert darts_result.stat().st_mtime_ns == darts_written

    with open(study_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["seed"]) for r in rows] == [("darts", "0"), ("prime", "0")]
    for row in rows:
        accuracy = float(row["test_accuracy"])
        assert 0 <= accuracy <= 1 and float(row["test_error"]) == pytest.approx(1 - accuracy)
        assert int(row["params"]) > 0 and 0 <= float(row["alpha_step_rate"]) <= 1
        assert float(row["search_seconds"]) > 0 and float(row["train_seconds"]) > 0
        assert row["genotype"].startswith("normal: ") and " | reduce: " in row["genotype"]
    assert float(rows[0]["alpha_step_rate"]) == 1.0  # darts: an alpha step after every weight step
    # the test accuracy is the trained model's on the held-out split, as dprime-evaluate scores it
    from dprime_tf.evaluation import score
    evaluated = score(str(study_dir / "trials" / "prime" / "seed0" / "train"), quiet=True)
    assert evaluated["examples"] == 300 and float(rows[1]["test_accuracy"]) == pytest.approx(evaluated["accuracy"])
    # each trial is an ordinary search and training run directory
    for part, files in (("search", ("genotype.json", "summary.json", "flags.txt", "report.html")),
                        ("train", ("model.keras", "summary.json", "flags.txt", "report.html"))):
        for method in ("darts", "prime"):
            for name in files:
                assert (study_dir / "trials" / method / "seed0" / part / name).exists(), (method, part, name)
    table = (study_dir / "results.md").read_text()
    assert "| darts | 1 |" in table and "| prime | 1 |" in table
    page = (study_dir / "report.html").read_text()
    for picture in ("test_metric.png", "alpha_step_rate.png", "search_time.png"):
        assert f"plots/{picture}" in page and (study_dir / "plots" / picture).stat().st_size > 1000
    assert "trials/prime/seed0/search/report.html" in page

    # extended with a baseline: the finished trials are kept, only the new one runs
    third = _run_study(tmp_path, "--baselines=random", name="third")
    assert third.wait(timeout=900) == 0, _log(tmp_path, "third")[-3000:]
    log = _log(tmp_path, "third")
    assert "(3 trials, 2 finished before)" in log and "running its search" not in log
    with open(study_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["kind"]) for r in rows] == [("darts", "search"), ("prime", "search"), ("random", "baseline")]
    random_genotype = json.loads((study_dir / "trials" / "random" / "seed0" / "genotype.json").read_text())
    assert Genotype.from_dict(random_genotype) == Genotype.random(0)
    assert math.isfinite(float(rows[2]["test_accuracy"])) and rows[2]["alpha_step_rate"] == ""

    # the same study directory with other settings: one line, nothing run
    other = _run_study(tmp_path, "--epochs=2", name="other")
    assert other.wait(timeout=120) == 2
    lines = [line for line in _log(tmp_path, "other").splitlines() if line.strip()]
    assert len(lines) == 1 and "holds a study with other settings (search.epochs: 1 -> 2)" in lines[0]


def test_study_flags_errors_are_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    for args, fragment in ((["--seed=3"], "--seed is not a study flag: seeds are per trial: use --seeds"),
                           (["--methods=prime,primer"], "unknown method 'primer'"),
                           (["--seeds=0,x"], "--seeds must be integers"),
                           (["--baselines=DARTS_V9"], "unknown baseline 'DARTS_V9'")):
        proc = subprocess.run([sys.executable, "-m", "dprime_tf.study", f"--flagfile={SMOKE}",
                               f"--study_dir={tmp_path / 'never'}", *args], capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=120)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], (args, proc.stderr)
    assert not (tmp_path / "never").exists()

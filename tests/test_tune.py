"""keras-tuner over the search's hyperparameters: a tiny tuning run (killed
mid-trial and resumed), its best flagfile driving a search, and keras-tuner's
distributed mode (a chief oracle and one worker on 127.0.0.1)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Two trials of a 2 x 3-step search of the smallest network.
TINY = ["--flagfile=" + os.path.join(ROOT, "configs", "tune.flags"), "--image_size=16", "--max_trials=2", "--epochs=2",
        "--steps_per_epoch=3", "--val_steps=2", "--checkpoint_every=2", "--verbose=0"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3", **extra)
    return env


def _tune(args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "dprime_tf.tune", *args], cwd=ROOT, env=env or _env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc, timeout):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout} s:\n{out[-4000:]}")
    return out


def _has_checkpoint(run_dir):
    ckpt = os.path.join(run_dir, "checkpoints", "checkpoint")
    return os.path.exists(ckpt)


def test_space_matches_cli_choices():
    from dprime_tf import tune, tuning
    assert set(tune._TUNABLE) == set(tuning.SPACE)
    assert list(tuning.SPACE)[0] == "reg"  # a parent before the conditional rho


def test_flags_text_round_trips_through_search_flags(tmp_path):
    from dprime_tf import tuning
    from dprime_tf.search_job import SearchConfig
    cfg = SearchConfig(output_dir="x", reg="admm", rho=0.3, schedfreq=7, learning_rate=0.0123456789)
    text = tuning.flags_text(cfg, "a header\nline two")
    assert text.startswith("# a header\n# line two\n")
    assert "--reg=admm" in text and "--schedfreq=7" in text and "--learning_rate=0.012345679" in text
    assert "--output_dir" not in text and "--resume" not in text and "--until_epoch" not in text
    # every line is a flag of dprime_tf.search
    from absl import flags

    from dprime_tf import search  # noqa: F401
    names = {line.split("=")[0][2:] for line in text.splitlines() if line.startswith("--")}
    names = {n[2:] if n.startswith("no") and n[2:] in flags.FLAGS else n for n in names}
    assert names <= set(flags.FLAGS), names - set(flags.FLAGS)


def test_recurrent_search_space_tunes_perplexity():
    from absl import flags

    from dprime_tf import search, tuning  # noqa: F401
    from dprime_tf.search_job import RNNSearchConfig
    cfg = RNNSearchConfig(output_dir="x")
    hm = tuning.SearchHyperModel(cfg)
    assert (hm.objective.name, hm.objective.direction) == ("val_perplexity", "min")
    assert hm.space["learning_rate"].low >= 1.0  # SGD lr 20 in the recurrent search
    names = {line.split("=")[0][2:] for line in tuning.flags_text(cfg).splitlines() if line.startswith("--")}
    names = {n[2:] if n.startswith("no") and n[2:] in flags.FLAGS else n for n in names}
    assert names <= set(flags.FLAGS), names - set(flags.FLAGS)
    assert "search_space" not in names


def test_hypermodel_space_is_conditional():
    import keras_tuner

    from dprime_tf import tuning
    from dprime_tf.search_job import SearchConfig
    hm = tuning.SearchHyperModel(SearchConfig(output_dir="x"))
    hp = keras_tuner.HyperParameters()
    hp.values["reg"] = "none"
    cfg = hm.build(hp)
    assert cfg.reg == "none" and cfg.rho == SearchConfig.rho  # rho inactive without a regularizer
    hp = keras_tuner.HyperParameters()
    hp.values.update(reg="prox", rho=0.5)
    assert hm.build(hp).rho == 0.5
    with pytest.raises(Exception, match="unknown hyperparameter"):
        tuning.SearchHyperModel(SearchConfig(output_dir="x"), tune=["bogus"])


@pytest.mark.slow
def test_tuning_resumes_after_kill_and_best_flags_run_a_search(tmp_path):
    tune_dir = tmp_path / "tune"
    args = [*TINY, f"--tune_dir={tune_dir}"]
    started = time.time()
    # 1. Kill the tuner once the first trial has a checkpoint (mid-trial).
    proc = _tune(args, start_new_session=True)
    trial0 = tune_dir / "dprime" / "trial_0" / "search"
    deadline = time.time() + 600
    while not _has_checkpoint(trial0) and proc.poll() is None and time.time() < deadline:
        time.sleep(1)
    assert proc.poll() is None, f"tuner ended before the kill:\n{proc.communicate()[0][-3000:]}"
    assert _has_checkpoint(trial0), "no checkpoint within 600 s"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (trial0 / "summary.json").exists()
    killed_at = time.time() - started

    # 2. The same command resumes: trial 0 continues from its checkpoint.
    out = _finish(_tune(args), 900)
    assert "trial 0: resuming its search" in out and "best trial" in out, out[-3000:]
    from dprime_tf import runs
    h = runs.read_history(trial0 / "history.csv")
    assert list(h["step"]) == list(range(6))  # continuous across the kill
    oracle = json.loads((tune_dir / "dprime" / "oracle.json").read_text())
    trials = [json.loads((tune_dir / "dprime" / f"trial_{i}" / "trial.json").read_text()) for i in range(2)]
    assert [t["status"] for t in trials] == ["COMPLETED", "COMPLETED"], trials
    assert all(0.0 <= t["score"] <= 1.0 for t in trials)
    assert not oracle["ongoing_trials"]
    best = json.loads((tune_dir / "best.json").read_text())
    assert best["score"] == max(t["score"] for t in trials)
    flagfile = tune_dir / "best.flags"
    text = flagfile.read_text()
    best_trial = next(t for t in trials if t["trial_id"] == best["trial_id"])
    for name, value in best_trial["hyperparameters"]["values"].items():
        assert f"--{name}=" in text, name

    # 3. A rerun after completion trains nothing new.
    t0 = time.time()
    out = _finish(_tune(args), 300)
    assert "best trial" in out and "resuming" not in out, out[-3000:]
    assert not (tune_dir / "dprime" / "trial_2").exists()
    rerun = time.time() - t0

    # 4. dprime_tf.search accepts the best flagfile as is.
    run = tmp_path / "best_run"
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "dprime_tf.search", f"--flagfile={flagfile}", f"--output_dir={run}",
                           "--epochs=1", "--steps_per_epoch=2", "--val_steps=1", "--verbose=0"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "genotype.json").exists()
    saved = (run / "flags.txt").read_text()
    for name, value in best_trial["hyperparameters"]["values"].items():
        assert f"--{name}=" in saved
    print(f"\nwall: tune until kill {killed_at:.0f} s, resumed tuning {time.time() - started - killed_at:.0f} s "
          f"(incl. later steps), rerun {rerun:.0f} s, best-flags search {time.time() - t0:.0f} s")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_distributed_tuning_chief_and_worker(tmp_path):
    """keras-tuner's chief/worker mode: the chief runs the oracle (gRPC on 127.0.0.1), the worker the trials."""
    tune_dir = tmp_path / "tune"
    args = [*TINY, f"--tune_dir={tune_dir}", "--steps_per_epoch=2", "--epochs=1"]
    port = str(_free_port())
    common = dict(KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=port)
    started = time.time()
    chief = _tune(args, env=_env(KERASTUNER_TUNER_ID="chief", **common))
    time.sleep(3)  # the worker retries its first request until the chief's server is up
    worker = _tune(args, env=_env(KERASTUNER_TUNER_ID="tuner0", **common))
    worker_out = _finish(worker, 900)
    chief_out = _finish(chief, 120)
    assert worker.returncode == 0, worker_out[-3000:]
    assert chief.returncode == 0, chief_out[-3000:]
    assert "tuner tuner0 done" in worker_out and "best trial" in chief_out, (worker_out[-2000:], chief_out[-2000:])
    project = tune_dir / "dprime"
    trials = [json.loads((project / f"trial_{i}" / "trial.json").read_text()) for i in range(2)]
    assert [t["status"] for t in trials] == ["COMPLETED", "COMPLETED"]
    for i in range(2):  # the worker ran the searches
        assert (project / f"trial_{i}" / "search" / "genotype.json").exists()
    assert (project / "tuner0.json").exists()
    assert (tune_dir / "best.flags").exists() and not (tune_dir / "best.flags.tmp").exists()
    print(f"\nwall: distributed tuning (chief + 1 worker, 2 trials) {time.time() - started:.0f} s")

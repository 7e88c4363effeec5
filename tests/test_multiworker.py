"""Multi-worker search (MultiWorkerMirroredStrategy through TF_CONFIG) with
worker processes on 127.0.0.1: a killed worker stops the chief, both resume
the run, and the result equals one process on the same global batch.

The reference is one process with two replicas (two logical CPU devices):
the same global batch split the same way, so any difference would come from
the multi-worker machinery; it matches bit for bit. Against one device the
batch-norm arithmetic differs in the last bits (fused kernel vs. all-reduced
sums) and Adam's first steps turn such noise on near-zero alpha gradients
into full +-lr steps: on this test's search 109 of 112 alpha_normal entries
agree to 1e-6 and 3 differ by 2 x arch lr, the same as between one device
and two replicas inside one process (tests/test_searcher.py checks that
equivalence on synthetic data)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# A global batch of 16 (8 per worker); the dynamic schedule with m = 2 takes
# alpha steps within the 6 steps, so alphas and genotype depend on them.
SEARCH = ["--dataset=sample", "--image_size=16", "--layers=3", "--init_channels=4", "--batch_size=16", "--epochs=2",
          "--steps_per_epoch=3", "--val_steps=2", "--schedule=dynamic", "--split=dynamic", "--reg=prox",
          "--threshold_multiplier=2", "--schedfreq=2", "--arch_learning_rate=0.01", "--checkpoint_every=2",
          "--seed=3", "--verbose=2"]
TIMEOUT = 900  # per process; the whole file takes a few minutes on an idle 2-core CPU
# Heartbeat timeout: the chief notices the killed worker within about this long (with the
# default 60 s it waited 36-50 s). Heartbeats come every half of it from TensorFlow's own
# threads, so even a loaded CPU keeps them well inside 20 s.
WORKER_TIMEOUT = 20


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(tmp):
    os.makedirs(tmp, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3",
               TMPDIR=str(tmp))
    return env


def _search(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "dprime_tf.search", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _workers(run_dir, tmp, extra=(), n=2):
    """n worker processes of one cluster on 127.0.0.1 (worker 0 is the chief)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(n)]}
    procs = []
    for i in range(n):
        env = _env(os.path.join(tmp, f"tmp{i}"))
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(_search([*SEARCH, "--strategy=multi_worker", f"--worker_timeout={WORKER_TIMEOUT}",
                              f"--output_dir={run_dir}", *extra], env))
    return procs


def _communicate(proc, timeout=TIMEOUT):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"no exit within {timeout} s:\n{err[-3000:]}")
    return out, err


def _kill_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


def _history_rows(run_dir):
    path = os.path.join(run_dir, "history.csv")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return max(sum(1 for _ in f) - 1, 0)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Two workers, the non-chief SIGKILLed mid-run, then both restarted with --resume; alongside, the
    reference: one process running the same global batch on two replicas (two logical CPU devices)."""
    tmp = tmp_path_factory.mktemp("mw")
    run_dir, ref_dir = tmp / "two", tmp / "one"
    started = time.time()
    ref = _search([*SEARCH, "--strategy=mirrored", "--cpu_devices=2", f"--output_dir={ref_dir}"], _env(tmp / "tmp_ref"))
    procs = _workers(run_dir, tmp)
    try:
        while _history_rows(run_dir) < 3 and procs[0].poll() is None and time.time() - started < TIMEOUT:
            time.sleep(0.2)
        assert procs[0].poll() is None and _history_rows(run_dir) >= 3, procs[0].communicate()[1][-3000:]
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        rows_at_kill = _history_rows(run_dir)
        chief_out, chief_err = _communicate(procs[0], timeout=120)
        stopped = time.time() - killed
        chief_rc = procs[0].returncode
    finally:
        _kill_all(procs)
    resumed_at = time.time()
    procs = _workers(run_dir, tmp, ["--resume"])
    try:
        outs = [_communicate(p) for p in [*procs, ref]]
    finally:
        _kill_all([*procs, ref])
    for p, (out, err) in zip([*procs, ref], outs):
        assert p.returncode == 0, err[-4000:]
    return dict(tmp=tmp, one=ref_dir, two=run_dir, chief=(chief_rc, chief_out, chief_err),
                rows_at_kill=rows_at_kill, stopped=stopped, outs=outs,
                walls=(killed - started, stopped, time.time() - resumed_at, time.time() - started))


@pytest.mark.slow
def test_killed_worker_stops_the_chief(killed_and_resumed):
    r = killed_and_resumed
    rc, _, err = r["chief"]
    assert rc == 2, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert lines and lines[-1].startswith("error: lost contact with another worker"), err[-3000:]
    assert "--resume" in lines[-1] and "Traceback" not in err, err[-3000:]
    assert r["stopped"] < 120
    assert r["rows_at_kill"] < 6, "the run finished before the kill: nothing was tested"
    walls = r["walls"]
    print(f"\nwall: until the kill {walls[0]:.0f} s; chief stopped {walls[1]:.1f} s after it; "
          f"resume on 2 workers {walls[2]:.0f} s; fixture total {walls[3]:.0f} s")


@pytest.mark.slow
def test_resumed_two_workers_match_one_process(killed_and_resumed):
    """Same global batch and seed: 2 workers (killed and resumed) == one process with 2 replicas."""
    one, two = killed_and_resumed["one"], killed_and_resumed["two"]
    from dprime_tf import runs
    h1, h2 = runs.read_history(one / "history.csv"), runs.read_history(two / "history.csv")
    assert list(h2["step"]) == list(range(6))  # continuous across the kill
    assert h1["alpha_steps"][-1] >= 1, "the schedule took no alpha step: the test would not test alphas"
    np.testing.assert_array_equal(h1["alpha_step"], h2["alpha_step"])
    for col in ("batch_loss", "fi", "fi_ewma", "tau"):
        np.testing.assert_allclose(h1[col], h2[col], rtol=1e-5, err_msg=col)
    a1, a2 = np.load(one / "alphas.npz"), np.load(two / "alphas.npz")
    for key in ("alpha_normal", "alpha_reduce"):
        np.testing.assert_allclose(a1[key], a2[key], atol=1e-4, rtol=0)
    assert np.abs(a1["alpha_normal"]).max() > 5e-3  # the alphas moved from their 1e-3 init
    assert json.loads((one / "genotype.json").read_text()) == json.loads((two / "genotype.json").read_text())
    s1, s2 = json.loads((one / "summary.json").read_text()), json.loads((two / "summary.json").read_text())
    assert s1["steps"] == s2["steps"] == 6
    assert abs(s1["val_accuracy"] - s2["val_accuracy"]) < 1e-6  # exact global validation sums


@pytest.mark.slow
def test_only_the_chief_writes(killed_and_resumed):
    r = killed_and_resumed
    one, two, tmp = r["one"], r["two"], r["tmp"]
    # the same user-facing files as the one-process run, nothing from the other worker
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))
    assert sorted(os.listdir(two / "checkpoints")) == sorted(os.listdir(one / "checkpoints"))
    for i in range(2):  # the non-chief's scratch directories are gone
        assert not [n for n in os.listdir(tmp / f"tmp{i}") if n.startswith("dprime-worker")]
    (chief_out, _), (worker_out, _) = r["outs"][0], r["outs"][1]
    assert "run directory:" in chief_out and "resumed" in chief_out
    assert "worker done" in worker_out and "run directory:" not in worker_out


def test_tf_config_errors_are_one_line(tmp_path):
    env = _env(tmp_path / "tmp")
    for tf_config, message in ((None, "needs TF_CONFIG"), ("{", "not valid JSON"),
                               ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
                                "is not in the cluster"),
                               ('{"cluster": {"ps": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}',
                                "not used by MultiWorkerMirroredStrategy")):
        env.pop("TF_CONFIG", None)
        if tf_config is not None:
            env["TF_CONFIG"] = tf_config
        proc = subprocess.run([sys.executable, "-m", "dprime_tf.search", "--strategy=multi_worker",
                               f"--output_dir={tmp_path / 'x'}"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("error:")
    proc = subprocess.run([sys.executable, "-m", "dprime_tf.search", "--strategy=multi_worker"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "needs --output_dir" in proc.stderr


def test_missing_worker_at_start_up_is_a_bounded_wait(tmp_path):
    """Worker 1 never starts: worker 0 stops after 10 x --worker_timeout with one line, instead of waiting forever."""
    env = _env(tmp_path / "tmp")
    env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]},
                                   "task": {"type": "worker", "index": 0}})
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "dprime_tf.search", "--strategy=multi_worker", "--worker_timeout=1",
                           f"--output_dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "error: not all workers of TF_CONFIG's cluster" in proc.stderr and "joined within 10 s" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written before the cluster is up
    print(f"\nwall: missing worker detected after {time.time() - started:.0f} s (incl. start-up)")

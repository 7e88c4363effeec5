"""The fault battery (issue 11): bad inputs with their one-line messages and exit codes,
a second process on a locked run directory, file modes, stale temporaries, resume
checks, and runs interrupted at every kill point and resumed.

Kills are simulated in-process (an exception raised by a callback at the chosen
point, which skips everything the process would have written after it) or by
deleting the files a kill at that point would not have written; the resumed runs
must end as the uninterrupted one does.
"""

import dataclasses
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from dprime_tf import runlock, validation
from dprime_tf.errors import UserError
from dprime_tf.search_job import SearchConfig
from dprime_tf.search_job import validate as validate_search
from dprime_tf.train_job import TrainConfig
from dprime_tf.train_job import validate as validate_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(dataset="sample", image_size=16, layers=3, init_channels=4, batch_size=16, val_steps=1, verbose=0,
            seed=5, deterministic=True)


def cli(module, *args, env=None, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def one_line_error(proc, fragment):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0], lines[0]


def tree(path):
    """{relative path: bytes or None (a directory)} of everything under `path`."""
    out = {}
    for d, dirs, files in os.walk(path):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), path)] = None
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                out[os.path.relpath(os.path.join(d, name), path)] = f.read()
    return out


# -- bad settings: one line each ---------------------------------------------------------
SEARCH_CASES = [
    (dict(learning_rate=float("inf")), "--learning_rate must be a finite number, got inf"),
    (dict(rho=float("inf")), "--rho must be a finite number, got inf"),
    (dict(threshold_multiplier=float("inf")), "--threshold_multiplier must be a finite number, got inf"),
    (dict(arch_learning_rate=float("nan")), "--arch_learning_rate must be a finite number, got nan"),
    (dict(momentum=5.0), "--momentum must be in [0, 1), got 5.0"),
    (dict(val_steps=-1), "--val_steps must be >= 0, got -1"),
    (dict(admm_freq=0), "--admm_freq must be >= 1"),
    (dict(zu_ewma=2.0), "--zu_ewma must be in [0, 1]"),
    (dict(weight_decay=-1.0), "--weight_decay must be >= 0"),
    (dict(schedfreq=100, threshold_multiplier=2.0), "--schedfreq * ln(--threshold_multiplier) is 69.3, above 40"),
    (dict(seed=-1), "--seed must be in [0, 2147483647]"),
    (dict(batch_size=10 ** 6), "--batch_size must be in [1, 65536]"),
    (dict(image_size=4096), "--image_size must be in [1, 1024]"),
    (dict(epochs=10 ** 9), "--epochs must be in [1, 1000000]"),
]


@pytest.mark.parametrize("change, message", SEARCH_CASES)
def test_search_settings(change, message):
    with pytest.raises(UserError) as e:
        validate_search(SearchConfig(output_dir="x", **change))
    assert message in str(e.value) and "\n" not in str(e.value)


TRAIN_CASES = [
    (dict(learning_rate=float("inf")), "--learning_rate must be a finite number, got inf"),
    (dict(drop_path_prob=float("nan")), "--drop_path_prob must be a finite number, got nan"),
    (dict(momentum=1.0), "--momentum must be in [0, 1)"),
    (dict(seed=-3), "--seed must be in [0, 2147483647]"),
    (dict(init_channels=100000), "--init_channels must be in [1, 4096]"),
]


@pytest.mark.parametrize("change, message", TRAIN_CASES)
def test_train_settings(change, message, tmp_path):
    with pytest.raises(UserError) as e:
        validate_train(TrainConfig(output_dir=str(tmp_path / "run"), **change))
    assert message in str(e.value)


def test_global_batch_must_divide_across_replicas():
    validation.check_replicas(64, 4)
    with pytest.raises(UserError, match=r"--batch_size \(10\) must be a multiple of the 4 replicas"):
        validation.check_replicas(10, 4)


def test_tau_bound_keeps_the_paper_and_tuner_ranges():
    validate_search(SearchConfig(output_dir="x", schedfreq=20, threshold_multiplier=1.2))  # tuner's corner
    validate_search(SearchConfig(output_dir="x", schedule="fixed", schedfreq=100, threshold_multiplier=2.0))


# -- bad files: one line each -------------------------------------------------------------
def test_non_utf8_and_oversized_genotype_files(tmp_path):
    from dprime_tf.genotype import GenotypeError, load_genotype
    bad = tmp_path / "g.json"
    bad.write_bytes(b'{"normal": "\xff\xfe"}')
    with pytest.raises(GenotypeError, match="is not UTF-8 text"):
        load_genotype(str(bad))
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (validation.MAX_CONFIG_BYTES + 1))
    with pytest.raises(GenotypeError, match="larger than 1048576 bytes"):
        load_genotype(str(big))


def test_train_cli_non_utf8_genotype_is_one_line(tmp_path):
    bad = tmp_path / "g.json"
    bad.write_bytes(b"\x89\xff not json")
    one_line_error(cli("dprime_tf.train", f"--genotype={bad}", f"--output_dir={tmp_path}/run"), "is not UTF-8 text")
    assert not (tmp_path / "run").exists()


def test_tf_config_port_must_be_a_number(monkeypatch):
    from dprime_tf.distribute import listening_line, read_tf_config
    cfg = {"cluster": {"worker": ["localhost:http", "localhost:2223"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cfg))
    with pytest.raises(UserError, match="needs a port number in 1-65535 after the last ':', got 'http'"):
        read_tf_config()
    cfg["cluster"]["worker"][0] = "localhost:2222"
    monkeypatch.setenv("TF_CONFIG", json.dumps(cfg))
    line = listening_line(read_tf_config())
    assert "listens on port 2222" in line and "private network" in line and "\n" not in line


def test_search_cli_tf_config_bad_port_is_one_line(tmp_path):
    tf_config = json.dumps({"cluster": {"worker": ["localhost:99999"]}, "task": {"type": "worker", "index": 0}})
    one_line_error(cli("dprime_tf.search", "--strategy=multi_worker", f"--output_dir={tmp_path}/run",
                       env={"TF_CONFIG": tf_config}), "needs a port number in 1-65535")
    assert not (tmp_path / "run").exists()


def test_ragged_serving_response_is_one_line():
    from export.client import ClientError, parse_rest_response
    with pytest.raises(ClientError, match="malformed outputs"):
        parse_rest_response({"outputs": {"classes": [[1, 2], [3]], "probabilities": [[0.5, 0.5]],
                                         "logits": [[0.0, 0.0]]}})
    with pytest.raises(ClientError, match="mismatched outputs"):
        parse_rest_response({"outputs": {"classes": [1, 2], "probabilities": [[0.5, 0.5]], "logits": [[0.0, 0.0]]}})


def _png_header(width, height):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def test_image_pixel_cap(tmp_path):
    from dprime_tf.data import images
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(100_000, 100_000))
    with pytest.raises(UserError, match="is 100000x100000 pixels, more than 64 megapixels"):
        images._read(str(bomb))
    assert images.image_dimensions(_png_header(32, 24)) == (32, 24)


def _sample_jpeg(i):
    with np.load(os.path.join(ROOT, "dprime_tf", "data", "cifar10_sample.npz")) as f:
        return f["jpeg"][f["offsets"][i]:f["offsets"][i + 1]].tobytes()


@pytest.mark.parametrize("damage, message", [
    ("truncated", "the JPEG is truncated (it ends before its end-of-image marker): copy it again or remove it"),
    ("corrupt", "not a valid jpg/jpeg/png/bmp/gif file"),  # a bogus Huffman table, full length
])
def test_bad_jpeg_in_a_folder_is_one_line_without_libjpeg_text(damage, message, tmp_path):
    """libjpeg writes its own lines to stderr whatever TensorFlow's log level ("Improper call to
    JPEG library in state 201", "Bogus Huffman table definition", "Corrupt JPEG data: ..."), once
    for the parallel decode and once for the retry that names the file: only the one line shows."""
    data = tmp_path / "data"
    for c in range(2):
        (data / f"c{c}").mkdir(parents=True)
        for j in range(10):
            (data / f"c{c}" / f"{j:02d}.jpg").write_bytes(_sample_jpeg(10 * c + j))
    bad, blob = data / "c0" / "03.jpg", _sample_jpeg(3)
    if damage == "truncated":
        bad.write_bytes(blob[:len(blob) // 2])
    else:
        i = blob.index(b"\xff\xc4")  # DHT: its 16 code counts all 255
        bad.write_bytes(blob[:i + 5] + b"\xff" * 16 + blob[i + 21:])
    proc = cli("dprime_tf.search", f"--dataset=folder:{data}", "--image_size=16", "--layers=3", "--init_channels=4",
               "--batch_size=4", "--verbose=0", f"--output_dir={tmp_path / 'run'}")
    one_line_error(proc, f"cannot decode image {bad}: {message}")
    out = proc.stdout + proc.stderr
    assert out.strip().splitlines() == [f"error: cannot decode image {bad}: {message}"], out
    for libjpeg in ("JPEG library", "Huffman", "Corrupt JPEG", "Premature end"):
        assert libjpeg not in out, out


def test_oracle_binds_localhost_unless_given(capsys):
    from dprime_tf import tuning
    env = {"KERASTUNER_ORACLE_PORT": "8000"}
    assert tuning.oracle_address(env, "chief") == "127.0.0.1:8000" and env["KERASTUNER_ORACLE_IP"] == "127.0.0.1"
    assert "keras-tuner oracle listens on 127.0.0.1:8000" in capsys.readouterr().out
    assert tuning.oracle_address({"KERASTUNER_ORACLE_PORT": "8000", "KERASTUNER_ORACLE_IP": "10.0.0.2"},
                                 "tuner0") == "10.0.0.2:8000"
    assert tuning.oracle_address({}, "") is None
    with pytest.raises(UserError, match="KERASTUNER_ORACLE_PORT must be a port number"):
        tuning.oracle_address({"KERASTUNER_ORACLE_PORT": "eighty"}, "chief")


def test_best_flags_values_are_checked_against_the_space():
    from dprime_tf import tuning
    tuning.check_tuned({"rho": 0.1, "schedfreq": 10, "reg": "prox"}, tuning.SPACE)
    for bad, what in (({"rho": 50.0}, "rho=50.0"), ({"schedfreq": 2.5}, "schedfreq=2.5"),
                      ({"reg": "l1"}, "reg='l1'"), ({"rho": float("nan")}, "rho=nan"), ({"x": 1}, "x=1")):
        with pytest.raises(UserError, match="best trial: " + what.replace("(", r"\(")):
            tuning.check_tuned(bad, tuning.SPACE)


def test_non_utf8_flags_txt_on_resume_is_one_line(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "flags.txt").write_bytes(b"--seed=\xff\n")
    before = tree(run)
    one_line_error(cli("dprime_tf.search", "--resume", f"--output_dir={run}"), "is not UTF-8 text")
    assert tree(run) == before


def test_corrupt_checkpoint_index_is_one_line(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "flags.txt").write_text("--dataset=sample\n--image_size=16\n--layers=3\n--init_channels=4\n"
                                   "--batch_size=16\n--verbose=0\n")
    (run / "checkpoints" / "checkpoint").write_bytes(b"model_checkpoint_path: {{{ \xff")
    before = tree(run)
    one_line_error(cli("dprime_tf.search", "--resume", f"--output_dir={run}"), "is corrupt")
    assert tree(run) == before


# -- locks ------------------------------------------------------------------------------------
def test_second_process_on_a_locked_run_directory(tmp_path):
    """A run directory held by one process: a second search (fresh or --resume) gets one
    line, exit code 2, and changes nothing."""
    run = tmp_path / "run"
    run.mkdir()
    runlock.lock_run_dir(str(run))
    try:
        one_line_error(cli("dprime_tf.search", "--dataset=sample", "--image_size=16", "--layers=3",
                           "--init_channels=4", "--batch_size=16", "--verbose=0", f"--output_dir={run}"),
                       "is in use by another process")
        assert os.listdir(run) == []
        (run / "flags.txt").write_text("--dataset=sample\n--image_size=16\n--layers=3\n--init_channels=4\n"
                                       "--batch_size=16\n--verbose=0\n")
        before = tree(run)
        one_line_error(cli("dprime_tf.search", "--resume", f"--output_dir={run}"), "is in use by another process")
        assert tree(run) == before
        with pytest.raises(UserError, match="in use by another run of this process"):
            runlock.lock_run_dir(str(run))
    finally:
        runlock.unlock_run_dir(str(run))
    runlock.lock_run_dir(str(run))  # free again
    runlock.unlock_run_dir(str(run))


def test_export_lock_serializes(tmp_path):
    """DirLock (models.config's): a second process waits while the first holds it."""
    code = ("import sys, time; from dprime_tf.runlock import DirLock\n"
            "with DirLock(sys.argv[1]):\n    print('in', flush=True); time.sleep(1.0)\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    first = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    assert first.stdout.readline().strip() == "in"
    import time
    t = time.monotonic()
    with runlock.DirLock(tmp_path):
        waited = time.monotonic() - t
    first.wait()
    assert waited > 0.3
    with pytest.raises(UserError, match="is in use by another process"):
        holder = runlock.DirLock(tmp_path).acquire()
        try:
            runlock.DirLock(tmp_path, "run directory", blocking=False).acquire()
        finally:
            holder.release()


# -- files -------------------------------------------------------------------------------------
def test_atomic_files_are_0644_under_umask_022(tmp_path):
    from dprime_tf import atomic
    old = os.umask(0o022)
    try:
        atomic.atomic_write(tmp_path / "sub" / "a.txt", "x")
        atomic.atomic_savez(tmp_path / "b.npz", a=np.zeros(2))
        atomic.atomic_write_json(tmp_path / "c.json", {})
    finally:
        os.umask(old)
    for name in ("sub/a.txt", "b.npz", "c.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
    assert stat.S_IMODE(os.stat(tmp_path / "sub").st_mode) == 0o755


def test_stale_temporaries_are_removed(tmp_path):
    run = tmp_path
    (run / "checkpoints" / "ckpt-3_temp").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-3_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    stale = [".tmp-history.csv-0a1b2c3d", "plots/.tmp-schedule.png-deadbeef", ".model.keras.tmp.keras",
             "checkpoints/checkpoint.tmp" + "0123456789abcdef" * 2]
    for name in stale:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(b"partial")
    (run / ".old-summary.json-01234567").write_text("{}")  # a commit's backup whose destination is gone
    (run / "history.csv").write_text("step\n")
    (run / ".tmpx-keep").write_text("not ours")
    removed = runlock.remove_stale_temporaries(str(run))
    assert len(removed) == 6
    assert sorted(p for p, v in tree(run).items() if v is not None) == [
        ".tmpx-keep", "history.csv", "summary.json"]


# -- runs: resume checks and kill points (slow) ---------------------------------------------
class Kill(Exception):
    """Stands for SIGKILL: nothing after the raise runs."""


def killer(at_step=None, at_epoch_end=None):
    import keras

    class Killer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if at_step is not None and int(self.model.search_step.numpy()) == at_step:
                raise Kill(f"step {at_step}")

        def on_epoch_end(self, epoch, logs=None):  # after StepCheckpoint: the checkpoint is written
            if at_epoch_end is not None and epoch + 1 == at_epoch_end:
                raise Kill(f"end of epoch {at_epoch_end}")
    return Killer()


def search(cfg, callbacks=()):
    from dprime_tf.search_job import run_search
    return run_search(cfg, flags_text="--dataset=sample\n", extra_callbacks=list(callbacks))


def killed(cfg, **where):
    with pytest.raises(Kill):
        search(cfg, [killer(**where)])


def assert_same_run(a, b):
    from dprime_tf import runs
    ha, hb = runs.read_history(os.path.join(a, "history.csv")), runs.read_history(os.path.join(b, "history.csv"))
    assert list(ha["step"]) == list(hb["step"]) == list(range(len(hb["step"])))
    for col in ("alpha_step", "alpha_steps", "tau", "fi_ewma", "batch_loss", "lr"):
        np.testing.assert_allclose(ha[col], hb[col], rtol=1e-5, atol=1e-7, err_msg=col)
    for name in ("alphas.npz", "alpha_history.npz", "alphas_initial.npz"):
        fa, fb = np.load(os.path.join(a, name)), np.load(os.path.join(b, name))
        assert sorted(fa.files) == sorted(fb.files)
        for key in fa.files:
            np.testing.assert_allclose(fa[key], fb[key], rtol=0, atol=1e-5, err_msg=f"{name}:{key}")
    for name in ("genotype.json", "genotypes/epoch_001.json", "genotypes/epoch_002.json"):
        assert open(os.path.join(a, name)).read() == open(os.path.join(b, name)).read(), name
    da, db = (json.load(open(os.path.join(d, "decisiveness.json"))) for d in (a, b))
    assert [m["epoch"] for m in da] == [m["epoch"] for m in db] == [1, 2]
    sa, sb = (json.load(open(os.path.join(d, "summary.json"))) for d in (a, b))
    assert sa["steps"] == sb["steps"] and sa["alpha_steps"] == sb["alpha_steps"]
    assert sa["genotype"] == sb["genotype"] and "val_accuracy" in sa


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reference") / "run")
    cfg = SearchConfig(output_dir=out, epochs=2, steps_per_epoch=5, checkpoint_every=3, **TINY)
    old = os.umask(0o022)
    try:
        search(cfg)
    finally:
        os.umask(old)
    return cfg, out


@pytest.mark.slow
def test_run_directory_modes_and_record(reference):
    _, out = reference
    for d, dirs, files in os.walk(out):
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode) == 0o644, os.path.join(d, name)
        for name in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode) == 0o755, os.path.join(d, name)
    record = json.load(open(os.path.join(out, "run.json")))
    assert record["kind"] == "search" and record["created_with"]["dprime_tf"]
    assert record["created_with"]["tensorflow"] and record["settings"]["batch_size"] == 16
    assert all(len(v) == 2 for v in record["variables"]) and len(record["variables"]) > 50


@pytest.mark.slow
def test_every_kill_point_resumes(reference, tmp_path):
    """One run killed at each kill point in turn and resumed each time ends as the uninterrupted one:
    (1) before its first checkpoint, (2) between an epoch-end checkpoint and that epoch's files
    (the files deleted: the order of a run made before the files came first), (3) mid-epoch past
    a checkpoint, (4) after the last checkpoint, before the final files."""
    ref_cfg, ref = reference
    out = str(tmp_path / "run")
    cfg = dataclasses.replace(ref_cfg, output_dir=out)
    resume = dataclasses.replace(cfg, resume=True)

    killed(cfg, at_step=2)  # (1) checkpoints every 3 steps: none yet
    assert not runlock.has_checkpoint_index(out) and os.path.exists(os.path.join(out, "history.csv"))
    killed(resume, at_epoch_end=1)  # the restart, killed at the end of epoch 1 (checkpoint 5 written)
    from dprime_tf import runs
    assert runs.latest_checkpoint(os.path.join(out, "checkpoints")).endswith("ckpt-5")
    assert list(runs.read_history(os.path.join(out, "history.csv"))["step"]) == [0, 1, 2, 3, 4]
    os.remove(os.path.join(out, "genotypes", "epoch_001.json"))  # (2)
    os.remove(os.path.join(out, "decisiveness.json"))
    os.remove(os.path.join(out, "alpha_history.npz"))
    killed(resume, at_step=7)  # (3) last checkpoint at step 6
    assert runs.latest_checkpoint(os.path.join(out, "checkpoints")).endswith("ckpt-6")
    assert os.path.exists(os.path.join(out, "genotypes", "epoch_001.json"))  # rewritten by the resume
    killed(resume, at_epoch_end=2)  # (4) checkpoint 10 written, no genotype.json / summary.json
    assert not os.path.exists(os.path.join(out, "genotype.json"))
    search(resume)  # writes the missing final files
    assert_same_run(out, ref)
    with pytest.raises(UserError, match="already finished its 2 epochs"):
        search(resume)
    record = json.load(open(os.path.join(out, "run.json")))
    assert len(record["resumed_with"]) >= 3 and record["created_with"]["tensorflow"]


@pytest.mark.slow
def test_resume_checks(reference, tmp_path):
    """A changed flag that changes the network/data/streams, another network behind the
    checkpoint, a corrupt checkpoint: one line each, and flags.txt keeps the run's flags."""
    ref_cfg, ref = reference
    out = str(tmp_path / "run")
    shutil.copytree(ref, out)
    for name in ("genotype.json", "summary.json"):
        os.remove(os.path.join(out, name))
    flags_before = open(os.path.join(out, "flags.txt")).read()
    resume = dataclasses.replace(ref_cfg, output_dir=out, resume=True)
    for change, message in ((dict(batch_size=8), "--batch_size=8 differs from the run's --batch_size=16"),
                            (dict(seed=6), "--seed=6 differs from the run's --seed=5"),
                            (dict(init_channels=6), "--init_channels=6 differs"),
                            (dict(split="half"), "--split=half differs")):
        with pytest.raises(UserError, match=message):
            from dprime_tf.search_job import run_search
            run_search(dataclasses.replace(resume, **change), flags_text="--changed\n")
        assert open(os.path.join(out, "flags.txt")).read() == flags_before
    # Another network behind the same settings (the record's variables differ): named.
    record = json.load(open(os.path.join(out, "run.json")))
    record["variables"][3][1] = [99]
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump(record, f)
    with pytest.raises(UserError, match=r"written for another network \(variable #3 is"):
        search(resume)
    record["variables"][3][1] = json.load(open(os.path.join(ref, "run.json")))["variables"][3][1]
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump(record, f)
    # A damaged checkpoint: one line, nothing rewritten.
    ckpt = os.path.join(out, "checkpoints")
    for name in os.listdir(ckpt):
        if name.endswith(".index"):
            with open(os.path.join(ckpt, name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(UserError, match="does not fit this run"):
        search(resume)
    assert open(os.path.join(out, "flags.txt")).read() == flags_before
    assert not os.path.exists(os.path.join(out, "genotype.json"))


def _tiny_saved_network(tmp_path):
    """A 3-cell, 4-channel DARTS_V2 network saved as tmp_path/model.keras."""
    import keras

    from dprime_tf.spaces.cnn.genotype import DARTS_V2
    from dprime_tf.spaces.cnn.network import build_cifar_network
    model = build_cifar_network(DARTS_V2, init_channels=4, layers=3, auxiliary=False)
    model(np.zeros((1, 32, 32, 3), np.float32))
    path = tmp_path / "model.keras"
    model.save(str(path))
    keras.backend.clear_session()
    return path


@pytest.mark.slow
def test_concurrent_export_keeps_both_models_config_entries(tmp_path, monkeypatch):
    """models.config is re-read under the base directory's lock at commit: an entry another
    export added while this one was converting is kept."""
    from export import layout, pipeline, saved_model
    path = _tiny_saved_network(tmp_path)
    base = tmp_path / "exports"
    real_load = saved_model.load

    def load_while_another_export_commits(p):
        other = layout.models_config_text(layout.read_models_config(str(base / "models.config")), "other",
                                          str(base / "other"))
        (base / "models.config").write_text(other)
        return real_load(p)

    monkeypatch.setattr(saved_model, "load", load_while_another_export_commits)
    pipeline.export_model(str(path), str(base), "mine", 1, fresh_process_check=False, log=lambda s: None)
    text = (base / "models.config").read_text()
    assert 'name: "other"' in text and 'name: "mine"' in text


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_two_export_processes_at_once_keep_both_models_config_entries(tmp_path):
    """Two `python -m export` processes into one --export_base, started together with different
    --name: each read models.config before converting, and each re-reads it under the base
    directory's lock at commit, so both entries (and the one already there) are in it."""
    from export import layout
    path = _tiny_saved_network(tmp_path)
    base = tmp_path / "exports"
    base.mkdir()
    (base / "models.config").write_text(layout.models_config_text(None, "other", "/srv/models/other"))
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    procs = {name: subprocess.Popen([sys.executable, "-m", "export", f"--model={path}", f"--export_base={base}",
                                     f"--name={name}", "--version=1", "--parity_images=2",
                                     "--nofresh_process_check"],
                                    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("first", "second")}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (name, err[-2000:])
    text = (base / "models.config").read_text()
    config = layout.validate_models_config(text)
    assert sorted(c.name for c in config.model_config_list.config) == ["first", "other", "second"], text
    for name in ("first", "second"):
        assert (base / name / "1" / "saved_model.pb").is_file()
        assert f"base_path: \"{base / name}\"" in text, text


@pytest.mark.slow
def test_training_killed_before_its_first_checkpoint_starts_over(tmp_path):
    """--resume on a training run killed before its first checkpoint runs it from step 0 in the
    same directory and ends as an uninterrupted run; a changed --layers on resume is one line."""
    import keras

    from dprime_tf import runs
    from dprime_tf.train_job import run_training

    class KillAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.step.numpy()) == 2:
                raise Kill("step 2")

    tiny = dict(genotype="DARTS_V2", dataset="sample", image_size=16, init_channels=4, layers=3, batch_size=16,
                epochs=1, steps_per_epoch=4, cutout=0, drop_path_prob=0.0, auxiliary=False, val_fraction=0.1,
                checkpoint_every=3, deterministic=True, verbose=0)
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    run_training(TrainConfig(output_dir=whole, **tiny), flags_text="--dataset=sample\n")
    with pytest.raises(Kill):
        run_training(TrainConfig(output_dir=cut, **tiny), flags_text="--dataset=sample\n",
                     extra_callbacks=[KillAt()])
    assert not runlock.has_checkpoint_index(cut)
    with pytest.raises(UserError, match="no checkpoint"):  # not a run directory: still an error
        run_training(TrainConfig(output_dir=str(tmp_path / "nothing"), resume=True, **tiny))
    run_training(TrainConfig(output_dir=cut, resume=True, **{**tiny, "genotype": None}),
                 flags_text="--dataset=sample\n")
    a, b = (runs.read_history(os.path.join(d, "history.csv")) for d in (cut, whole))
    assert list(a["step"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    assert json.load(open(os.path.join(cut, "summary.json")))["steps"] == 4
    with pytest.raises(UserError, match="--layers=4 differs from the run's --layers=3"):
        run_training(TrainConfig(output_dir=cut, resume=True, **{**tiny, "genotype": None, "layers": 4,
                                                                    "epochs": 2}))

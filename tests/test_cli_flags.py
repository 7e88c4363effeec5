"""Flag plumbing read before TensorFlow starts (dprime_tf.cli)."""

from dprime_tf.cli import deterministic_requested


def test_deterministic_is_found_in_argv_flagfiles_and_a_resumed_runs_flags(tmp_path):
    flagfile = tmp_path / "f.flags"
    flagfile.write_text("--seed=3\n--deterministic\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "flags.txt").write_text("--deterministic\n--seed=3\n")
    assert not deterministic_requested(["prog"])
    assert deterministic_requested(["prog", "--deterministic"])
    assert not deterministic_requested(["prog", "--deterministic", "--nodeterministic"])  # the last one wins
    assert deterministic_requested(["prog", f"--flagfile={flagfile}"])
    assert not deterministic_requested(["prog", f"--flagfile={flagfile}", "--deterministic=false"])
    assert deterministic_requested(["prog", "--resume", f"--output_dir={run}"])  # flags.txt of the run
    assert not deterministic_requested(["prog", "--resume", f"--output_dir={run}", "--nodeterministic"])
    assert not deterministic_requested(["prog", f"--output_dir={run}"])  # not resuming: its flags do not count
    assert not deterministic_requested(["prog", "--flagfile=/no/such.flags"])  # the real parse reports it


def test_a_corrupt_flags_txt_on_resume_is_one_line(tmp_path):
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "flags.txt").write_text("--no_such_flag=1\n")
    proc = subprocess.run([sys.executable, "-m", "dprime_tf.search", "--resume", f"--output_dir={tmp_path}"],
                          cwd=root, env=dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3"),
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: {tmp_path / 'flags.txt'}: ") and "no_such_flag" in lines[0]

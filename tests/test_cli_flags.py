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

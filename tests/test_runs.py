"""Run-directory plumbing shared by the search and training jobs."""

from dprime_tf import runs


def test_fit_segments_continue_a_run_from_any_step():
    assert runs.fit_segments(0, 10, 3) == [(0, 3, 10)]  # a fresh run: one fit() of all epochs
    assert runs.fit_segments(10, 10, 3) == [(1, 3, 10)]  # resumed at an epoch boundary
    assert runs.fit_segments(14, 10, 3) == [(1, 2, 6), (2, 3, 10)]  # mid-epoch 1: its 6 remaining steps first
    assert runs.fit_segments(24, 10, 3) == [(2, 3, 6)]  # mid-way through the last epoch
    assert runs.fit_segments(14, 10, 2) == [(1, 2, 6)]  # Hyperband-style stop after epoch 2
    assert runs.fit_segments(30, 10, 3) == []


def test_atomic_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "a" / "x.json"
    runs.atomic_write_json(str(path), {"k": 1})
    assert path.read_text() == '{\n  "k": 1\n}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]  # no temporary file left

"""dprime-bench's own checks (its timings are figures to read, not assertions)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_batch_that_does_not_split_among_the_replicas_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "dprime_tf.bench", "--replicas=2", "--batch_size=15"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines == ["error: --batch_size=15 does not split evenly among --replicas=2"], \
        proc.stderr[-2000:]

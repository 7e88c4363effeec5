import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests (still run in CI)")
    config.addinivalue_line("markers", "golden: parity with golden data recorded from the official code")


@pytest.fixture(scope="session", autouse=True)
def _graph_optimizer_as_the_commands_set_it():
    """In-process tests trace steps with the graph-optimizer settings the
    command lines use (fast_paths.configure_graph_optimizer)."""
    from dprime_tf import fast_paths
    fast_paths.configure_graph_optimizer()


@pytest.fixture(scope="module", autouse=True)
def _report_memory_after_each_file():
    """DPRIME_TEST_RSS=1: print this worker's resident memory after each test file
    (a worker runs many files in one process and TensorFlow's memory only grows)."""
    yield
    if os.environ.get("DPRIME_TEST_RSS"):
        import resource
        with open("/proc/self/status") as f:
            rss = next(line.split()[1] for line in f if line.startswith("VmRSS"))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"\n[rss after file: {int(rss) / 1e6:.2f} GB, peak {peak / 1e6:.2f} GB]")

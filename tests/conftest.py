import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


# Test files by their time in the suite, longest first (measured with `make test
# ARGS=--durations=0`). `make test` runs files in this order (--no-loadscope-reorder):
# the two workers start with the long ones and end with short ones, so neither
# waits long for the other at the end; xdist's own order (by number of tests)
# left one worker 1-2 minutes alone with a long file. Only the order, not what runs.
LONGEST_FIRST = ("test_multiworker", "test_decisiveness", "test_fast_paths", "test_reliability", "test_searcher",
                 "test_guard", "test_tune", "test_rnn", "test_search_cli", "test_golden_trajectory", "test_train",
                 "test_study", "test_report", "test_export", "test_supernet", "test_networks_cnn")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: a file's tests keep their order


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests (still run in CI)")
    config.addinivalue_line("markers", "golden: parity with golden data recorded from the official code")


@pytest.fixture(scope="session", autouse=True)
def _graph_optimizer_as_the_commands_set_it():
    """In-process tests trace steps with the graph-optimizer and garbage-collector
    settings the command lines use (fast_paths.configure_graph_optimizer,
    cli.settle_garbage_collector)."""
    from dprime_tf import cli, fast_paths
    fast_paths.configure_graph_optimizer()
    cli.settle_garbage_collector()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """DPRIME_TEST_CPU=FILE: append each test's CPU seconds (this worker's, then the
    subprocesses it waited for) and wall seconds, its fixtures' set-up and tear-down
    included, to FILE, then its start (Unix time) and the xdist worker that ran it, a
    timeline of the two workers. Under `-n 2` a test's wall time depends on what the
    other worker runs meanwhile; its CPU time does not."""
    path = os.environ.get("DPRIME_TEST_CPU")
    if not path:
        yield
        return
    import resource
    import time

    def cpu():
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime, time.time()

    before = cpu()
    yield
    after = cpu()
    with open(path, "a") as f:  # one short line per write: the workers' lines do not interleave
        f.write(" ".join(f"{b - a:.2f}" for a, b in zip(before, after))
                + f" {before[2]:.1f} {os.environ.get('PYTEST_XDIST_WORKER', 'main')} {item.nodeid}\n")


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

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Grappler off in the tests' searches (in-process and their subprocesses): at the
# tests' tiny sizes it is a third of each step's start-up and buys nothing; the
# float32 golden tests pass both ways (dprime_tf.fast_paths.configure_graph_optimizer).
os.environ.setdefault("DPRIME_GRAPPLER", "0")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests (still run in CI)")
    config.addinivalue_line("markers", "golden: parity with golden data recorded from the official code")


# Test files by their measured cost (seconds of one CI run), most expensive first:
# pytest-xdist (--dist loadfile) hands files to its workers in collection order,
# so starting the long end-to-end files first keeps both workers busy to the end
# instead of leaving one long file running alone.
HEAVY_FIRST = ("test_multiworker.py", "test_tune.py", "test_golden_trajectory.py", "test_study.py",
               "test_reliability.py", "test_search_cli.py", "test_searcher.py", "test_train.py",
               "test_decisiveness.py", "test_rnn.py", "test_guard.py", "test_report.py", "test_fast_paths.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))  # stable: order within a file kept

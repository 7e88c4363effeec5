"""Choosing the tf.distribute strategy from a flag.

Several hosts (or processes) use MultiWorkerMirroredStrategy, configured the
standard way through the TF_CONFIG environment variable, e.g. on worker 1 of 2:

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 1}}'

Worker 0 (or a task of type "chief") is the chief: it writes the run
directory. A worker that dies stops the others: a closed connection fails the
pending collective at once; a silent one (a frozen process, a host off the
network) is caught by the coordination service's heartbeats after
`worker_timeout` seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import tensorflow as tf

from dprime_tf.errors import UserError
from dprime_tf.tf_config import listening_line, read_tf_config  # noqa: F401  (re-exported)

from dprime_tf.constants import STRATEGIES  # noqa: F401  (re-exported)

# What a lost worker looks like from the others: a collective aborted, the
# peer unreachable, the coordination service reporting missed heartbeats.
WORKER_FAILURES = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
                   tf.errors.CancelledError, tf.errors.InternalError)
_LOST_WORKER_HINTS = ("heartbeat", "unhealthy", "coordination", "socket closed", "collective ops is aborted",
                      "connection", "unavailable")


def make_strategy(name: str, cpu_devices: int = 0, worker_timeout: float = 60) -> tf.distribute.Strategy:
    """auto: MirroredStrategy when several GPUs are visible, else the default (one device).

    `cpu_devices` > 1 splits the CPU into that many logical devices (to run
    the multi-replica code path on a CPU-only machine; must be called before
    TensorFlow initializes its devices). `worker_timeout` (multi_worker):
    seconds without a heartbeat before a worker counts as lost; the wait for
    all workers to join at start-up is bounded by 10x that (then the process
    exits with a one-line error).
    """
    if name == "multi_worker":
        # Must exist before any other op ("collective ops must be configured at program startup").
        tf_config = read_tf_config()
        print(listening_line(tf_config), flush=True)
        _configure_coordination_service(tf_config, worker_timeout)
        joined = _kill_unless_done(10 * worker_timeout,
                                   f"not all workers of TF_CONFIG's cluster {tf_config['cluster']} joined within "
                                   f"{10 * worker_timeout:g} s (10 x --worker_timeout): start every worker, check "
                                   "the addresses and that the ports are reachable")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        joined()
        return strategy
    if cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
        except RuntimeError as e:
            raise UserError(f"--cpu_devices must be set before TensorFlow starts: {e}") from None
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name in ("auto", "default"):
        return tf.distribute.get_strategy()
    raise UserError(f"unknown --strategy '{name}' (use one of {', '.join(STRATEGIES)})")


def _configure_coordination_service(tf_config: dict, worker_timeout: float) -> None:
    """What MultiWorkerMirroredStrategy configures itself, with our heartbeat and join timeouts."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    if worker_timeout <= 0:
        raise UserError("--worker_timeout must be > 0 seconds")
    cluster = tf_config["cluster"]
    spec = tf.train.ClusterSpec(cluster)
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
            for job in ("chief", "worker") if job in cluster]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        heartbeat_timeout_in_ms=int(worker_timeout * 1000),
        coordinated_jobs=jobs)


_WATCHDOG = """
import os, select, signal, sys
fd, pid, seconds, message = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ready, _, _ = select.select([fd], [], [], seconds)  # readable: done, or the parent is gone (EOF)
if not ready:
    print("error: " + message, file=sys.stderr, flush=True)
    os.kill(pid, signal.SIGKILL)
"""


def _kill_unless_done(seconds: float, message: str):
    """Kills this process with `error: message` on stderr unless the returned `done()` is called in time.

    Joining the cluster blocks inside TensorFlow with no timeout of its own (a
    missing worker is retried forever), holding the GIL and ignoring SIGTERM,
    so the watchdog is a separate (tiny, TensorFlow-free) process.
    """
    read_end, write_end = os.pipe()
    subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(read_end), str(os.getpid()), str(seconds), message],
                     pass_fds=(read_end,), stdin=subprocess.DEVNULL)
    os.close(read_end)

    def done():
        os.write(write_end, b"1")
        os.close(write_end)
    return done


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._num_workers > 1  # noqa: SLF001


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                            and "chief" not in resolver.cluster_spec().as_dict())


@contextlib.contextmanager
def output_dirs(strategy: tf.distribute.Strategy, output_dir: str, resume: bool):
    """(chief, run_dir, worker_dir) for a job writing `output_dir`.

    Only the chief writes the run directory. The other workers take part in every
    collective (checkpoint saves included) but write to a private scratch
    directory, removed at the end. Its name is fixed by the run directory and the
    task, so a worker restarted with --resume after a crash (SIGKILL leaves no
    chance to clean up) replaces the scratch of its dead predecessor."""
    from dprime_tf import runs
    chief = is_chief(strategy)
    if chief:
        run_dir = runs.prepare_run_dir(output_dir, resume)  # takes the run directory's lock
        try:
            yield True, run_dir, None
        finally:
            runs.release_run_dir(run_dir)
        return
    run_dir = os.path.abspath(output_dir)
    resolver = strategy.cluster_resolver
    key = hashlib.sha1(run_dir.encode()).hexdigest()[:12]
    worker_dir = os.path.join(tempfile.gettempdir(),
                              f"dprime-worker-{key}-{resolver.task_type}{resolver.task_id}")
    shutil.rmtree(worker_dir, ignore_errors=True)
    os.makedirs(worker_dir)
    try:
        yield False, run_dir, worker_dir
    finally:
        shutil.rmtree(worker_dir, ignore_errors=True)


def is_worker_failure(error: Exception) -> bool:
    """Whether `error` (raised in a multi-worker run) says that another worker is gone."""
    if isinstance(error, (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError)):
        return True
    return isinstance(error, WORKER_FAILURES) and any(h in str(error).lower() for h in _LOST_WORKER_HINTS)


def worker_failure_message(error: Exception) -> str:
    """One line for a lost worker: what happened and how to go on."""
    detail = str(getattr(error, "message", error)).strip().splitlines()
    detail = detail[0] if detail else type(error).__name__
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return (f"lost contact with another worker of the cluster ({type(error).__name__}: {detail}); stopping. "
            "Restart all workers with --resume and the same --output_dir to continue from the last checkpoint")

"""TF_CONFIG (the standard cluster description of MultiWorkerMirroredStrategy),
read and checked without TensorFlow: a command line rejects a bad one in one
line before TensorFlow's start-up. dprime_tf.distribute re-exports these."""

from __future__ import annotations

import json
import os

from dprime_tf.errors import UserError


def read_tf_config() -> dict:
    """TF_CONFIG, checked: {"cluster": {job: [host:port, ...]}, "task": {"type": job, "index": i}}."""
    raw = os.environ.get("TF_CONFIG", "")
    if len(raw) > 1 << 20:
        raise UserError(f"TF_CONFIG is {len(raw)} characters long: more than 1 MiB is not a cluster description")
    if not raw.strip():
        raise UserError("--strategy=multi_worker needs TF_CONFIG, e.g. TF_CONFIG='{\"cluster\": {\"worker\": "
                        "[\"host0:port\", \"host1:port\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}' "
                        "(see BUILD.md, Several hosts)")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"TF_CONFIG is not valid JSON: {e}") from None
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster or not isinstance(task, dict):
        raise UserError("TF_CONFIG needs a \"cluster\" ({job: [host:port, ...]}) and a \"task\" "
                        "({\"type\": job, \"index\": i})")
    unknown = set(cluster) - {"chief", "worker"}
    if unknown:
        raise UserError(f"TF_CONFIG: jobs {sorted(unknown)} are not used by MultiWorkerMirroredStrategy "
                        "(use \"chief\" and/or \"worker\")")
    if len(cluster.get("chief", [])) > 1:
        raise UserError("TF_CONFIG: at most one chief")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise UserError(f"TF_CONFIG: task {task} is not in the cluster {cluster}")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise UserError(f"TF_CONFIG: cluster job '{job}' must be a list of \"host:port\" strings")
        for address in addresses:
            port = address.rpartition(":")[2]
            if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
                raise UserError(f"TF_CONFIG: {address!r} in cluster job '{job}' needs a port number in 1-65535 "
                                f"after the last ':', got {port!r}")
    return config


def listening_line(tf_config: dict) -> str:
    """The line a multi-worker start prints: the port this task's gRPC server opens."""
    task = tf_config["task"]
    address = tf_config["cluster"][task["type"]][task.get("index", 0)]
    port = address.rpartition(":")[2]
    return (f"multi-worker: {task['type']} {task.get('index', 0)} listens on port {port} ({address}; TensorFlow's "
            "gRPC server binds every interface, unauthenticated: keep the cluster on a private network)")

"""The official search loop's golden trajectories (40 steps on a tiny supernet).

The originals live in ../shared/data/reference/trajectory_{prox,darts,admm}.npz
(their README describes the arrays). The shipped copies in tests/data/ hold
the same arrays except the `q:` weights after the run (unused here), with the
normalized images stored as their uint8 pixels plus the normalization
constants: `x = (uint8 / 255 - mean) / std` in float32 gives the original
arrays bit for bit (`compact` checks that before writing).

`python tests/trajectory_golden.py SRC.npz DST.npz` writes a compact copy.
"""

import os
import sys

import numpy as np

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
KINDS = ("prox", "darts", "admm")
# CIFAR-10's normalization as the official utils.py applies it (torchvision Normalize).
CIFAR_MEAN = np.array([0.49139968, 0.48215827, 0.44653124], np.float32)
CIFAR_STD = np.array([0.24703233, 0.24348505, 0.26158768], np.float32)


def trajectory_paths():
    """The file DPRIME_TRAJECTORY_NPZ names when set (only that one), else every shipped golden."""
    path = os.environ.get("DPRIME_TRAJECTORY_NPZ")
    paths = [path] if path else [os.path.join(DATA, f"trajectory_{k}.npz") for k in KINDS]
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"golden trajectory {p} is missing")
    return [os.path.abspath(p) for p in paths]


def _decode(u8, mean, std):
    """uint8 NCHW pixels -> the normalized float32 images, with torchvision's float32 ops."""
    x = u8.astype(np.float32) / np.float32(255)
    return (x - mean[None, :, None, None]) / std[None, :, None, None]


def load_trajectory(path):
    """The golden as a dict of arrays (images float32 NCHW, either file form) plus `cfg`,
    its `config` strings parsed to numbers where they are numbers."""
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    for name in ("x_weight", "x_alpha"):
        if name + "_u8" in data:
            data[name] = _decode(data.pop(name + "_u8"), data["x_mean"], data["x_std"])
    cfg = {}
    for item in data["config"]:
        key, value = str(item).split("=", 1)
        try:
            cfg[key] = int(value)
        except ValueError:
            try:
                cfg[key] = float(value)
            except ValueError:
                cfg[key] = value
    data["cfg"] = cfg
    return data


def compact(src, dst):
    """Writes the compact copy of a golden trajectory (see the module docstring)."""
    with np.load(src) as f:
        data = {k: f[k] for k in f.files if not k.startswith("q:")}
    out = {k: v for k, v in data.items() if k not in ("x_weight", "x_alpha")}
    for name in ("x_weight", "x_alpha"):
        x = data[name]
        pixels = (x * CIFAR_STD[None, :, None, None] + CIFAR_MEAN[None, :, None, None]) * 255
        u8 = np.round(pixels).astype(np.uint8)
        if not np.array_equal(_decode(u8, CIFAR_MEAN, CIFAR_STD), x):
            raise ValueError(f"{src}: {name} is not CIFAR-normalized uint8 pixels; ship it as it is")
        out[name + "_u8"] = u8
    out["x_mean"], out["x_std"] = CIFAR_MEAN, CIFAR_STD
    np.savez_compressed(dst, **out)


if __name__ == "__main__":
    compact(sys.argv[1], sys.argv[2])

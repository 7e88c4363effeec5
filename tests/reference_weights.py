"""Loads the reference implementation's supernet weights into a SearchNetwork.

The reference names weights per edge and op (PyTorch layouts); our
MixedEdges groups the edges leaving one state, so each reference tensor maps
to one slice of a grouped variable. Used by the parity tests.
"""

import os
import re

import numpy as np

from dprime_tf.spaces.cnn.supernet import CONV_OPS, OP, STEPS
from dprime_tf.spaces.primitives import CNN_PRIMITIVES

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "supernet_step.npz")


def reference_path():
    """The golden step: the file named by DPRIME_REFERENCE_NPZ when set, else the shipped copy
    (tests/data/supernet_step.npz, ../shared/data/reference/supernet_step.npz recompressed)."""
    path = os.environ.get("DPRIME_REFERENCE_NPZ") or SHIPPED
    if not os.path.isfile(path):
        raise FileNotFoundError(f"golden reference {path} is missing")
    return os.path.abspath(path)


def _edge_to_group(edge):
    """Reference edge index -> (source state j, position within MixedEdges j)."""
    e = 0
    for node in range(STEPS):
        for j in range(2 + node):
            if e == edge:
                return j, node - max(0, j - 1)
            e += 1
    raise ValueError(edge)


def _hwio(w):  # OIHW -> HWIO
    return np.transpose(w, (2, 3, 1, 0))


def _dw(w):  # (C, 1, k, k) -> (k, k, C)
    return np.transpose(w[:, 0], (1, 2, 0))


def _pw(w):  # (Cout, Cin, 1, 1) -> (Cin, Cout)
    return w[:, :, 0, 0].T


def reference_targets(model, prefix="p:", data=None):
    """Yields (variable, index or None, numpy value) assignments for every weight
    (from `data`, an npz with the golden's names, else the golden step)."""
    data = np.load(reference_path()) if data is None else data
    out = []
    for key in (data.files if hasattr(data, "files") else list(data)):
        if not key.startswith(prefix):
            continue
        name, w = key[len(prefix):], data[key]
        if name == "stem.0.weight":
            out.append((model.stem_kernel, None, _hwio(w)))
        elif name == "stem.1.weight":
            out.append((model.stem_bn["gamma"], None, w))
        elif name == "stem.1.bias":
            out.append((model.stem_bn["beta"], None, w))
        elif name == "classifier.weight":
            out.append((model.classifier_kernel, None, w.T))
        elif name == "classifier.bias":
            out.append((model.classifier_bias, None, w))
        elif m := re.fullmatch(r"cells\.(\d+)\.preprocess(\d)\.op\.1\.weight", name):
            cell = model.cells[int(m[1])]
            pre = cell.preprocess0 if m[2] == "0" else cell.preprocess1
            out.append((pre.kernel, None, _hwio(w)))
        elif m := re.fullmatch(r"cells\.(\d+)\.preprocess0\.conv_(\d)\.weight", name):
            pre = model.cells[int(m[1])].preprocess0
            out.append((pre.conv_1 if m[2] == "1" else pre.conv_2, None, _hwio(w)))
        elif m := re.fullmatch(r"cells\.(\d+)\._ops\.(\d+)\._ops\.(\d+)\.(.+)\.weight", name):
            cell, edge, op, rest = model.cells[int(m[1])], int(m[2]), int(m[3]), m[4]
            j, pos = _edge_to_group(edge)
            group = cell.edges[j]
            opname = CNN_PRIMITIVES[op]
            c = group.channels
            if opname == "skip_connect":
                conv = group.reduce.conv_1 if rest == "conv_1" else group.reduce.conv_2
                half = c // 2
                out.append((conv, (slice(None), slice(None), slice(None), slice(pos * half, (pos + 1) * half)), _hwio(w)))
                continue
            kern = group.kernels[opname]
            i = int(rest.split(".")[1])
            if i == 1:
                out.append((kern["dw1"], (slice(None), slice(None), slice(pos * c, (pos + 1) * c), 0), _dw(w)))
            elif i == 2:
                out.append((kern["pw1"], (pos, 0, 0), _pw(w)))
            elif i == 5:
                out.append((kern["dw2"], (slice(None), slice(None), slice(pos * c, (pos + 1) * c), 0), _dw(w)))
            elif i == 6:
                out.append((kern["pw2"], (pos, 0, 0), _pw(w)))
            else:
                raise KeyError(name)
        else:
            raise KeyError(f"unmapped reference weight {name}")
    return out


def load_reference(model, data=None):
    """Assigns all reference weights and alphas (from `data`, else the golden step);
    returns the npz data."""
    data = np.load(reference_path()) if data is None else data
    values = {id(v): v.numpy() for v in model.trainable_weights}
    covered = {id(v): np.zeros(v.shape, bool) for v in model.trainable_weights}
    for var, index, value in reference_targets(model, "p:", data):
        if index is None:
            values[id(var)] = value
            covered[id(var)][...] = True
        else:
            values[id(var)][index] = value
            covered[id(var)][index] = True
    missing = [v.path for v in model.trainable_weights if not covered[id(v)].all()]
    assert not missing, f"weights the reference does not set: {missing[:5]}"
    for v in model.trainable_weights:
        v.assign(values[id(v)])
    model.alpha_normal.assign(data["alphas_normal"])
    model.alpha_reduce.assign(data["alphas_reduce"])
    return data


def nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))

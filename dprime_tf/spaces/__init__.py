"""The search spaces, by name: each says what its data, supernet, genotype and
final network are (see dprime_tf.spaces.base.SearchSpace).

    space = spaces.for_dataset("ptb_sample")     # the space whose data that is
    space = spaces.get("cnn")

A new space: a module with a SearchSpace subclass, and a `register(...)` line below.
"""

from __future__ import annotations

from dprime_tf.errors import UserError
from dprime_tf.spaces.base import SearchData, SearchSpace  # noqa: F401

_SPACES: dict[str, SearchSpace] = {}


def register(space: SearchSpace) -> SearchSpace:
    _SPACES[space.name] = space
    return space


def get(name: str) -> SearchSpace:
    if name not in _SPACES:
        raise UserError(f"unknown search space {name!r} (use one of {', '.join(_SPACES)})")
    return _SPACES[name]


def registered() -> list[SearchSpace]:
    return list(_SPACES.values())


def for_dataset(spec) -> SearchSpace:
    """The space whose data `spec` (a --dataset value) names; the image space by default
    (its loader reports an unknown dataset in one line)."""
    for space in _SPACES.values():
        if space.name != "cnn" and space.accepts_dataset(spec):
            return space
    return _SPACES["cnn"]


def for_genotype(spec) -> SearchSpace:
    """The space of a genotype file or run directory (by its JSON keys); the image space
    for a published name (DARTS_V2 names a cell in both: a text --dataset picks the
    recurrent one) or anything unreadable (its loader reports the problem)."""
    import json
    import os
    path = os.path.join(spec, "genotype.json") if spec and os.path.isdir(spec) else spec
    if path and os.path.isfile(path) and os.path.getsize(path) <= 1 << 20:  # larger: its loader says so
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = None
        for space in _SPACES.values():
            if space.is_genotype(data):
                return space
    return _SPACES["cnn"]


from dprime_tf.spaces.cnn import CNNSpace  # noqa: E402
from dprime_tf.spaces.rnn import RNNSpace  # noqa: E402

register(CNNSpace())
register(RNNSpace())

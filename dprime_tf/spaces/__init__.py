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


from dprime_tf.spaces.cnn import CNNSpace  # noqa: E402
from dprime_tf.spaces.rnn import RNNSpace  # noqa: E402

register(CNNSpace())
register(RNNSpace())

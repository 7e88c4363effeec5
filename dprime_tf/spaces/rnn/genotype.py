"""Genotypes of recurrent cells (DARTS's recurrent search space, SPEC section 6).

A recurrent genotype lists one (op, predecessor) pair per node: node i
(1-based) applies `op` to the highway edge from state `predecessor` (0 is the
initial state s0, j >= 1 the node j), so predecessor < i. The cell output is
the mean of the `concat` nodes (DARTS: all 8). JSON layout:

    {"recurrent": [[op, predecessor], ...], "concat": [1, 2, ..., 8]}
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dprime_tf.genotype import GenotypeError, GenotypeFiles, genes_from_selection
from dprime_tf.spaces.primitives import RNN_PRIMITIVES

RNN_STEPS = 8


@dataclasses.dataclass(frozen=True)
class RecurrentGenotype(GenotypeFiles):
    recurrent: tuple[tuple[str, int], ...]
    concat: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "recurrent", tuple((str(op), int(i)) for op, i in self.recurrent))
        object.__setattr__(self, "concat", tuple(int(i) for i in self.concat))
        self.validate()

    @property
    def steps(self) -> int:
        return len(self.recurrent)

    def validate(self) -> None:
        """Raises GenotypeError with a one-line reason if the cell is not buildable."""
        if not self.recurrent:
            raise GenotypeError("recurrent genotype has no nodes")
        allowed = [p for p in RNN_PRIMITIVES if p != "none"]
        for k, (op, pred) in enumerate(self.recurrent):
            node = k + 1
            if op not in allowed:
                raise GenotypeError(f"recurrent genotype node {node}: unknown op '{op}' (use one of: {', '.join(allowed)})")
            if not 0 <= pred < node:
                raise GenotypeError(f"recurrent genotype node {node}: predecessor {pred} is invalid "
                                    f"(must be 0..{node - 1})")
        steps = len(self.recurrent)
        if not self.concat or any(not 1 <= c <= steps for c in self.concat) or len(set(self.concat)) != len(self.concat):
            raise GenotypeError(f"recurrent genotype 'concat' {list(self.concat)} must list distinct nodes in 1..{steps}")

    # -- JSON ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"recurrent": [[op, i] for op, i in self.recurrent], "concat": list(self.concat)}

    what = "recurrent genotype"

    @staticmethod
    def published() -> dict:
        return PUBLISHED

    @classmethod
    def random(cls, seed: int, steps: int = RNN_STEPS) -> "RecurrentGenotype":
        """A cell drawn uniformly, as DARTS's random-search baseline: per node one
        predecessor among the earlier states and an op other than `none`."""
        rng = np.random.default_rng(seed)
        ops = [p for p in RNN_PRIMITIVES if p != "none"]
        nodes = tuple((ops[rng.integers(len(ops))], int(rng.integers(node))) for node in range(1, steps + 1))
        return cls(nodes, tuple(range(1, steps + 1)))

    @classmethod
    def from_dict(cls, data) -> "RecurrentGenotype":
        if not isinstance(data, dict) or "recurrent" not in data:
            hint = " (this is a CNN genotype)" if isinstance(data, dict) and "normal" in data else ""
            raise GenotypeError(f"recurrent genotype JSON must be an object with keys recurrent, concat{hint}")
        value = data["recurrent"]
        if not isinstance(value, (list, tuple)):
            raise GenotypeError("recurrent genotype 'recurrent' must be a list of [op, predecessor] pairs")
        pairs = []
        for k, pair in enumerate(value):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], str) \
                    or isinstance(pair[1], bool) or not isinstance(pair[1], int):
                raise GenotypeError(f"recurrent genotype node {k + 1}: expected [op, predecessor], got {pair!r}")
            pairs.append((pair[0], pair[1]))
        concat = data.get("concat", range(1, len(pairs) + 1))
        if not isinstance(concat, (list, tuple, range)) or any(isinstance(c, bool) or not isinstance(c, int)
                                                                for c in concat):
            raise GenotypeError(f"recurrent genotype 'concat' must be a list of node numbers, got {concat!r}")
        return cls(tuple(pairs), tuple(concat))


def derive_recurrent_genotype(alpha) -> RecurrentGenotype:
    """DARTS's recurrent discretization of a (36, 5) alpha: per node, the
    predecessor whose edge has the largest non-`none` weight, with that best op."""
    from dprime_tf import prime
    alpha = np.asarray(alpha, dtype=np.float64)
    weights = prime.softmax(alpha)
    selection = prime.select_edges(weights, num_inputs=1, keep=1, none_index=RNN_PRIMITIVES.index("none"))
    gene = genes_from_selection(selection, RNN_PRIMITIVES)
    steps = len(gene)
    return RecurrentGenotype(gene, tuple(range(1, steps + 1)))


# The published recurrent genotypes of Liu et al. (DARTS, ICLR 2019).
DARTS_V1 = RecurrentGenotype(
    recurrent=(("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4), ("identity", 1),
               ("relu", 5), ("relu", 1)),
    concat=tuple(range(1, 9)),
)
DARTS_V2 = RecurrentGenotype(
    recurrent=(("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1), ("tanh", 2), ("sigmoid", 5),
               ("tanh", 3), ("relu", 5)),
    concat=tuple(range(1, 9)),
)
PUBLISHED = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "DARTS": DARTS_V2}

"""Genotypes of the convolutional search space (DARTS's cells).

A CNN genotype lists, for the normal and the reduction cell, 8 (op, input)
pairs: two per intermediate node (nodes 2..5), where input 0/1 are the two
cell inputs and 2..5 earlier nodes. It is immutable, hashable, and reads and
writes the JSON layout used by the run directory:

    {"normal": [[op, input], ...], "normal_concat": [2, 3, 4, 5],
     "reduce": [...], "reduce_concat": [...]}
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dprime_tf.genotype import Gene, GenotypeError, GenotypeFiles, genes_from_selection
from dprime_tf.spaces.primitives import CNN_PRIMITIVES

CNN_STEPS = 4  # intermediate nodes per cell


@dataclasses.dataclass(frozen=True)
class Genotype(GenotypeFiles):
    normal: Gene
    normal_concat: tuple[int, ...]
    reduce: Gene
    reduce_concat: tuple[int, ...]

    def __post_init__(self):
        for field in ("normal", "reduce"):
            pairs = tuple((str(op), int(i)) for op, i in getattr(self, field))
            object.__setattr__(self, field, pairs)
        for field in ("normal_concat", "reduce_concat"):
            object.__setattr__(self, field, tuple(int(i) for i in getattr(self, field)))
        self.validate()

    def validate(self) -> None:
        """Raises GenotypeError with a one-line reason if the cell is not buildable."""
        for kind in ("normal", "reduce"):
            gene = getattr(self, kind)
            if len(gene) != 2 * CNN_STEPS:
                raise GenotypeError(
                    f"genotype '{kind}' has {len(gene)} edges; a cell needs "
                    f"{2 * CNN_STEPS} (two per intermediate node)")
            for k, (op, index) in enumerate(gene):
                if op not in CNN_PRIMITIVES or op == "none":
                    allowed = ", ".join(p for p in CNN_PRIMITIVES if p != "none")
                    raise GenotypeError(
                        f"genotype '{kind}' edge {k}: unknown op '{op}' (use one of: {allowed})")
                node = 2 + k // 2
                if not 0 <= index < node:
                    raise GenotypeError(
                        f"genotype '{kind}' edge {k}: input {index} is invalid for node "
                        f"{node} (must be 0..{node - 1})")
            concat = getattr(self, kind + "_concat")
            if not concat or any(not 2 <= c < 2 + CNN_STEPS for c in concat) or len(set(concat)) != len(concat):
                raise GenotypeError(
                    f"genotype '{kind}_concat' {list(concat)} must list distinct nodes in 2..{1 + CNN_STEPS}")

    # -- JSON ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "normal": [[op, i] for op, i in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, i] for op, i in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @staticmethod
    def published() -> dict:
        return PUBLISHED

    @classmethod
    def random(cls, seed: int) -> "Genotype":
        """A cell drawn uniformly, as DARTS's random-search baseline: per node two distinct
        inputs among the earlier states and, per edge, an op other than `none`."""
        rng = np.random.default_rng(seed)
        ops = [p for p in CNN_PRIMITIVES if p != "none"]
        gene = {}
        for kind in ("normal", "reduce"):
            pairs = []
            for node in range(2, 2 + CNN_STEPS):
                for index in sorted(rng.choice(node, size=2, replace=False)):
                    pairs.append((ops[rng.integers(len(ops))], int(index)))
            gene[kind] = tuple(pairs)
        concat = tuple(range(2, 2 + CNN_STEPS))
        return cls(gene["normal"], concat, gene["reduce"], concat)

    @classmethod
    def from_dict(cls, data) -> "Genotype":
        if not isinstance(data, dict):
            raise GenotypeError("genotype JSON must be an object with keys normal, normal_concat, reduce, reduce_concat")
        missing = [k for k in ("normal", "reduce") if k not in data]
        if missing:
            raise GenotypeError(f"genotype JSON lacks key(s) {', '.join(missing)}")
        try:
            return cls(
                normal=_pairs(data["normal"], "normal"),
                normal_concat=tuple(data.get("normal_concat", range(2, 2 + CNN_STEPS))),
                reduce=_pairs(data["reduce"], "reduce"),
                reduce_concat=tuple(data.get("reduce_concat", range(2, 2 + CNN_STEPS))),
            )
        except (TypeError, ValueError) as e:
            raise GenotypeError(f"genotype JSON is malformed: {e}") from None


def _pairs(value, kind) -> Gene:
    if not isinstance(value, (list, tuple)):
        raise GenotypeError(f"genotype '{kind}' must be a list of [op, input] pairs")
    out = []
    for k, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], str) \
                or isinstance(pair[1], bool) or not isinstance(pair[1], int):
            raise GenotypeError(f"genotype '{kind}' edge {k}: expected [op, input], got {pair!r}")
        out.append((pair[0], pair[1]))
    return tuple(out)


def derive_genotype(alpha_normal, alpha_reduce) -> Genotype:
    """The DARTS discretization (SPEC section 2) of two (14, 8) alpha matrices."""
    from dprime_tf import prime
    gene = {}
    for kind, alpha in (("normal", alpha_normal), ("reduce", alpha_reduce)):
        weights = prime.softmax(np.asarray(alpha, dtype=np.float64))
        sel = prime.select_edges(weights, num_inputs=2, keep=2, none_index=CNN_PRIMITIVES.index("none"))
        gene[kind] = genes_from_selection(sel, CNN_PRIMITIVES)
    concat = tuple(range(2, 2 + CNN_STEPS))
    return Genotype(gene["normal"], concat, gene["reduce"], concat)


# The published genotypes of Liu et al. (DARTS, ICLR 2019), first and second order.
DARTS_V1 = Genotype(
    normal=(("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)),
    reduce_concat=(2, 3, 4, 5),
)
DARTS_V2 = Genotype(
    normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)),
    reduce_concat=(2, 3, 4, 5),
)
PUBLISHED = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "DARTS": DARTS_V2}

"""Genotypes: the discrete architecture a search produces, what every search
space's genotype class shares (JSON text and files, errors), and `load_genotype`,
which reads a genotype of any space. The classes live with their space:
dprime_tf.spaces.cnn.genotype (normal and reduction cells) and
dprime_tf.spaces.rnn.genotype (a recurrent cell).
"""

from __future__ import annotations

import json
from typing import Sequence

from dprime_tf import errors


class GenotypeError(errors.UserError):
    """A genotype (file, JSON text or object) is not valid."""


Gene = tuple[tuple[str, int], ...]


class GenotypeFiles:
    """JSON text and files for a genotype class: `from_dict`, `to_dict` and a
    `published()` table of names come from the class."""

    what = "name"  # "nor a published <what>" in errors

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"genotype is not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, spec: str):
        """A published name (DARTS_V2), a JSON file, or a run directory holding genotype.json."""
        import os
        published = cls.published()
        if spec in published:
            return published[spec]
        path = os.path.join(spec, "genotype.json") if os.path.isdir(spec) else spec
        if not os.path.isfile(path):
            names = ", ".join(sorted(published))
            raise GenotypeError(f"genotype '{spec}' is neither a file, a run directory with genotype.json, "
                                f"nor a published {cls.what} ({names})")
        from dprime_tf.validation import read_config_file
        try:
            text = read_config_file(path, "genotype file")  # a size cap; not UTF-8: one line
        except errors.UserError as e:
            raise GenotypeError(str(e)) from None
        try:
            return cls.from_json(text)
        except GenotypeError as e:
            raise GenotypeError(f"{path}: {e}") from None


def genes_from_selection(selection, primitives: Sequence[str]) -> Gene:
    """Turns [(edge_input, op_index), ...] per node into (op name, input) pairs."""
    return tuple((primitives[op], int(inp)) for node in selection for inp, op in node)


def load_genotype(spec: str, dataset: str | None = None):
    """A genotype of any search space: a genotype JSON file, a run directory holding
    genotype.json, or a published name (DARTS_V2 names a cell of both spaces: a
    text `dataset` picks the recurrent one)."""
    from dprime_tf import spaces
    space = spaces.for_dataset(dataset) if dataset else spaces.for_genotype(spec)
    return space.genotype_class().load(spec)

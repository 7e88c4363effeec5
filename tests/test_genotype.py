import json

import numpy as np
import pytest

from dprime_tf import prime
from dprime_tf.genotype import GenotypeError
from dprime_tf.spaces.cnn.genotype import DARTS_V1, DARTS_V2, Genotype, derive_genotype
from dprime_tf.spaces.primitives import CNN_PRIMITIVES


def test_json_round_trip_and_layout():
    text = DARTS_V2.to_json()
    data = json.loads(text)
    assert data["normal"][0] == ["sep_conv_3x3", 0] and data["normal_concat"] == [2, 3, 4, 5]
    assert Genotype.from_json(text) == DARTS_V2
    assert Genotype.from_json(DARTS_V1.to_json()) == DARTS_V1


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["normal"].__setitem__(0, ["conv_9x9", 0]), "unknown op 'conv_9x9'"),
    (lambda d: d["normal"].__setitem__(0, ["none", 0]), "unknown op 'none'"),
    (lambda d: d["reduce"].__setitem__(2, ["skip_connect", 3]), "input 3 is invalid for node 3"),
    (lambda d: d["normal"].pop(), "has 7 edges"),
    (lambda d: d.pop("reduce"), "lacks key"),
    (lambda d: d.__setitem__("normal_concat", [1, 2]), "must list distinct nodes"),
    (lambda d: d["normal"].__setitem__(1, "skip"), "expected [op, input]"),
])
def test_validation_errors(mutate, message):
    data = DARTS_V2.to_dict()
    mutate(data)
    with pytest.raises(GenotypeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Genotype.from_dict(data)


def test_corrupt_json_and_load(tmp_path):
    with pytest.raises(GenotypeError, match="not valid JSON"):
        Genotype.from_json("{normal: ")
    path = tmp_path / "g.json"
    path.write_text("[1, 2]")
    with pytest.raises(GenotypeError, match=str(path)):
        Genotype.load(str(path))
    with pytest.raises(GenotypeError, match="published name"):
        Genotype.load(str(tmp_path / "missing.json"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "genotype.json").write_text(DARTS_V1.to_json())
    assert Genotype.load(str(tmp_path / "run")) == DARTS_V1
    assert Genotype.load("DARTS_V2") == DARTS_V2


def test_derive_genotype_by_hand():
    alpha = np.full((14, 8), -5.0)
    # Node 0 (rows 0-1): prefer sep_conv_3x3 from input 1, then max_pool from input 0.
    alpha[1, CNN_PRIMITIVES.index("sep_conv_3x3")] = 3.0
    alpha[0, CNN_PRIMITIVES.index("max_pool_3x3")] = 2.0
    # 'none' is large everywhere on node 1 (rows 2-4) but never chosen.
    alpha[2:5, 0] = 9.0
    alpha[4, CNN_PRIMITIVES.index("dil_conv_5x5")] = 1.0
    alpha[3, CNN_PRIMITIVES.index("skip_connect")] = 0.5
    g = derive_genotype(alpha, alpha)
    assert g.normal[:2] == (("sep_conv_3x3", 1), ("max_pool_3x3", 0))
    assert g.normal[2:4] == (("dil_conv_5x5", 2), ("skip_connect", 1))
    assert all(op != "none" for op, _ in g.normal + g.reduce)


def test_derive_uses_softmax_per_edge():
    # Ranking edges compares softmax weights, not raw alphas (SPEC: discretize p).
    alpha = np.zeros((14, 8))
    alpha[0, 4] = 1.0                       # softmax max ~ e/(e+7) = 0.28
    alpha[1, 4], alpha[1, 0] = 3.0, 10.0    # raw alpha larger, but 'none' dominates the row
    w = prime.softmax(alpha)
    assert w[0].max() > w[1, 1:].max()
    g = derive_genotype(alpha, alpha)
    assert g.normal[0] == ("sep_conv_3x3", 0)


def test_load_genotype_picks_the_space(tmp_path):
    from dprime_tf import load_genotype
    from dprime_tf.spaces.rnn.genotype import DARTS_V2 as RECURRENT_V2, RecurrentGenotype
    assert load_genotype("DARTS_V2") == DARTS_V2  # a published name: the CNN cell ...
    assert load_genotype("DARTS_V2", dataset="ptb_sample") == RECURRENT_V2  # ... unless the data is text
    run = tmp_path / "run"
    run.mkdir()
    (run / "genotype.json").write_text(RECURRENT_V2.to_json())
    loaded = load_genotype(str(run))  # a recurrent search's run directory
    assert isinstance(loaded, RecurrentGenotype) and loaded == RECURRENT_V2
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(GenotypeError, match="not valid JSON"):
        load_genotype(str(tmp_path / "bad.json"))

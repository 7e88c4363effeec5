"""The public names of `dprime_tf` (README, Python API) all resolve."""

import pytest


def test_every_public_name_resolves():
    import dprime_tf
    for name in dprime_tf.__all__:
        assert getattr(dprime_tf, name) is not None, name
    from dprime_tf.spaces.rnn.genotype import DARTS_V2
    assert dprime_tf.RecurrentGenotype.from_json(DARTS_V2.to_json()) == DARTS_V2
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dprime_tf.nope  # noqa: B018

"""dprime-tf: DARTS-PRIME differentiable architecture search in TensorFlow/Keras.

The pipeline: data -> search space -> bilevel search -> genotype -> final
network -> export. Public names are imported lazily (TensorFlow loads on
first use, not on `import dprime_tf`).
"""

__version__ = "0.3.0"

_PUBLIC = {
    # search
    "SearchNetwork": "dprime_tf.spaces.cnn.supernet",
    "BilevelSearch": "dprime_tf.searcher",
    "SearchConfig": "dprime_tf.search_job",
    "run_search": "dprime_tf.search_job",
    "SearchSpace": "dprime_tf.spaces.base",
    "SearchData": "dprime_tf.spaces.base",
    # the method's math
    "discretize": "dprime_tf.prime",
    "proximity_penalty": "dprime_tf.prime",
    "admm_penalty": "dprime_tf.prime",
    "admm_update": "dprime_tf.prime",
    "FixedSchedule": "dprime_tf.prime",
    "DynamicSchedule": "dprime_tf.prime",
    "weight_portion": "dprime_tf.prime",
    "fisher_trace": "dprime_tf.prime",
    # genotypes
    "Genotype": "dprime_tf.spaces.cnn.genotype",
    "derive_genotype": "dprime_tf.spaces.cnn.genotype",
    "load_genotype": "dprime_tf.genotype",
    "DARTS_V1": "dprime_tf.spaces.cnn.genotype",
    "DARTS_V2": "dprime_tf.spaces.cnn.genotype",
    # final networks
    "build_cifar_network": "dprime_tf.spaces.cnn.network",
    "build_imagenet_network": "dprime_tf.spaces.cnn.network",
    "count_parameters": "dprime_tf.spaces.cnn.network",
    # recurrent cells (Penn Treebank)
    "RecurrentSearchNetwork": "dprime_tf.spaces.rnn.supernet",
    "RecurrentGenotype": "dprime_tf.spaces.rnn.genotype",
    "derive_recurrent_genotype": "dprime_tf.spaces.rnn.genotype",
    "RNNModel": "dprime_tf.spaces.rnn.network",
    "RNNSearchConfig": "dprime_tf.search_job",
    # tuning (keras-tuner)
    "SearchHyperModel": "dprime_tf.tuning",
    "SearchTuner": "dprime_tf.tuning",
    # errors
    "UserError": "dprime_tf.errors",
    # the shipped flagfiles (configs/; package data once installed)
    "configs_dir": "dprime_tf.flagfiles",
    "config_path": "dprime_tf.flagfiles",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        import importlib
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'dprime_tf' has no attribute {name!r}")
